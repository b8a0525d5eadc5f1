"""Run CropMAE's copy of the CRW propagation code and its mIoU script on a VIP-layout folder, on the CPU.

    python tests/reference/run_cropmae_vip.py --data tests/fixtures/textured_vip --out tests/fixtures/crw/vip

The reference is CropMAE's `downstreams/propagation` at CROPMAE_COMMIT: src/test.py (its loader `data/vos.py`
with the long side at 880 and the other floored to a multiple of 64, `dump_predictions`), then
src/eval/eval_vip.py, with its VIP settings as `start.py` and `util.py` set them (temperature 0.7, top-10, 20
frames of context) at two radii: 8, the paper's (our `crw` protocol's), and 20, the one `util.py` sets (our
`--radius 20`); on the videos of lists/val_videos.txt, with the same venv, weights and changes around the code
as run_cropmae.py. Written to --out/radius<r>/: `<video>/<frame>.png`, each prediction as eval_vip.py scores it
(read back and resized to its annotation with PIL's nearest, 8-bit class ids), and `vip.json` with its summed
confusion matrix and mIoU. Recorded by wrapping eval_vip's `init_path`, `fast_hist` and `show_result`, nothing
changed inside them. `tests/test_reference_jhmdb_vip.py` compares our `crw` protocol's VIP results with these.
"""

from __future__ import annotations

from common import run_reference
from run_cropmae import CROPMAE_COMMIT, CROPMAE_URL, PACKAGES, PRELUDE, cropmae_arguments

RADII = (8, 20)

RUNNER = PRELUDE + '''
import shutil
import numpy as np
from PIL import Image
from downstreams.propagation.src.eval import eval_vip

videos = Path(data, "lists/val_videos.txt").read_text().split()
filelist = Path(tmp, "vip_vallist.txt")
filelist.write_text("".join(f"{data}/Images/{v} {data}/Annotations/Category_ids/{v}\\n" for v in videos))
init_path, fast_hist, show_result = eval_vip.init_path, eval_vip.fast_hist, eval_vip.show_result
paths, scored, hists = [], [], []  # what eval_vip lists, the predictions it scores, its summed confusion


def listing(args):
    image_paths, label_paths = init_path(args)
    paths.append(image_paths)
    return image_paths, label_paths


eval_vip.init_path = listing
eval_vip.fast_hist = lambda a, b, n: scored.append(b) or fast_hist(a, b, n)
eval_vip.show_result = lambda hist: hists.append(hist) or show_result(hist)
for radius in RADII:
    for found in (paths, scored, hists):
        found.clear()
    shutil.rmtree(f"{tmp}/propagated", ignore_errors=True)
    propagate(settings("vip", topk=10, radius=radius, crop_size=[880], img_size=[880], filelist=str(filelist)))
    miou = eval_vip.main(Namespace(gt_dir=f"{data}/Annotations/Category_ids/", pre_dir=f"{tmp}/propagated"))
    folder = Path(out, f"radius{radius}")
    for path, ids in zip(paths[0], scored):  # <video>/<frame>_mask.png -> <video>/<frame>.png
        target = folder / Path(path).parent.name / (Path(path).name.split("_")[0] + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids.astype(np.uint8), mode="L").save(target)
    (folder / "vip.json").write_text(json.dumps({"radius": radius, "mIoU": float(miou),
                                                 "confusion": hists[0].astype(int).tolist()}) + "\\n")
'''.replace("RADII", repr(RADII))


def main(argv: list[str] | None = None) -> None:
    run_reference(__doc__.splitlines()[0], "cropmae", CROPMAE_URL, CROPMAE_COMMIT, PACKAGES, RUNNER,
                  cropmae_arguments, argv, copy_data=True,  # the code caches resized labels (.npy) beside them
                  data_help="a VIP-layout folder (Images, Annotations/Category_ids, lists/val_videos.txt)")


if __name__ == "__main__":
    main()
