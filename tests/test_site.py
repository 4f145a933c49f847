"""The course site: pages, navigation, offline rendering (no browser here; see test_browser)."""

from __future__ import annotations

import html.parser
import json
import re
from pathlib import Path

import nbformat
import pytest

from llm_tutorial_build import site

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


class Resources(html.parser.HTMLParser):
    """Every URL a browser would fetch while loading the page (not the links one may click)."""

    def __init__(self):
        super().__init__()
        self.fetched: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag in {"img", "script", "iframe", "source", "video", "audio"} and attrs.get("src"):
            self.fetched.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            self.fetched.append(attrs["href"])


def fetched(page: str) -> Resources:
    parser = Resources()
    parser.feed(page)
    return parser


def tiny_notebook(path: Path, title: str, *, executed_by_papermill: bool = False,
                  failed: bool = False) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            f"# {title}\n\n[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            "(https://colab.example)\n\n**Objectives**\n\n- learn $a^2 + b^2$\n- and more\n\nRun time: short"
        ),
        nbformat.v4.new_code_cell("import sys  # colab set-up", metadata={"tags": ["colab"]}),
        nbformat.v4.new_markdown_cell("The loss $$L = -\\sum_i \\log p_i$$ and inline $x_i$."),
        nbformat.v4.new_code_cell(
            "explorer", outputs=[nbformat.v4.new_output(
                "display_data", data={site.WIDGET_MIME: {"model_id": "abc"}, "text/plain": "VBox()"})],
        ),  # fmt: skip
        nbformat.v4.new_code_cell(
            "exercises.show_solution('x')", metadata={"tags": ["solution"]},
            outputs=[nbformat.v4.new_output("stream", name="stdout", text="def answer(): ...")],
        ),  # fmt: skip
    ]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    if executed_by_papermill:
        nb.metadata["papermill"] = {"parameters": {"PROFILE": "full"}, "exception": failed}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def three(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    return [tiny_notebook(src / f"0{i}_lesson_{i}.ipynb", f"0{i} · Lesson {i}") for i in range(3)]


# ----------------------------------------------------------------------------- rendering


def test_tex_becomes_mathml_inline_and_block():
    inline = site.tex_to_mathml(r"\frac{a}{b}")
    block = site.tex_to_mathml(r"\sum_i x_i", display=True)
    assert inline.startswith("<math") and 'display="inline"' in inline and "<mfrac>" in inline
    assert 'display="block"' in block and "<munder>" in block or "<msub>" in block


def test_unparsable_tex_is_shown_as_source_not_an_error():
    out = site.tex_to_mathml(r"\frac{a}{")
    assert out.startswith('<code class="tex">') and r"\frac{a}{" in out


def test_markdown_math_becomes_mathml_and_web_images_become_labels():
    out = site.markdown_to_html(
        "Loss $x^2$ and $$y = 1$$ [![Binder](https://mybinder.org/badge.svg)](https://b.example)"
    )
    assert out.count("<math") == 2 and "$" not in out
    assert "<img" not in out and '<span class="site-badge">Binder</span>' in out
    assert 'href="https://b.example"' in out  # the link itself stays


def test_markdown_keeps_local_images():
    png = "data:image/png;base64,iVBORw0KGgo="
    assert f'src="{png}"' in site.markdown_to_html(f"![a figure]({png})")


def test_prepare_notebook_drops_colab_cell_and_replaces_widgets_without_touching_input(tmp_path):
    nb = nbformat.read(tiny_notebook(tmp_path / "00_a.ipynb", "00 · A"), as_version=4)
    ready = site.prepare_notebook(nb)
    assert len(ready.cells) == len(nb.cells) - 1
    assert not any("colab" in c.metadata.get("tags", []) for c in ready.cells)
    data = ready.cells[2].outputs[0]["data"]
    assert site.WIDGET_MIME not in data and "Interactive explorer" in data["text/html"]
    assert "widgets" not in ready.metadata
    assert site.WIDGET_MIME in nb.cells[3].outputs[0]["data"] and "widgets" in nb.metadata


# ----------------------------------------------------------------------------- lessons


def test_lessons_are_sorted_with_titles_origins_and_objectives(three, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    tiny_notebook(run / three[1].name, "01 · Lesson 1", executed_by_papermill=True)
    lessons = site.load_lessons(site.choose_sources(list(reversed(three)), run))
    assert [lesson.number for lesson in lessons] == ["00", "01", "02"]
    assert lessons[0].title == "00 · Lesson 0" and lessons[0].page == "00_lesson_0.html"
    assert lessons[1].source == run / three[1].name
    assert lessons[1].origin == "executed by make run (profile full)"
    assert lessons[0].origin == "committed outputs (smoke profile)"
    tiny_notebook(run / three[2].name, "02 · Lesson 2", executed_by_papermill=True, failed=True)
    failed = site.load_lessons([run / three[2].name])[0]
    assert failed.origin == "executed by make run (profile full) — it stopped at an error, see its log"
    assert "<li>" in lessons[0].objectives_html and "<math" in lessons[0].objectives_html
    assert "Run time" not in lessons[0].objectives_html


@pytest.mark.parametrize(
    ("names", "error", "match"),
    [
        ([], ValueError, "no notebooks"),
        (["lesson.ipynb"], ValueError, "NN_topic.ipynb"),
        (["1_a.ipynb"], ValueError, "two digits"),
        (["01_a.ipynb", "01_b.ipynb"], ValueError, "own number"),
        (["05_missing.ipynb"], FileNotFoundError, "make run"),
    ],
)
def test_bad_notebook_lists_are_rejected_with_the_fix(tmp_path, names, error, match):
    paths = []
    for name in names:
        path = tmp_path / name
        if "missing" not in name:
            tiny_notebook(path, name)
        paths.append(path)
    with pytest.raises(error, match=match):
        site.load_lessons(paths)


def test_navigation_links_previous_next_and_index(three):
    lessons = site.load_lessons(three)
    first, middle, last = (site.navigation(lessons, i, where="top") for i in range(3))
    assert 'class="prev"' not in first and 'href="01_lesson_1.html"' in first
    assert 'rel="prev" href="00_lesson_0.html"' in middle and 'rel="next" href="02_lesson_2.html"' in middle
    assert 'class="next"' not in last and 'href="index.html"' in last
    assert "colab.research.google.com/github/llm-tutorial/llm-tutorial/blob/main/notebooks/00_lesson_0.ipynb" in first
    assert "labpath=notebooks%2F00_lesson_0.ipynb" in first
    bottom = site.navigation(lessons, 1, where="bottom")
    assert "Colab" not in bottom and 'class="next"' in bottom


# ----------------------------------------------------------------------------- the built site


def test_build_site_writes_pages_index_and_downloads(three, tmp_path):
    out = tmp_path / "site"
    index = site.build_site(three, out)
    assert index == out / "index.html"
    front = index.read_text()
    for i in range(3):
        page = (out / f"0{i}_lesson_{i}.html").read_text()
        assert f"<title>0{i} · Lesson {i}</title>" in page
        assert page.count('class="course-nav') == 2
        assert '<details class="solution"><summary>Show the solution</summary>' in page
        assert "Interactive explorer" in page and "import sys  # colab set-up" not in page
        assert page.count("<math") >= 3  # objectives, block and inline formulas
        assert (out / "notebooks" / f"0{i}_lesson_{i}.ipynb").is_file()
        assert f'href="0{i}_lesson_{i}.html"' in front
    assert front.count("<li id=\"lesson-") == 3


@pytest.fixture(scope="module")
def course_site(tmp_path_factory):
    out = tmp_path_factory.mktemp("course-site")
    site.build_site(NOTEBOOKS, out)
    return out


@pytest.mark.parametrize("name", ["index", *(p.stem for p in NOTEBOOKS)])
def test_course_pages_need_nothing_from_the_network(course_site, name):
    page = (course_site / f"{name}.html").read_text(encoding="utf-8")
    resources = fetched(page)
    assert resources.scripts == 0, "a <script> would need require.js / MathJax from a CDN"
    outside = [url for url in resources.fetched if not url.startswith("data:")]
    assert not outside, f"{name}.html fetches {outside}"
    if name != "index":
        assert "data:image/png;base64," in page, "figures are embedded in the page"
        markdown = "".join(c.source for c in nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", 4).cells
                           if c.cell_type == "markdown")
        assert ("$" in markdown) <= ("<math" in page), "the formulas are drawn as MathML"


def test_every_explorer_in_the_course_becomes_a_note(course_site):
    for notebook in NOTEBOOKS:
        page = (course_site / f"{notebook.stem}.html").read_text(encoding="utf-8")
        assert site.WIDGET_MIME not in page
        assert "Interactive explorer" in page, f"{notebook.name} has no explorer on its page"


def test_cli_prefers_notebooks_executed_by_make_run(tmp_path, three):
    run = tmp_path / "outputs"
    run.mkdir()
    tiny_notebook(run / three[2].name, "02 · Lesson 2 (run)", executed_by_papermill=True)
    out = tmp_path / "site"
    assert site.main(["--out", str(out), "--run-dir", str(run), "--notebooks", *map(str, three)]) == 0
    assert "02 · Lesson 2 (run)" in (out / "index.html").read_text()
    assert "executed by make run (profile full)" in (out / "02_lesson_2.html").read_text()
    assert "committed outputs (smoke profile)" in (out / "00_lesson_0.html").read_text()
    assert not (out / "run.html").exists()  # no run.json: no report page


def test_the_run_report_is_a_page_of_the_site(tmp_path, three):
    run = tmp_path / "outputs"
    run.mkdir()
    report = {"profile": "smoke", "device": "cpu", "machine": {"cpu": "a CPU"}, "python": "3.11.7",
              "torch": "2.13.0", "generated": "2026-12-06 01:00",
              "notebooks": [{"name": "00_lesson_0", "title": "00 · Lesson 0", "ok": True, "wall_s": 12.5,
                             "peak_rss_mb": 1234, "error": "", "output": "00_lesson_0.ipynb",
                             "log": "00_lesson_0.log"},
                            {"name": "01_lesson_1", "title": "Broken <on purpose>", "ok": False,
                             "wall_s": 3.0, "peak_rss_mb": 456, "error": "ValueError: boom",
                             "output": None, "log": "01_lesson_1.log"}]}
    (run / "run.json").write_text(json.dumps(report))
    out = tmp_path / "site"
    assert site.main(["--out", str(out), "--run-dir", str(run), "--notebooks", *map(str, three)]) == 0
    page = (out / "run.html").read_text()
    assert "1 of 2 notebook(s) FAILED" in page and "Broken &lt;on purpose&gt;" in page
    assert re.search(r'<tr class="failed"><td><code>01_lesson_1</code>.*ValueError: boom', page, flags=re.S)
    assert '<a href="00_lesson_0.html">00 · Lesson 0</a>' in page  # linked to its lesson page
    assert 'href="../outputs/00_lesson_0.log"' in page and 'href="../outputs/00_lesson_0.ipynb"' in page
    assert '<td class="num">12.5 s</td><td class="num">1,234 MB</td>' in page
    assert "Profile <strong>smoke</strong>, device <strong>cpu</strong>" in page
    assert fetched(page).scripts == 0
    assert 'href="run.html"' in (out / "index.html").read_text() and "1 FAILED" in (out / "index.html").read_text()
