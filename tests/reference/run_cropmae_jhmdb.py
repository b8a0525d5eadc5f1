"""Run CropMAE's copy of the CRW propagation code and its PCK script on a JHMDB-layout folder, on the CPU.

    python tests/reference/run_cropmae_jhmdb.py --data tests/fixtures/textured_jhmdb --out tests/fixtures/crw/jhmdb

The reference is CropMAE's `downstreams/propagation` at CROPMAE_COMMIT: src/test.py (its JHMDB loader
`data/jhmdb.py` and `process_pose`), then src/eval/eval_pck.py, with its JHMDB settings as `start.py` and
`util.py` set them (temperature 0.7, top-7, radius 20, 20 frames of context, 320x320, feature resolution 20x20),
on the test videos of `splits/*_test_split1.txt`, with the same venv, weights and changes around the code as
run_cropmae.py. Written to --out/jhmdb.json: the videos in the order of the file list, the joints test.py dumps
(`<i>.dat`: (2, 15, T) in feature cells, -1 for a joint whose propagated map is all zero), the same joints in
pixels as eval_pck.py scales them, every normalised distance eval_pck.py measures (in its order: video, joint,
frame; visible joints of frames 1.. only), and its PCK at 0.1 ... 0.5 (per cent, the mean over the joints).
Recorded by wrapping eval_pck's `np.load` and `np.append`, nothing changed inside it.
`tests/test_reference_jhmdb_vip.py` compares our `crw` protocol's JHMDB results with these.
"""

from __future__ import annotations

from common import run_reference
from run_cropmae import CROPMAE_COMMIT, CROPMAE_URL, PACKAGES, PRELUDE, cropmae_arguments

RUNNER = PRELUDE + '''
import numpy as np
from downstreams.propagation.src.eval import eval_pck

videos = [f"{f.name[:-len('_test_split1.txt')]}/{line.split()[0].rsplit('.', 1)[0]}"
          for f in sorted(Path(data, "splits").glob("*_test_split1.txt"))
          for line in f.read_text().splitlines() if line.split()[1:] == ["2"]]
filelist = Path(tmp, "jhmdb_vallist.txt")
filelist.write_text("".join(f"{data}/joint_positions/{v}/joint_positions.mat {data}/Rename_Images/{v}\\n"
                            for v in videos))
propagate(settings("jhmdb", topk=7, radius=20, crop_size=[320, 320], img_size=[320, 320], filelist=str(filelist)))
grid = [np.load(f"{tmp}/propagated/{i}.dat", allow_pickle=True).tolist() for i in range(len(videos))]


class Recording:
    """numpy for eval_pck, recording the predictions it loads (scaled to pixels in place afterwards) and every
    normalised distance it appends."""

    def __init__(self):
        self.loaded, self.distances = [], []

    def __getattr__(self, name):
        return getattr(np, name)

    def load(self, *args, **kwargs):
        self.loaded.append(np.load(*args, **kwargs))
        return self.loaded[-1]

    def append(self, array, values, *args, **kwargs):
        self.distances.append(float(np.ravel(values)[0]))
        return np.append(array, values, *args, **kwargs)


eval_pck.np = recording = Recording()
pck = eval_pck.main(Namespace(filelist=str(filelist), src_folder=f"{tmp}/propagated", feat_res=[20, 20]))
Path(out).mkdir(parents=True)
Path(out, "jhmdb.json").write_text(json.dumps({
    "videos": videos, "keypoints_grid": grid, "keypoints": [a.tolist() for a in recording.loaded],
    "distances": recording.distances, "pck": {str(k): float(v[0]) for k, v in pck.items()}}, indent=1) + "\\n")
'''


def main(argv: list[str] | None = None) -> None:
    run_reference(__doc__.splitlines()[0], "cropmae", CROPMAE_URL, CROPMAE_COMMIT, PACKAGES, RUNNER,
                  cropmae_arguments, argv, copy_data=True,
                  data_help="a JHMDB-layout folder (Rename_Images, joint_positions, splits)")


if __name__ == "__main__":
    main()
