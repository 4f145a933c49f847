"""The course as learners meet it, tested in a real browser (Debian's Chromium via Playwright).

- The course site (``llm_tutorial_build.site``) built from the committed notebooks: every page loads
  from a local server with no console error, no failed or outside request, every image drawn,
  formulas laid out as MathML, and the prev/next links walk through every lesson in order.
- JupyterLab: a real ``jupyter lab`` server on 127.0.0.1; for each notebook the browser runs the
  cells up to the explorer (the cell tagged ``widget``), then types into / slides / picks in
  one of its controls and checks that what the explorer shows changes. Cells tagged
  ``lab-test-skip`` (timings, evaluations, plots and side experiments whose results the explorer
  does not read) are left out of the copy JupyterLab opens: nbval runs every cell, and this test
  is about the explorer. Leaving them out cut CI's browser tests from 1,547 s to 830 s;
  ``tests/test_notebooks.py`` checks that no kept cell reads a name only a left-out cell defines.

Screenshots go to ``outputs/screenshots/``. These tests are marked ``browser``: deselect them
with ``-m "not browser"``. Without Chromium they are skipped, except under CI, where they fail
(``.ci/run`` installs it). Set ``LLM_TUTORIAL_CHROMIUM`` to use another Chromium binary.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

from llm_tutorial_build import site

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SCREENSHOTS = ROOT / "outputs" / "screenshots"
CHROMIUM = os.environ.get("LLM_TUTORIAL_CHROMIUM", "/usr/bin/chromium")
# As root Chromium needs --no-sandbox; the rest keeps it from calling Google's services, which
# this machine's closed network refuses (noise in the logs, and slow starts).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-default-apps",
]  # fmt: skip

# What the JupyterLab test does to each notebook's explorer: a list of steps, each
# (action, CSS selector inside the widget cell's output, argument).
#   fill: type the text into the input;  press: focus and press the key n times;
#   select: pick the option at this index;  click: click it.
INTERACTIONS: dict[str, list[tuple[str, str, object]]] = {
    "00": [("select", "select", 1)],
    "01": [("fill", "input[type=text]", "Antidisestablishmentarianism, tokenised 🙂")],
    "02": [("press", ".widget-slider .noUi-handle", ("ArrowRight", 3))],
    "03": [("fill", "input[type=text]", "the [MASK] won the cup final on sunday.")],
    "04": [("fill", "input[type=text]", "The striker scored twice in the cup final.")],
    "05": [("fill", "input[type=text]", "Taylor Swift played Madison Square Garden in New York")],
    "06": [("press", ".widget-slider .noUi-handle", ("ArrowRight", 4))],
    "07": [("fill", "textarea", "Write the word dog in capital letters."),
           ("click", "button", None)],  # fmt: skip
    "08": [("select", "select", 3), ("click", "button", None)],
    "09": [("select", "select", 5)],
    "10": [("press", ".widget-slider .noUi-handle", ("ArrowRight", 3))],
    "11": [("select", "select", 1)],
    "12": [("select", "select", 2)],
    "13": [("fill", "input[type=text]", "How long may a notebook run in the continuous integration?")],
    "14": [("press", ".widget-slider .noUi-handle", ("ArrowRight", 3))],
}

# What an explorer shows: Output widgets, HTML widgets and images.
SHOWN_JS = """(cell) => Array.from(cell.querySelectorAll(
    '.jp-OutputArea .widget-output, .jp-OutputArea .widget-html-content, .jp-OutputArea .widget-image'
)).map(e => e.tagName === 'IMG' ? e.src : e.innerHTML).join('\\n')"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        message = f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set LLM_TUTORIAL_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageProblems:
    """Console errors, uncaught exceptions and failed or outside requests of one page."""

    def __init__(self, page, allowed_host: str):
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"exception: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))

        def outside(request):
            host = urlparse(request.url).hostname
            if request.url.startswith(("http:", "https:")) and host != allowed_host:
                self.problems.append(f"outside request: {request.url}")

        page.on("request", outside)


