"""The course as a static web site: one HTML page per executed notebook, an index, navigation.

`make site` (and the end of `make run`) turns the executed notebooks into `outputs/site/`.
It prefers the notebooks that `make run` executed into `outputs/` and falls back to the
committed ones in `notebooks/`, which carry the outputs of the `smoke` profile; each page
says which it shows.

The pages are meant to be read anywhere, offline included, so nothing is fetched from the
network when one opens:

- nbconvert's `lab` template renders each notebook, minus its `<script>` tags (require.js,
  MathJax, mermaid and the widget manager all come from CDNs);
- formulas are converted to MathML by `latex2mathml` when the page is built, and the
  browser draws them natively;
- figures are already inside the notebook as base64 PNGs, so they travel inside the page;
- an image that would come from the web (the Colab and Binder badges) becomes its alt text,
  still linked;
- an ipywidgets explorer needs a running kernel, so its output becomes a note that says how to
  launch the notebook;
- the Colab set-up cell (tag `colab`) is left out, and the exercises' solutions (tag
  `solution`) are folded into a `<details>` element, as they are hidden in JupyterLab.

Every page has a bar with the previous and next lesson, the index, and links to open the
notebook in Colab or Binder or download it. After `make run` the site also has `run.html`,
the run's report (status, wall time and peak memory of every notebook, from
`outputs/run.json`): this module is the course's only HTML renderer.
"""

from __future__ import annotations

import argparse
import copy
import html
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

REPOSITORY = "llm-tutorial/llm-tutorial"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
NOTEBOOK_NAME = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")

SITE_CSS = """
.course-nav { display: flex; flex-wrap: wrap; gap: .4rem 1.2rem; align-items: baseline;
  padding: .6rem 1rem; margin: 0 0 1rem; background: #f6f8fa; border-bottom: 1px solid #d0d7de;
  font: 14px/1.4 system-ui, sans-serif; }
.course-nav a { color: #0969da; text-decoration: none; }
.course-nav a:hover { text-decoration: underline; }
.course-nav .spacer { flex: 1; }
.course-nav .origin { color: #57606a; }
.site-badge { display: inline-block; padding: 0 .5em; border-radius: 3px; background: #555;
  color: #fff; font: 12px/1.6 system-ui, sans-serif; }
.widget-note { border-left: 4px solid #0969da; background: #f0f6ff; padding: .5rem .8rem;
  font: 14px/1.4 system-ui, sans-serif; }
details.solution { border: 1px dashed #d0d7de; padding: .2rem .6rem; margin: .4rem 0; }
details.solution > summary { cursor: pointer; color: #57606a; font: 14px system-ui, sans-serif; }
math[display="block"] { margin: .6em 0; }
"""

# Everything of nbconvert's lab template, without the scripts it loads from CDNs.
PAGE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{% block html_head_js %}{% endblock html_head_js %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
{% block extra_css %}<link rel="icon" href="data:,">
<style>{{ resources.course.css }}</style>{% endblock extra_css %}
{% block body_header %}{{ super() }}
{{ resources.course.nav_top }}
{% endblock body_header %}
{% block any_cell %}
{%- if 'solution' in cell.metadata.get('tags', []) -%}
<details class="solution"><summary>Show the solution</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{% endblock any_cell %}
{% block body_footer %}
{{ resources.course.nav_bottom }}
{{ super() }}
{% endblock body_footer %}
"""


@dataclass(frozen=True)
class Lesson:
    """One notebook of the course, as the site shows it."""

    number: str  # "03"
    title: str  # "03 · Fine-tuning for classification, ..."
    source: Path  # the executed notebook the page is rendered from
    origin: str  # where its outputs come from, in words
    objectives_html: str  # the notebook's objectives, rendered

    @property
    def stem(self) -> str:
        return self.source.stem

    @property
    def page(self) -> str:
        return f"{self.stem}.html"


# ----------------------------------------------------------------------------- markdown


def tex_to_mathml(tex: str, *, display: bool = False) -> str:
    """LaTeX → a `<math>` element (MathML, drawn by the browser without any script).

    Falls back to the TeX source in a `<code>` element if latex2mathml cannot parse it, so
    one odd formula never breaks a page.
    """
    from latex2mathml.converter import convert

    try:
        return convert(tex.strip(), display="block" if display else "inline")
    except Exception:  # noqa: BLE001 - show the source instead of failing the page
        return f'<code class="tex">{html.escape(tex)}</code>'


def _offline_renderer_class():
    from nbconvert.filters.markdown_mistune import IPythonRenderer

    class OfflineRenderer(IPythonRenderer):
        """nbconvert's markdown renderer with MathML math and no images from the web."""

        def inline_math(self, body: str) -> str:
            return tex_to_mathml(body)

        def block_math(self, body: str) -> str:
            return tex_to_mathml(body, display=True)

        def latex_environment(self, name: str, body: str) -> str:
            return tex_to_mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", display=True)

        def image(self, text: str, url: str, title: str | None = None) -> str:
            if re.match(r"(?i)^(https?:)?//", url):
                return f'<span class="site-badge">{html.escape(text or url)}</span>'
            return super().image(text, url, title)

    return OfflineRenderer


def markdown_to_html(source: str) -> str:
    """Render notebook Markdown the way the site's pages do (MathML, no web images)."""
    from nbconvert.filters.markdown_mistune import MarkdownWithMath

    renderer = _offline_renderer_class()(escape=False, exclude_anchor_links=True)
    return MarkdownWithMath(renderer=renderer).render(source)


def _exporter():
    from jinja2 import DictLoader, pass_context
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import MarkdownWithMath

    renderer_class = _offline_renderer_class()

    class CourseExporter(HTMLExporter):
        @pass_context
        def markdown2html(self, context, source):
            cell = context.get("cell", {})
            renderer = renderer_class(
                escape=False,
                attachments=cell.get("attachments", {}),
                embed_images=self.embed_images,
                path=context.get("resources", {}).get("metadata", {}).get("path", ""),
                anchor_link_text=self.anchor_link_text,
                exclude_anchor_links=self.exclude_anchor_links,
                **self.lexer_options,
            )
            return MarkdownWithMath(renderer=renderer).render(source)

    return CourseExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"course.html.j2": PAGE_TEMPLATE})],
        template_file="course.html.j2",
        embed_images=True,
    )


