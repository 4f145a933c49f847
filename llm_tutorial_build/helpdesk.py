"""Write the course-documentation snapshot that notebook 13's help desk indexes.

    python -m llm_tutorial_build.helpdesk            # writes llm_tutorial/data/helpdesk/course_docs.jsonl

The snapshot holds README.md, docs/results/*.md and the markdown cells of notebooks/*.ipynb, cut
into sections (`applications.markdown_chunks`). It is frozen on purpose: the hand-written questions
in questions.csv are labelled against it, so a later edit of the docs cannot silently move a gold
section. Re-run it only together with a check of the labels (tests/test_applications.py does).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import nbformat

from llm_tutorial.applications import COURSE_DOCS, markdown_chunks

ROOT = Path(__file__).resolve().parents[1]


def course_sources(root: Path = ROOT) -> list[tuple[str, str]]:
    """(repository-relative path, markdown) of every documented page, in a fixed order."""
    sources = [("README.md", (root / "README.md").read_text(encoding="utf-8"))]
    for path in sorted((root / "docs" / "results").glob("*.md")):
        sources.append((path.relative_to(root).as_posix(), path.read_text(encoding="utf-8")))
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        text = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        sources.append((path.relative_to(root).as_posix(), text))
    return sources


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=COURSE_DOCS)
    args = parser.parse_args(argv)
    chunks = [c for doc, text in course_sources() for c in markdown_chunks(text, doc)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for chunk in chunks:
            f.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
    print(f"wrote {len(chunks)} chunks to {args.out}")


if __name__ == "__main__":
    main()
