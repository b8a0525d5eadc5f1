"""Run DINO's own `eval_video_segmentation.py` on a DAVIS-layout folder, on the CPU, and keep its masks as fixtures.

    python tests/reference/run_dino.py --davis ../shared/data/davis_mini --out tests/fixtures/dino/davis_mini
    python tests/reference/run_dino.py --davis tests/fixtures/textured_davis --out tests/fixtures/dino/textured

The reference code runs in a venv of its own (outside this project's requirements, at the same pins of torch,
numpy, Pillow and OpenCV), from a checkout of facebookresearch/dino at DINO_COMMIT (`--dino PATH`, or cloned
from GitHub). Its weights: the seeded random ViT-S/16 of `ml.eval.load_encoder("random", ...)` with the official
MAE key names, loaded by DINO's own `load_pretrained_weights` with `--checkpoint_key model` (all keys match).
DINO's defaults stand (top-5, 7 previous frames, neighbourhood 12). Three things are changed around the code,
none inside it: `.cuda()` is a no-op (no GPU), the colour palette it downloads is the DAVIS palette computed
locally (only the colours of the PNGs depend on it), and this project's torchvision shim runs first.
`tests/test_reference.py` compares our `dino` protocol's masks with what this writes.
"""

from __future__ import annotations

from common import BASE_PACKAGES, LOAD_SHIM, run_reference

DINO_COMMIT = "7c446df5b9f45747937fb0d72314eb9f7b66930a"
DINO_URL = "https://github.com/facebookresearch/dino"

RUNNER = LOAD_SHIM + '''
import io, runpy, urllib.request
import torch
torch.Tensor.cuda = lambda self, *a, **k: self          # no GPU: the reference runs on the CPU
torch.nn.Module.cuda = lambda self, *a, **k: self

def davis_palette():
    rows = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        rows.append(f"{r} {g} {b}\\n".encode())
    return rows

urllib.request.urlopen = lambda url, *a, **k: io.BytesIO(b"".join(davis_palette()))
script, *argv = sys.argv[2:]
sys.path.insert(0, str(__import__("pathlib").Path(script).parent))
sys.argv = [script, *argv]
import eval_video_segmentation as reference  # noqa: E402  (urlopen is looked up in its namespace)
reference.urlopen = urllib.request.urlopen
runpy.run_path(script, run_name="__main__")
'''


def main(argv: list[str] | None = None) -> None:
    run_reference(__doc__.splitlines()[0], "dino", DINO_URL, DINO_COMMIT, BASE_PACKAGES, RUNNER,
                  lambda code, weights, davis, masks, tmp: [
                      str(code / "eval_video_segmentation.py"), "--arch", "vit_small", "--patch_size", "16",
                      "--pretrained_weights", str(weights), "--checkpoint_key", "model", "--data_path", str(davis),
                      "--output_dir", str(masks)], argv)


if __name__ == "__main__":
    main()