# ----------------------------------------------------------------------------- notebooks


WIDGET_NOTE = (
    '<div class="widget-note">🎛 <strong>Interactive explorer.</strong> It needs a running '
    "kernel: open this notebook in JupyterLab, or with the Colab or Binder link at the top of "
    "the page, and run the cells above it.</div>"
)


def prepare_notebook(nb: Any) -> Any:
    """A copy of `nb` ready for the site: no Colab set-up cell, no widget state, and each
    widget output replaced by a note that says how to use the explorer."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    cells = []
    for cell in nb.cells:
        if "colab" in cell.metadata.get("tags", []):
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data:
                output["data"] = nbformat.from_dict({"text/html": WIDGET_NOTE})
        cells.append(cell)
    nb.cells = cells
    return nb


def _objectives_markdown(nb: Any) -> str:
    """The bullet list under **Objectives** in the notebook's first cell ("" if none)."""
    first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    if first is None or "**Objectives**" not in first.source:
        return ""
    after = first.source.split("**Objectives**", 1)[1].lstrip("\n")
    lines = []
    for line in after.splitlines():
        if not line.strip():
            break
        lines.append(line)
    return "\n".join(lines)


def _title(nb: Any, default: str) -> str:
    from .report import notebook_title

    return notebook_title(nb, default=default)


def _origin(nb: Any) -> str:
    """Where the page's outputs come from, in words (papermill marks a run that failed)."""
    papermill = nb.metadata.get("papermill", {})
    if papermill:
        profile = papermill.get("parameters", {}).get("PROFILE") or "auto"
        failed = " — it stopped at an error, see its log" if papermill.get("exception") else ""
        return f"executed by make run (profile {profile}){failed}"
    return "committed outputs (smoke profile)"


def load_lessons(notebooks: Sequence[Path]) -> list[Lesson]:
    """Read the notebooks (named `NN_topic.ipynb`, numbers unique) into lessons, in order."""
    if not notebooks:
        raise ValueError("no notebooks given: pass executed notebooks named NN_topic.ipynb")
    lessons, seen = [], {}
    for path in notebooks:
        path = Path(path)
        match = NOTEBOOK_NAME.match(path.name)
        if match is None:
            raise ValueError(
                f"{path.name!r} is not named like a lesson: use NN_topic.ipynb "
                "(two digits, lower-case words joined by underscores)"
            )
        if match.group(1) in seen:
            raise ValueError(
                f"two notebooks are lesson {match.group(1)}: {seen[match.group(1)]} and "
                f"{path.name}; give each lesson its own number"
            )
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run `make run` or pass a notebook")
        seen[match.group(1)] = path.name
        nb = nbformat.read(path, as_version=4)
        lessons.append(
            Lesson(
                number=match.group(1),
                title=_title(nb, default=path.stem),
                source=path,
                origin=_origin(nb),
                objectives_html=markdown_to_html(_objectives_markdown(nb)),
            )
        )
    return sorted(lessons, key=lambda lesson: lesson.number)


def choose_sources(committed: Sequence[Path], run_dir: Path) -> list[Path]:
    """For each committed notebook, the copy that `make run` executed into `run_dir` if
    there is one, else the committed notebook itself (with its smoke outputs)."""
    chosen = []
    for path in committed:
        executed = Path(run_dir) / Path(path).name
        chosen.append(executed if executed.is_file() else Path(path))
    return chosen


