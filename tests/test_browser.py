"""The notebook as a person meets it: JupyterLab in headless Chromium, Run > Run All Cells in the quick setting, and
what the page then shows. Screenshots of every section go to outputs/browser/ (one PNG per section).

Needs the system's `chromium` and `chromedriver` (Debian: chromium, chromium-driver; .ci/run installs them);
skips, saying so, where they are missing.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from PIL import Image

from tests.conftest import REPO, wait_for
from tests.lab_browser import (
    Lab,
    all_cells_ran,
    cells,
    clone_folder,
    console_errors,
    kernel_idle,
    missing_browser,
    open_chromium,
    record_output_text,
    recorded_text,
    run_all_through_menu,
    screenshot_sections,
)

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))

SCREENSHOTS = REPO / "outputs" / "browser"
SHARED_DAVIS_MINI = REPO.parent / "shared" / "data" / "davis_mini"
WINDOW = (1920, 1080)  # a common desktop; the figures must read at 100% zoom there
TQDM_BAR = re.compile(r"epoch \d+:\s+\d+%\|.*\| \d+/\d+ \[")  # tqdm's text bar: "epoch 1:  50%|#####  | 1/2 ["


def broken_notebook(path: Path) -> None:
    """A notebook whose second cell fails and whose third draws nothing: what the checks must catch."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("1 / 0"),
                                         nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.show()")],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nbformat.write(nb, path)


def run_in_the_browser(driver: Any, lab: Lab, name: str, watch: str | None, timeout: float) -> dict[str, Any]:
    """Open notebook `name`, run all its cells through the menu, wait for the kernel; what the page showed."""
    expected = len(nbformat.read(lab.root / name, as_version=4).cells)
    driver.get(lab.url(f"lab/tree/{name}"))
    wait_for(lambda: kernel_idle(driver) and len(cells(driver)) == expected, 90, f"{name} to open, kernel idle",
             poll=0.25)
    before = cells(driver)
    watched = next((i for i, c in enumerate(before) if watch and watch in c["source"]), None)
    if watched is not None:
        record_output_text(driver, watched)
    start = time.monotonic()
    run_all_through_menu(driver)
    if name == "broken.ipynb":  # execution stops at the error: wait for it instead of every prompt
        wait_for(lambda: any(c["errors"] for c in cells(driver)) and kernel_idle(driver), timeout, "the error",
                 poll=0.25)
    else:
        wait_for(lambda: all_cells_ran(driver), timeout, f"every cell of {name} to run", poll=1.0)
    return {"cells": cells(driver), "seconds": time.monotonic() - start, "console": console_errors(driver),
            "watched": recorded_text(driver) if watched is not None else []}


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lab") / "clone"
    clone_folder(root, REPO / "SiamMAE.ipynb")
    broken_notebook(root / "broken.ipynb")
    env = {"SIAMMAE_SETTING": "quick"}
    if SHARED_DAVIS_MINI.is_dir():  # as the headless run: the real frames when this clone has them beside it
        env["SIAMMAE_DAVIS"] = str(SHARED_DAVIS_MINI)
    if SCREENSHOTS.exists():
        shutil.rmtree(SCREENSHOTS)
    started = time.monotonic()
    with Lab(root, env=env) as lab:
        driver = open_chromium(*WINDOW)
        try:
            result = run_in_the_browser(driver, lab, "SiamMAE.ipynb", "train_then_stop", timeout=600)
            result["screenshots"] = screenshot_sections(driver, SCREENSHOTS, width=WINDOW[0])
            driver.set_window_size(*WINDOW)
            result["broken"] = run_in_the_browser(driver, lab, "broken.ipynb", None, timeout=60)
        finally:
            driver.quit()
    result["total_seconds"] = time.monotonic() - started
    record = {k: result[k] for k in ("seconds", "total_seconds", "console")}
    record["figures"] = [{"cell": c["source"].splitlines()[0], "natural": c["images"][0][:2],
                          "displayed_width": round(c["images"][0][2])} for c in figure_cells(result["cells"])
                         if c["images"]]
    (SCREENSHOTS / "run.json").write_text(json.dumps(record, indent=1))
    return result


def figure_cells(observed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in observed if c["code"] and "plt.show()" in c["source"]]


def test_every_cell_runs_through_the_menu_without_an_error(lab_run: dict[str, Any]) -> None:
    code = [c for c in lab_run["cells"] if c["code"]]
    in_file = [c for c in nbformat.read(REPO / "SiamMAE.ipynb", as_version=4).cells if c.cell_type == "code"]
    assert len(code) == len(in_file) and all(re.fullmatch(r"\[\d+\]:", c["prompt"]) for c in code)
    assert [c["errors"] for c in code if c["errors"]] == []
    # an output box with nothing in it (what a progress bar that clears itself left on stderr) is clutter
    assert [c["source"].splitlines()[0] for c in code if c["blank"]] == []
    text = "\n".join(c["text"] for c in code)
    assert "setting 'quick' -> preset 'quick'" in text and "resumed run now at epoch 2 of 2" in text


def test_every_figure_cell_shows_its_figure_at_a_readable_size(lab_run: dict[str, Any]) -> None:
    shown = figure_cells(lab_run["cells"])
    assert len(shown) >= 7
    for cell in shown:
        assert cell["images"], f"no image under {cell['source'][:80]!r}"
        natural_width, natural_height, displayed_width = cell["images"][0]
        assert natural_width >= 500 and natural_height >= 200, cell["source"][:80]
        # at 100% zoom the page shrinks a figure wider than the cell; three quarters of its size still reads
        assert displayed_width >= 0.75 * natural_width, (cell["source"][:80], cell["images"])


def test_the_training_cell_shows_a_progress_bar_while_it_runs(lab_run: dict[str, Any]) -> None:
    seen = lab_run["watched"]
    assert any(TQDM_BAR.search(text) for text in seen), seen[-3:]
    assert any("loss=" in text and "lr=" in text for text in seen)
    final = next(c for c in lab_run["cells"] if "train_then_stop" in c["source"])["text"]
    assert "epoch 1/2: train loss" in final  # each finished epoch leaves its line


def test_the_page_logs_no_console_errors(lab_run: dict[str, Any]) -> None:
    assert lab_run["console"] == []


def test_every_section_has_a_screenshot(lab_run: dict[str, Any]) -> None:
    headings = [c["heading"] for c in lab_run["cells"] if c["heading"]]
    shots = lab_run["screenshots"]
    assert len(headings) >= 13 and len(shots) == len(headings)
    for path in shots:
        with Image.open(path) as image:
            assert image.width == WINDOW[0] and image.height >= 300
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 24) or []) > 100, path


def test_the_checks_catch_an_error_and_a_missing_figure(lab_run: dict[str, Any]) -> None:
    """The same reading of the page, on a notebook that fails: the error is seen, the empty figure cell too."""
    broken = lab_run["broken"]["cells"]
    assert broken[1]["errors"] and "ZeroDivisionError" in broken[1]["errors"][0]
    assert figure_cells(broken) and not figure_cells(broken)[0]["images"]
