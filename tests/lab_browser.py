"""JupyterLab in a real browser for the tests: a Lab server on a free port with a token, headless Chromium from the
system's packages driven by selenium, and what a person sees read back from the page.

Only the system's browser and driver are used (`chromium` and `chromium-driver` on Debian; `.ci/run` installs them):
selenium is handed both paths, so it never looks for or downloads a browser of its own.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import REPO, free_port, wait_for

# what a clone holds beside the notebook: the kernel runs in the Lab's root folder and finds these there
CLONE_ENTRIES = ("ml", "mae", "dataset_loader", "dataset", "samples.pickle")
# Lab settings for a test: cells stay in the page while scrolled away (so every output can be read back), and no
# news or update pop-up covers the notebook
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def missing_browser() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    for program, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(program) is None:
            return f"{program} is not installed (Debian package {package}; .ci/run installs it when run as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements.txt pins it)"
    return None


def clone_folder(root: Path, notebook: Path) -> Path:
    """`root` laid out like a clone of the repository (links to the packages and the sample data) with a copy of
    `notebook`, so that the Lab may save into it while the repository's notebook stays untouched."""
    root.mkdir(parents=True, exist_ok=True)
    for name in CLONE_ENTRIES:
        (root / name).symlink_to(REPO / name)
    shutil.copy(notebook, root / notebook.name)
    return root / notebook.name


@dataclass
class Lab:
    """A JupyterLab server serving `root`; its kernels run in `root` with `env` added to this environment."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    token: str = ""
    process: subprocess.Popen | None = None

    def __enter__(self) -> Lab:
        self.port, self.token = free_port(), secrets.token_hex(16)
        private = self.root / ".lab"
        for name, values in LAB_SETTINGS.items():
            path = private / "settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = dict(os.environ, **self.env)
        env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the kernel is this venv's
                   JUPYTER_CONFIG_DIR=str(private / "config"), JUPYTERLAB_SETTINGS_DIR=str(private / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(private / "workspaces"), JUPYTER_RUNTIME_DIR=str(private / "runtime"))
        command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
                   f"--ServerApp.root_dir={self.root}", f"--IdentityProvider.token={self.token}",
                   "--LabApp.news_url=", *(["--allow-root"] if os.geteuid() == 0 else [])]
        self.log = private / "server.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_up(timeout=60)
        return self

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url('api/status')}", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def open_chromium(width: int = 1400, height: int = 1000) -> Any:
    """Headless Chromium of the system, its console kept for `console_errors`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


# ---------------------------------------------------------------- what the page shows
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook tab in front
CELLS_JS = """
return Array.from(document.querySelectorAll('NOTEBOOK .jp-Notebook .jp-Cell')).map(cell => {
  const code = cell.classList.contains('jp-CodeCell');
  const outputs = Array.from(cell.querySelectorAll('.jp-OutputArea-output'));
  return {
    code: code,
    source: code ? (cell.querySelector('.jp-InputArea-editor .cm-content') || {innerText: ''}).innerText : '',
    heading: code ? '' : ((cell.querySelector('.jp-RenderedMarkdown h1, .jp-RenderedMarkdown h2') || {}).innerText
                          || ''),
    prompt: code ? (cell.querySelector('.jp-InputArea-prompt') || {innerText: ''}).innerText.trim() : '',
    errors: outputs.filter(o => o.dataset.mimeType === 'application/vnd.jupyter.error'
                                || /Traceback \\(most recent call last\\)|^\\w*Error\\b/m.test(o.innerText))
                   .map(o => o.innerText.slice(0, 500)),
    images: outputs.flatMap(o => Array.from(o.querySelectorAll('img')))
                   .map(img => [img.naturalWidth, img.naturalHeight, img.getBoundingClientRect().width]),
    text: outputs.map(o => o.innerText).join('\\n'),
    blank: outputs.filter(o => !o.innerText.trim() && !o.querySelector('img')).length,
  };
});
"""