# ----------------------------------------------------------------------------- pages


def _links(lesson: Lesson) -> str:
    notebook_path = f"notebooks/{lesson.source.name}"
    colab = f"https://colab.research.google.com/github/{REPOSITORY}/blob/main/{notebook_path}"
    binder = (
        f"https://mybinder.org/v2/gh/{REPOSITORY}/main?labpath="
        + notebook_path.replace("/", "%2F")
    )
    return (
        f'<a class="colab" href="{html.escape(colab)}">Open in Colab</a>'
        f'<a class="binder" href="{html.escape(binder)}">Launch on Binder</a>'
        f'<a class="download" href="notebooks/{html.escape(lesson.source.name)}" download>'
        "Download the notebook</a>"
    )


def navigation(lessons: Sequence[Lesson], index: int, *, where: str) -> str:
    """The bar at the top (`where="top"`) or bottom of lesson `index`'s page."""
    esc = html.escape
    lesson = lessons[index]
    parts = ['<a class="home" href="index.html">☰ All lessons</a>']
    if index > 0:
        prev = lessons[index - 1]
        parts.append(f'<a class="prev" rel="prev" href="{esc(prev.page)}">← {esc(prev.title)}</a>')
    if index + 1 < len(lessons):
        nxt = lessons[index + 1]
        parts.append(f'<a class="next" rel="next" href="{esc(nxt.page)}">{esc(nxt.title)} →</a>')
    parts.append('<span class="spacer"></span>')
    if where == "top":
        parts.append(_links(lesson))
        parts.append(f'<span class="origin">{esc(lesson.origin)}</span>')
    return f'<nav class="course-nav {where}" aria-label="lessons">{"".join(parts)}</nav>'


def render_lesson(lessons: Sequence[Lesson], index: int, exporter: Any = None) -> str:
    """The HTML page of lesson `index`."""
    lesson = lessons[index]
    exporter = exporter or _exporter()
    nb = prepare_notebook(nbformat.read(lesson.source, as_version=4))
    resources = {
        "metadata": {"name": lesson.title, "path": str(lesson.source.parent)},
        "course": {
            "css": SITE_CSS,
            "nav_top": navigation(lessons, index, where="top"),
            "nav_bottom": navigation(lessons, index, where="bottom"),
        },
    }
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return body


INDEX_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>llm-tutorial — an executable course on large language models</title>
<link rel="icon" href="data:,">
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 62rem; color: #1f2328;
  padding: 0 1rem; }}
