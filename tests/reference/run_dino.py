"""Run DINO's own `eval_video_segmentation.py` on a DAVIS-layout folder, on the CPU, and keep its masks as fixtures.

    python tests/reference/run_dino.py --davis ../shared/data/davis_mini --out tests/fixtures/dino/davis_mini
    python tests/reference/run_dino.py --davis tests/fixtures/textured_davis --out tests/fixtures/dino/textured

The reference code runs in a venv of its own (outside this project's requirements, same pins of torch,
numpy, Pillow and OpenCV), from a checkout of facebookresearch/dino at DINO_COMMIT (`--dino PATH`, or cloned
from GitHub when absent). Its weights: a seeded random ViT-S/16 written with the official MAE key names (what
`ml.eval.load_encoder("random", "siammae_vit_small_patch16", seed=0)` builds), loaded by DINO's own
`load_pretrained_weights` with `--checkpoint_key model`. DINO's defaults stand (top-5, 7 previous frames,
neighbourhood 12). Three things are changed around the code, none inside it: `.cuda()` is a no-op (no GPU), the
colour palette it downloads is the DAVIS palette computed locally (only the colours of the PNGs depend on it),
and this project's `mae/torchvision_compat.py` runs first (torchvision's import next to a CPU-only torch).
The masks it writes are copied to `--out`; `tests/test_reference_dino.py` compares ours with them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DINO_COMMIT = "7c446df5b9f45747937fb0d72314eb9f7b66930a"
DINO_URL = "https://github.com/facebookresearch/dino"
# the reference's venv: what eval_video_segmentation.py imports, at this project's pins
REFERENCE_PACKAGES = ["torch==2.13.0", "torchvision==0.28.0", "numpy==2.4.6", "pillow==13.0.0",
                      "opencv-python-headless==4.13.0.92", "tqdm==4.70.1"]

RUNNER = '''
import importlib.util, io, runpy, sys, urllib.request
import torch

shim, script, *argv = sys.argv[1:]  # this project's torchvision shim: torchvision imports next to a CPU-only torch
spec = importlib.util.spec_from_file_location("torchvision_compat", shim)
sys.modules["torchvision_compat"] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
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
sys.path.insert(0, str(__import__("pathlib").Path(script).parent))
sys.argv = [script, *argv]
import eval_video_segmentation as reference  # noqa: E402  (urlopen is looked up in its namespace)
reference.urlopen = urllib.request.urlopen
runpy.run_path(script, run_name="__main__")
'''


def ensure_checkout(dino: Path | None, work: Path) -> Path:
    if dino is not None:
        return dino
    target = work / "dino"
    if not target.is_dir():
        subprocess.run(["git", "clone", DINO_URL, str(target)], check=True)
    subprocess.run(["git", "-C", str(target), "checkout", "--quiet", DINO_COMMIT], check=True)
    return target


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REFERENCE_PACKAGES], check=True)
    return python


def write_weights(path: Path) -> None:
    """The seeded random ViT-S/16 of `ml.eval.load_encoder("random", ...)`, official MAE key names."""
    sys.path.insert(0, str(REPO))
    import torch

    from ml.eval.encoders import load_encoder

    encoder, _ = load_encoder("random", "siammae_vit_small_patch16", seed=0)
    torch.save({"model": encoder.state_dict()}, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--davis", required=True, type=Path, help="a DAVIS-layout folder (ImageSets/2017/val.txt)")
    p.add_argument("--out", required=True, type=Path, help="where the reference's masks are copied")
    p.add_argument("--dino", type=Path, help=f"a checkout of {DINO_URL} at {DINO_COMMIT} (default: cloned)")
    p.add_argument("--work", type=Path, default=REPO / "outputs" / "reference", help="venv, checkout, weights")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    dino = ensure_checkout(a.dino, a.work)
    commit = subprocess.run(["git", "-C", str(dino), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    if commit.strip() != DINO_COMMIT:
        sys.exit(f"{dino} is at {commit.strip() or 'no commit'}, not {DINO_COMMIT}")
    python = ensure_venv(a.work / "dino-venv")
    weights = a.work / "vit_small_16_seed0_mae_keys.pth"
    write_weights(weights)
    with tempfile.TemporaryDirectory() as tmp:
        runner = Path(tmp) / "runner.py"
        runner.write_text(RUNNER)
        masks = Path(tmp) / "masks"
        subprocess.run([str(python), str(runner), str(REPO / "mae" / "torchvision_compat.py"),
                        str(dino / "eval_video_segmentation.py"), "--arch", "vit_small",
                        "--patch_size", "16", "--pretrained_weights", str(weights), "--checkpoint_key", "model",
                        "--data_path", str(a.davis), "--output_dir", str(masks)], check=True)
        if a.out.exists():
            shutil.rmtree(a.out)
        shutil.copytree(masks, a.out)
    print(f"DINO's masks ({DINO_COMMIT[:7]}) of {a.davis} -> {a.out}")


if __name__ == "__main__":
    main()
