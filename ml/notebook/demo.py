"""Run `SiamMAE.ipynb` headless and keep everything it makes in one folder (what `make demo` runs).

    python -m ml.demo --output outputs/demo                 # the CPU demo on dataset/sample (minutes)
    python -m ml.demo --output /tmp/check --setting quick   # a seconds-long check (the test suite runs this)

The notebook runs in a kernel of this very interpreter (no Jupyter kernel needs to be installed or
registered), from the repository root, with its parameters passed as SIAMMAE_* environment
variables. The output folder receives the executed notebook (`SiamMAE.ipynb`, with its outputs),
the figures (`*.png`) and the run's checkpoints and loss logs (`run/`). When a cell fails, the
notebook executed so far is still written, and the command exits with an error naming the cell.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from ml.training.presets import NOTEBOOK_SETTINGS

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "SiamMAE.ipynb"
SETTINGS = tuple(NOTEBOOK_SETTINGS)


class _ThisInterpreterKernelSpecs(KernelSpecManager):
    """Every kernel name maps to an ipykernel of the running interpreter (so the notebook sees this venv)."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name="Python 3 (ipykernel)", language="python", resource_dir=str(REPO),
        )


def notebook_environment(output: Path, setting: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The kernel's environment: ours, plus the notebook's parameters as SIAMMAE_* variables."""
    env = dict(os.environ)
    env.update({
        "SIAMMAE_SETTING": setting,
        "SIAMMAE_OUTPUT": str(output / "run"),
        "SIAMMAE_FIGURES": str(output),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures inline in the executed notebook
    })
    env.update(overrides or {})
    return env


def run_notebook(
    output: str | os.PathLike,
    setting: str = "demo",
    notebook: str | os.PathLike = NOTEBOOK,
    timeout: int | None = 1800,
    overrides: dict[str, str] | None = None,
    verbose: bool = True,
) -> Path:
    """Execute `notebook` with the given setting; write the executed copy and the figures into `output`.

    `overrides` are extra SIAMMAE_* variables (e.g. {"SIAMMAE_EPOCHS": "2"}). `timeout`: seconds one cell may
    run (None: no limit). Returns the path of the executed notebook. Raises RuntimeError naming the failing
    cell (after writing what ran).
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    executed = output / notebook.name
    nb = nbformat.read(notebook, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    started = time.perf_counter()

    def report(cell: nbformat.NotebookNode, cell_index: int, **_: object) -> None:
        if verbose:
            number = code_cells.index(cell) + 1 if cell in code_cells else cell_index
            print(f"  cell {number}/{len(code_cells)} done ({time.perf_counter() - started:.0f} s)", flush=True)

    if verbose:
        print(f"running {notebook.name} ({setting} setting, {len(code_cells)} code cells) into {output}", flush=True)
    with tempfile.TemporaryDirectory(prefix="siammae-kernel-") as sockets:
        km = KernelManager(kernel_name="python3", kernel_spec_manager=_ThisInterpreterKernelSpecs())
        if os.name == "posix":  # local socket files instead of TCP ports: nothing reachable from outside
            km.transport, km.ip = "ipc", os.path.join(sockets, "kernel")
        client = NotebookClient(
            nb, km=km, timeout=timeout, kernel_name="python3", allow_errors=False, record_timing=True,
            resources={"metadata": {"path": str(REPO)}}, on_cell_executed=report,
        )
        try:
            client.execute(env=notebook_environment(output, setting, overrides))
        except CellExecutionError as err:
            nbformat.write(nb, executed)
            failed = [i + 1 for i, c in enumerate(code_cells) if any(o.output_type == "error" for o in c.outputs)]
            where = f"code cell {failed[0]} of {len(code_cells)}" if failed else "a cell"
            raise RuntimeError(f"the notebook failed in {where}; what ran is in {executed}:\n{err}") from None
        finally:
            if client.kc is not None:
                client.kc.stop_channels()
            if km.has_kernel:  # we own this kernel manager, so the kernel is ours to stop
                km.shutdown_kernel(now=True)
    nbformat.write(nb, executed)
    if verbose:
        figures = sorted(p.name for p in output.glob("*.png"))
        print(f"done in {time.perf_counter() - started:.0f} s: {executed} and {len(figures)} figures "
              f"({', '.join(figures)})", flush=True)
    return executed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Execute SiamMAE.ipynb headless into a folder with its figures.")
    parser.add_argument("--output", default="outputs/demo", help="folder for the executed notebook and the figures")
    parser.add_argument("--setting", default=os.environ.get("SIAMMAE_SETTING", "demo"), choices=SETTINGS,
                        help="quick: a seconds-long check; demo: the CPU demo on dataset/sample; paper: a GPU run "
                             "(default: $SIAMMAE_SETTING, else demo)")
    parser.add_argument("--notebook", default=str(NOTEBOOK))
    parser.add_argument("--timeout", type=int, default=None,
                        help="seconds one cell may run; 0: no limit (default: 1800, no limit for paper)")
    args = parser.parse_args(argv)
    try:
        timeout = args.timeout if args.timeout is not None else (0 if args.setting == "paper" else 1800)
        run_notebook(args.output, args.setting, args.notebook, timeout or None)
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