# ----------------------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def site_server(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    site.build_site(NOTEBOOKS, out)
    handler = functools.partial(QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


PAGES = ["index.html"] + [f"{p.stem}.html" for p in NOTEBOOKS]


@pytest.mark.parametrize("page_name", PAGES)
def test_site_page_loads_offline_with_every_image_drawn(browser, site_server, page_name):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageProblems(page, "127.0.0.1")
    response = page.goto(f"{site_server}/{page_name}", wait_until="load")
    assert response is not None and response.ok, f"{page_name}: HTTP {response and response.status}"
    images = page.evaluate(
        "() => Array.from(document.images).map(i => ({src: i.src.slice(0, 60), ok: i.complete && i.naturalWidth > 0}))"
    )
    broken = [i["src"] for i in images if not i["ok"]]
    maths = page.evaluate(
        "() => Array.from(document.querySelectorAll('math')).map(m => m.getBoundingClientRect().width)"
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"site-{Path(page_name).stem}.png"))
    page.close()
    assert not watch.problems, f"{page_name}:\n" + "\n".join(watch.problems)
    assert not broken, f"{page_name}: images not drawn: {broken}"
    assert all(w > 0 for w in maths), f"{page_name}: a formula has no width (MathML not laid out)"
    if page_name != "index.html":
        assert images, f"{page_name}: no figure at all; every lesson has at least one plot"
    if page_name.startswith(("02_", "03_", "08_")):
        assert maths, f"{page_name}: its formulas are missing"


def test_site_navigation_walks_every_lesson_in_order(browser, site_server):
    titles = [site.load_lessons([p])[0].title for p in NOTEBOOKS]
    page = browser.new_page()
    page.goto(f"{site_server}/index.html")
    page.click(f"a[href='{NOTEBOOKS[0].stem}.html']")
    seen = [page.title()]
    while page.locator("nav.course-nav.top a.next").count():
        page.click("nav.course-nav.top a.next")
        seen.append(page.title())
    assert seen == titles
    page.click("nav.course-nav.bottom a.prev")
    assert page.title() == titles[-2]
    page.click("nav.course-nav.top a.home")
    assert page.url.endswith("/index.html")
    page.close()


def test_site_solutions_are_folded_until_asked_for(browser, site_server):
    page = browser.new_page()
    page.goto(f"{site_server}/{NOTEBOOKS[1].stem}.html")
    solution = page.locator("details.solution").first
    assert solution.count() and not solution.get_attribute("open")
    assert not solution.locator(".jp-OutputArea").first.is_visible()
    solution.locator("summary").click()
    assert solution.locator(".jp-OutputArea").first.is_visible()
    page.close()


# ----------------------------------------------------------------------------- JupyterLab


LAB_SKIP = "lab-test-skip"


