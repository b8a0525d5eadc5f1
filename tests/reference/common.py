"""What the reference runs share: a checkout at a pinned commit, a venv of its own, and the seeded weights."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
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


def run_reference(description: str, name: str, url: str, commit: str, packages: list[str], runner: str,
                  arguments: Callable[[Path, Path, Path, Path, Path], list[str]], argv: list[str] | None = None,
                  copy_data: bool = False, data_help: str = "a DAVIS-layout folder (ImageSets/2017/val.txt)") -> None:
    """The command line of a reference run: --data (--davis), --out, --<name> (a checkout), --work. Runs `runner`
    in the reference's venv with the shim's path, then `arguments(checkout, weights, data, results, tmp)`, and
    copies what it writes into `results` (masks, coordinates, scores) to --out. `copy_data`: give the code a copy
    of --data (for code that writes beside it)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", "--davis", required=True, type=Path, dest="data", help=data_help)
    p.add_argument("--out", required=True, type=Path, help="where the reference's outputs are copied")
    p.add_argument(f"--{name}", type=Path, dest="checkout", help=f"a checkout of {url} at {commit} (default: cloned)")
    p.add_argument("--work", type=Path, default=REPO / "outputs" / "reference", help="venv, checkout, weights")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    code = checkout(url, commit, a.checkout, a.work)
    python = venv_python(a.work / f"{name}-venv", packages)
    weights = a.work / "vit_small_16_seed0_mae_keys.pth"
    write_weights(weights)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "runner.py"
        script.write_text(runner)
        results, data = Path(tmp) / "results", a.data
        if copy_data:
            data = Path(tmp) / "data"
            shutil.copytree(a.data, data)
        subprocess.run([str(python), str(script), str(TORCHVISION_SHIM),
                        *arguments(code, weights, data, results, Path(tmp))], check=True)
        if a.out.exists():
            shutil.rmtree(a.out)
        shutil.copytree(results, a.out)
    print(f"{name}'s outputs ({commit[:7]}) of {a.data} -> {a.out}")