a {{ color: #0969da; }}
ol.lessons {{ list-style: none; padding: 0; }}
ol.lessons > li {{ border-top: 1px solid #d0d7de; padding: .8rem 0; }}
ol.lessons h2 {{ font-size: 1.15rem; margin: 0 0 .3rem; }}
.meta {{ color: #57606a; font-size: .9rem; }}
pre {{ background: #f6f8fa; padding: .6rem; }}
</style>
</head>
<body>
<h1>llm-tutorial</h1>
<p>An executable course on large language models, from the pretraining objective to evaluation.
Each lesson is a notebook backed by the <code>llm_tutorial</code> package; this site shows them
executed. To run them yourself:</p>
<pre>make run      # set up .venv, execute every notebook into outputs/, build this site
.venv/bin/jupyter lab notebooks/</pre>
{run}<ol class="lessons">
{items}
</ol>
<p class="meta">{count} lessons. Built by <code>python -m llm_tutorial_build.site</code>.</p>
</body>
</html>
"""


def render_index(lessons: Sequence[Lesson], run: dict | None = None) -> str:
    """The site's front page: every lesson with its objectives and links (and, after a `make
    run`, a line that links to the run's report)."""
    esc = html.escape
    items = []
    for lesson in lessons:
        items.append(
            f'<li id="lesson-{esc(lesson.number)}"><h2><a href="{esc(lesson.page)}">'
            f"{esc(lesson.title)}</a></h2>\n{lesson.objectives_html}"
            f'<p class="meta">{_links(lesson).replace("</a><a", "</a> · <a")} · '
            f"{esc(lesson.origin)}</p></li>"
        )
    line = ""
    if run is not None:
        failed = sum(not n["ok"] for n in run["notebooks"])
        state = f"{failed} FAILED" if failed else "all ran"
        line = (f'<p class="run">The pages show a <code>make run</code> ({esc(run["profile"])} profile, '
                f'{esc(run["generated"])}; {state}): <a href="run.html">the run\'s report</a>.</p>\n')
    return INDEX_TEMPLATE.format(items="\n".join(items), count=len(lessons), run=line)


RUN_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>llm-tutorial — the run's report</title>
<link rel="icon" href="data:,">
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #1f2328;
  padding: 0 1rem; }}
a {{ color: #0969da; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #d0d7de; padding: .4rem .6rem; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.ok {{ color: #1a7f37; font-weight: 600; }} .failed {{ color: #cf222e; font-weight: 600; }}
pre {{ background: #fff5f5; padding: .5rem; white-space: pre-wrap; font-size: .85em; }}
</style>
</head>
<body>
<p><a href="index.html">☰ All lessons</a></p>
<h1>The run's report</h1>
<p>{summary}. Profile <strong>{profile}</strong>, device <strong>{device}</strong>, Python {python},
torch {torch}, generated {generated} by <code>python -m llm_tutorial_build.report run</code>.</p>
<table>
<thead><tr><th>#</th><th>lesson</th><th>status</th><th>wall time</th><th>peak RSS</th><th>files</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""


def render_run(run: dict, pages: dict[str, str], run_dir_from_site: str) -> str:
    """The run's report (`report run`'s `run.json`) as a page of the site: one row per notebook,
    linked to its lesson page, with its status, wall time, peak memory, log and executed
    notebook."""
    esc = html.escape
    rows = []
    for n in run["notebooks"]:
        title = esc(n["title"])
        if n["name"] in pages:
            title = f'<a href="{esc(pages[n["name"]])}">{title}</a>'
        files = [f'<a href="{esc(run_dir_from_site + "/" + n[k])}">{k}</a>'
                 for k in ("output", "log") if n.get(k)]
        error = f"<pre>{esc(n['error'])}</pre>" if n.get("error") else ""
        status = "ok" if n["ok"] else "failed"
        rows.append(f'<tr class="{status}"><td><code>{esc(n["name"])}</code></td><td>{title}{error}</td>'
                    f'<td class="{status}">{"ok" if n["ok"] else "FAILED"}</td>'
                    f'<td class="num">{n["wall_s"]:.1f} s</td><td class="num">{n["peak_rss_mb"]:,} MB</td>'
                    f"<td>{' · '.join(files) or '—'}</td></tr>")
    failed = sum(not n["ok"] for n in run["notebooks"])
    total = len(run["notebooks"])
    summary = (f"{total} notebook(s), all ok" if not failed
               else f'<span class="failed">{failed} of {total} notebook(s) FAILED</span>')
    return RUN_TEMPLATE.format(summary=summary, rows="\n".join(rows),
                               **{k: esc(str(run[k])) for k in ("profile", "device", "python", "torch",
                                                                 "generated")})


def build_site(notebooks: Sequence[Path], out_dir: Path, *, echo: bool = False,
               run_report: Path | None = None) -> Path:
    """Render `notebooks` (executed) into `out_dir`: one page each, `index.html`, and a
    copy of each notebook under `notebooks/` for download; with `run_report` (the
    `run.json` of `report run`) also `run.html`. Returns the index's path."""
    lessons = load_lessons(notebooks)
    out_dir = Path(out_dir)
    (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    exporter = _exporter()
    for i, lesson in enumerate(lessons):
        (out_dir / lesson.page).write_text(render_lesson(lessons, i, exporter), encoding="utf-8")
        shutil.copyfile(lesson.source, out_dir / "notebooks" / lesson.source.name)
        if echo:
            print(f"[site] {lesson.page} ({lesson.origin})", flush=True)
    run = None
    if run_report is not None and Path(run_report).is_file():
        run = json.loads(Path(run_report).read_text(encoding="utf-8"))
        from_site = Path(os.path.relpath(Path(run_report).parent.resolve(), out_dir.resolve())).as_posix()
        (out_dir / "run.html").write_text(
            render_run(run, {lesson.stem: lesson.page for lesson in lessons}, from_site), encoding="utf-8")
        if echo:
            print(f"[site] {out_dir / 'run.html'} (the run's report)", flush=True)
    index = out_dir / "index.html"
    index.write_text(render_index(lessons, run), encoding="utf-8")
    if echo:
        print(f"[site] {index} ({len(lessons)} lessons)", flush=True)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    from .report import NOTEBOOKS_DIR

    parser = argparse.ArgumentParser(
        prog="python -m llm_tutorial_build.site",
        description="Render the executed notebooks into a static course site.",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/site"), help="site folder")
    parser.add_argument(
        "--run-dir", type=Path, default=Path("outputs"),
        help="where `make run` wrote executed notebooks (preferred when present)",
    )  # fmt: skip
    parser.add_argument(
        "--notebooks", nargs="*", type=Path,
        help="committed notebooks to include (default: every notebooks/NN_*.ipynb)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    committed = args.notebooks or sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    build_site(choose_sources(committed, args.run_dir), args.out, echo=True,
               run_report=args.run_dir / "run.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