def lab_copy(source: Path, destination: Path) -> None:
    """Copy a notebook for JupyterLab without its cells tagged ``lab-test-skip``."""
    nb = nbformat.read(source, as_version=4)
    nb.cells = [c for c in nb.cells if LAB_SKIP not in c.metadata.get("tags", [])]
    nbformat.write(nb, destination)


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 over copies of the notebooks (what the browser changes
    is autosaved there, never into notebooks/)."""
    root = tmp_path_factory.mktemp("lab")
    for nb in NOTEBOOKS:
        lab_copy(nb, root / nb.name)
    config = root / ".config"
    (config / "labconfig").mkdir(parents=True)
    # no "get Jupyter news?" toast, which would fetch from the web and cover the notebook
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(root / ".run"),
           "LLM_TUTORIAL_PROFILE": "smoke", "PYTHONWARNINGS": "ignore"}  # fmt: skip
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = open(root / "jupyterlab.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            log.close()
            pytest.fail("jupyter lab did not start:\n" + (root / "jupyterlab.log").read_text()[-3000:])
        time.sleep(0.5)
    yield url, token, root
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


OPEN_AND_RUN_JS = """async (name) => {
    const app = window.jupyterapp;
    await app.started; await app.restored;
    const panel = await app.commands.execute('docmanager:open', {path: name, factory: 'Notebook'});
    await panel.context.ready; await panel.sessionContext.ready;
    const cells = panel.content.widgets;
    const index = cells.findIndex(c => (c.model.getMetadata('tags') || []).includes('widget'));
    if (index < 0) return {error: 'no cell tagged widget'};
    cells[index].node.setAttribute('data-test', 'widget-cell');
    // the committed outputs and execution counts go: only this run's count marks a cell as run
    await app.commands.execute('notebook:clear-all-cell-outputs');
    panel.content.activeCellIndex = index;
    app.commands.execute('notebook:run-all-above');
    window.__widgetCell = {panel, index, ran: false};
    return {index};
}"""

# Once every cell above has run, run the widget cell itself; report errors as they appear.
PROGRESS_JS = """() => {
    const w = window.__widgetCell, cells = w.panel.content.widgets;
    for (let i = 0; i <= w.index; i++) {
        for (const out of cells[i].model.outputs ? cells[i].model.outputs.toJSON() : []) {
            if (out.output_type === 'error') return {error: `cell ${i}: ${out.ename}: ${out.evalue}`};
        }
    }
    const busy = w.panel.sessionContext.session.kernel.status !== 'idle';
    const above = cells.slice(0, w.index).filter(c => c.model.type === 'code');
    if (!w.ran) {
        if (busy || above.some(c => !c.model.executionCount)) return {done: false};
        w.panel.content.activeCellIndex = w.index;
        window.jupyterapp.commands.execute('notebook:run-cell');
        w.ran = true;
        return {done: false};
    }
    return {done: !busy && !!cells[w.index].model.executionCount};
}"""


def _run_up_to_the_explorer(page, name: str) -> None:
    """Open ``name`` in JupyterLab, clear the committed outputs, run every cell above the one
    tagged ``widget``, then that cell; fail on the first error output."""
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=120_000)
    opened = page.evaluate(OPEN_AND_RUN_JS, name)
    assert "error" not in opened, opened["error"]
    deadline = time.monotonic() + 600
    while True:
        state = page.evaluate(PROGRESS_JS)
        assert "error" not in state, f"{name} failed in JupyterLab: {state['error']}"
        if state["done"]:
            return
        assert time.monotonic() < deadline, f"{name}: cells still running after 600 s"
        time.sleep(1)


def _interact(cell, steps) -> None:
    for action, selector, argument in steps:
        control = cell.locator(f".jp-OutputArea {selector}").first
        if action == "fill":
            control.fill(str(argument))
        elif action == "press":
            key, times = argument
            control.focus()
            for _ in range(times):
                control.press(key)
        elif action == "select":
            options = control.locator("option").all()
            control.select_option(index=min(int(argument), len(options) - 1))
        elif action == "click":
            control.click()
        else:  # a typo in INTERACTIONS
            raise ValueError(f"unknown action {action!r}")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_jupyterlab_runs_the_explorer_and_it_reacts(browser, jupyterlab, notebook):
    url, token, _ = jupyterlab
    number = notebook.name[:2]
    assert number in INTERACTIONS, f"add how to drive {notebook.name}'s explorer to INTERACTIONS"
    tags = [c.metadata.get("tags", []) for c in nbformat.read(notebook, as_version=4).cells]
    assert sum("widget" in t for t in tags) == 1, "tag exactly one explorer cell 'widget'"

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(f"{url}/lab?token={token}&reset")
    try:
        _run_up_to_the_explorer(page, notebook.name)
        cell = page.locator("[data-test=widget-cell]")
        cell.scroll_into_view_if_needed()
        page.wait_for_function(
            f"() => {{ const c = document.querySelector('[data-test=widget-cell]'); "
            f"return c && ({SHOWN_JS})(c).length > 0; }}",
            timeout=60_000,
        )
        shown = cell.evaluate(SHOWN_JS)
        # the last output that holds widgets (a cell may print a checked line after them)
        explorer = cell.locator(".jp-Cell-outputArea > .jp-OutputArea-child",
                                has=page.locator(".jupyter-widgets")).last
        explorer.scroll_into_view_if_needed()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        explorer.screenshot(path=str(SCREENSHOTS / f"lab-{notebook.stem}-before.png"))

        _interact(cell, INTERACTIONS[number])
        page.wait_for_function(
            f"([c, before]) => ({SHOWN_JS})(c) !== before",
            arg=[cell.element_handle(), shown], timeout=60_000,
        )  # fmt: skip
        page.wait_for_timeout(500)  # let the redraw finish before the screenshot
        explorer.screenshot(path=str(SCREENSHOTS / f"lab-{notebook.stem}-after.png"))
        assert cell.evaluate(SHOWN_JS) != shown
    finally:  # free the kernel's memory before the next notebook, even after a failure
        page.evaluate("() => window.__widgetCell && window.__widgetCell.panel.sessionContext.shutdown()")
        page.close()


def test_jupyterlab_check_fails_on_an_error_above_the_explorer(browser, jupyterlab):
    """The harness itself: an exception in a cell above the explorer fails the test with the
    exception's name and message (rather than timing out or passing); a cell tagged
    ``lab-test-skip`` is not run."""
    url, token, root = jupyterlab
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise KeyError('left out')", metadata={"tags": [LAB_SKIP]}),
        nbformat.v4.new_code_cell("raise ValueError('broken on purpose')"),
        nbformat.v4.new_code_cell("import ipywidgets\nipywidgets.Text()", metadata={"tags": ["widget"]}),
    ]
    nbformat.write(nb, root / "99_source.ipynb")
    lab_copy(root / "99_source.ipynb", root / "99_broken.ipynb")
    page = browser.new_page()
    page.goto(f"{url}/lab?token={token}&reset")
    try:
        with pytest.raises(AssertionError, match="cell 1: ValueError: broken on purpose"):
            _run_up_to_the_explorer(page, "99_broken.ipynb")
    finally:
        page.evaluate("() => window.__widgetCell && window.__widgetCell.panel.sessionContext.shutdown()")
        page.close()