def cells(driver: Any) -> list[dict[str, Any]]:
    """Every cell as the page shows it: code or not, its source, heading, prompt, error outputs, images, text."""
    return driver.execute_script(CELLS_JS.replace("NOTEBOOK", NOTEBOOK))


def open_dialog(driver: Any) -> str | None:
    """The text of a dialog that covers the page (a kernel chooser, an error), None when there is none."""
    return driver.execute_script("const d = document.querySelector('dialog.jp-Dialog'); return d && d.innerText;")


def run_all_through_menu(driver: Any) -> None:
    """Run > Run All Cells, clicked as a person would."""
    from selenium.webdriver.common.by import By

    if (dialog := open_dialog(driver)) is not None:
        raise RuntimeError(f"a dialog covers the notebook: {dialog!r}")

    menu = driver.find_element(By.XPATH, "//li[contains(@class,'lm-MenuBar-item')][.//div[text()='Run']]")
    menu.click()
    item = wait_for(lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-item")
                             if e.is_displayed() and e.text.startswith("Run All Cells")], 10, "the Run menu", poll=0.25)
    item[0].click()


def kernel_idle(driver: Any) -> bool:
    indicator = f"document.querySelector('{NOTEBOOK} .jp-Notebook-ExecutionIndicator')"
    status = driver.execute_script(f"const i = {indicator}; return i && i.dataset.status;")
    return status == "idle"


def all_cells_ran(driver: Any) -> bool:
    prompts = [c["prompt"] for c in cells(driver) if c["code"]]
    return bool(prompts) and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts) and kernel_idle(driver)


def record_output_text(driver: Any, cell_index: int) -> None:
    """Keep every text the output area of cell `cell_index` shows from now on (read back by `recorded_text`)."""
    driver.execute_script("""
      const cell = document.querySelectorAll(arguments[1] + ' .jp-Notebook .jp-Cell')[arguments[0]];
      window.__seen = [];
      new MutationObserver(() => {
        const area = cell.querySelector('.jp-OutputArea');
        if (area) window.__seen.push(area.innerText);
      }).observe(cell, {subtree: true, childList: true, characterData: true});
    """, cell_index, NOTEBOOK)


def recorded_text(driver: Any) -> list[str]:
    return driver.execute_script("return window.__seen || [];")


def console_errors(driver: Any) -> list[str]:
    """The page's console messages of level SEVERE since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


SECTION_JS = """
const panel = document.querySelector(arguments[0] + ' .jp-WindowedPanel-outer');
const base = panel.getBoundingClientRect().top - panel.scrollTop;
const heads = Array.from(document.querySelectorAll(arguments[0] + ' .jp-Notebook .jp-Cell'))
  .filter(c => c.querySelector('.jp-RenderedMarkdown h1, .jp-RenderedMarkdown h2'));
const k = arguments[1];
const top = heads[k].getBoundingClientRect().top - base;
const end = k + 1 < heads.length ? heads[k + 1].getBoundingClientRect().top - base : panel.scrollHeight;
return [heads.length, heads[k].querySelector('h1, h2').innerText, top, end, panel.clientHeight];
"""


def screenshot_sections(driver: Any, folder: Path, width: int = 1400, max_height: int = 12000) -> list[Path]:
    """One PNG per notebook section (from its heading to the next), the window made as tall as the section."""
    folder.mkdir(parents=True, exist_ok=True)
    shots, k, count = [], 0, 1
    while k < count:
        count, title, top, end, visible = driver.execute_script(SECTION_JS, NOTEBOOK, k)
        window = driver.get_window_size()["height"]
        driver.set_window_size(width, int(min(max_height, max(300, window + (end - top) - visible + 8))))
        time.sleep(0.3)  # the page lays itself out again for the new height
        _, _, top, _, _ = driver.execute_script(SECTION_JS, NOTEBOOK, k)
        driver.execute_script(f"document.querySelector('{NOTEBOOK} .jp-WindowedPanel-outer').scrollTop = arguments[0];",
                              top)
        time.sleep(0.3)
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]
        shots.append(folder / f"{k:02d}-{slug}.png")
        driver.save_screenshot(str(shots[-1]))
        k += 1
    return shots
