"""Run CropMAE's copy of the CRW label-propagation code on a DAVIS-layout folder, on the CPU, and keep its masks.

    python tests/reference/run_cropmae.py --data tests/fixtures/textured_davis --out tests/fixtures/crw/textured

The reference is CropMAE's `downstreams/propagation` (src/test.py, then src/eval/convert_davis.py), from a
checkout at CROPMAE_COMMIT (`--cropmae PATH`, or cloned from GitHub), in a venv of its own at this project's pins,
with its DAVIS settings as its `start.py` sets them (temperature 0.7, top-7, radius 20, 20 frames of context,
480x880) and the seeded random ViT-S/16 of `ml.eval.load_encoder("random", ...)` (its loader matches every key).
Changed around the code, none inside it: the device is the CPU, data-loader workers 0, `wandb` (imported by the
package, unused here) is an empty module, this project's torchvision shim runs first, and the data is a copy (the
code caches resized labels as .npy files beside the annotations).
`tests/test_reference.py` compares our `crw` protocol's masks with what this writes; run_cropmae_jhmdb.py and
run_cropmae_vip.py run the same code on JHMDB and VIP.
"""

from __future__ import annotations

from pathlib import Path

from common import BASE_PACKAGES, LOAD_SHIM, run_reference

CROPMAE_COMMIT = "5d0dab2e4d202a65ab54860f51fa1145e6f3c315"
CROPMAE_URL = "https://github.com/alexandre-eymael/CropMAE"
PACKAGES = [*BASE_PACKAGES, "timm==1.0.31", "huggingface_hub==2.4.0", "safetensors==0.8.0", "PyYAML==6.0.4",
            "scipy==1.17.1", "matplotlib==3.11.2", "imageio==2.38.2", "scikit-image==0.26.0",
            "pandas==3.1.1"]

# what every CropMAE run shares: the imports, its propagation entry point, and start.py's settings on the CPU
PRELUDE = LOAD_SHIM + '''
import json, types
from argparse import Namespace
from pathlib import Path
sys.modules["wandb"] = types.ModuleType("wandb")  # imported by the package's start.py, not used here
cropmae, weights, data, out, tmp = sys.argv[2:]
sys.path.insert(0, cropmae)
from downstreams.propagation.src.test import main as propagate


def settings(benchmark, **chosen):
    """start.py's arguments of test.py, on the CPU; the code picks its loader and outputs by the words "davis",
    "jhmdb" and "vip" in the file list's path, so that path must hold its benchmark's word and no other."""
    found = [w for w in ("davis", "jhmdb", "vip") if w in chosen["filelist"].lower()]
    assert found == [benchmark], f"{chosen['filelist']} names {found}, not only {benchmark}"
    return Namespace(**{**dict(model_type="vits16", resume=weights, save_path=f"{tmp}/propagated/", temperature=0.7,
                               video_len=20, batch_size=5, workers=0, seed=0, no_l2=False, norm_mask=False,
                               long_mem=[0], device="cpu"), **chosen})
'''

RUNNER = PRELUDE + '''
from downstreams.propagation.src.eval.convert_davis import main as convert

sequences = Path(data, "ImageSets/2017/val.txt").read_text().split()
filelist = Path(tmp, "davis_vallist.txt")
filelist.write_text("".join(f"{data}/JPEGImages/480p/{s} {data}/Annotations/480p/{s}\\n" for s in sequences))
propagate(settings("davis", topk=7, radius=20, crop_size=[480, 880], img_size=[480, 880], filelist=str(filelist)))
convert(Namespace(out_folder=f"{out}/", in_folder=f"{tmp}/propagated/", dataset=data, set="val"))
'''


def cropmae_arguments(code: Path, weights: Path, data: Path, results: Path, tmp: Path) -> list[str]:
    return [str(code), str(weights), str(data), str(results), str(tmp)]


def main(argv: list[str] | None = None) -> None:
    run_reference(__doc__.splitlines()[0], "cropmae", CROPMAE_URL, CROPMAE_COMMIT, PACKAGES, RUNNER,
                  cropmae_arguments, argv, copy_data=True)  # the code caches resized labels (.npy) beside them


if __name__ == "__main__":
    main()
