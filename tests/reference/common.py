"""What the reference runs share: a checkout at a pinned commit, a venv of its own, and the seeded weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TORCHVISION_SHIM = REPO / "mae" / "torchvision_compat.py"  # torchvision imports next to a CPU-only torch
# the pins of this project that the reference code imports too
BASE_PACKAGES = ["torch==2.13.0", "torchvision==0.28.0", "numpy==2.4.6", "pillow==13.0.0",
                 "opencv-python-headless==4.13.0.92", "tqdm==4.70.1"]

LOAD_SHIM = '''
import importlib.util, sys
spec = importlib.util.spec_from_file_location("torchvision_compat", sys.argv[1])
sys.modules["torchvision_compat"] = _shim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(_shim)
'''


def checkout(url: str, commit: str, given: Path | None, work: Path) -> Path:
    """`given` (which must be at `commit`), or a clone of `url` at `commit` under `work`."""
    target = given or work / Path(url).name
    if given is None and not target.is_dir():
        subprocess.run(["git", "clone", url, str(target)], check=True)
    if given is None:
        subprocess.run(["git", "-C", str(target), "checkout", "--quiet", commit], check=True)
    head = subprocess.run(["git", "-C", str(target), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    if head.strip() != commit:
        sys.exit(f"{target} is at {head.strip() or 'no commit'}, not {commit}")
    return target


def venv_python(venv: Path, packages: list[str]) -> Path:
    """The python of a venv of its own holding `packages` (created once; pip checks the pins every time)."""
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], check=True)
    return python


def write_weights(path: Path) -> None:
    """The seeded random ViT-S/16 of `ml.eval.load_encoder("random", "siammae_vit_small_patch16", seed=0)`, as
    {"model": state dict} with the official MAE key names (what both references load)."""
    sys.path.insert(0, str(REPO))
    import torch

    from ml.eval.encoders import load_encoder

    encoder, _ = load_encoder("random", "siammae_vit_small_patch16", seed=0)
    torch.save({"model": encoder.state_dict()}, path)
