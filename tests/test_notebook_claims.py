"""Prose bound to outputs: a decimal number quoted in a notebook's markdown must be printed by
that notebook (in a committed output), appear in its code (a setting such as a learning rate),
or sit in a marked reference — a blockquote whose first line starts with **Reference**, naming
where the number comes from (docs/results, a paper). Otherwise the prose can drift from what the
notebook shows, e.g. quote a full-profile win beside a smoke table that says the opposite.

LaTeX math ($...$) is skipped: it states formulas, not measurements."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)


def _outputs_and_code(cells: list[dict]) -> str:
    parts = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        parts.append("".join(cell["source"]))
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", "")))
            for mime in ("text/plain", "text/html", "text/markdown"):
                value = output.get("data", {}).get(mime, "")
                parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)


def _unreferenced_prose(markdown: str) -> str:
    """The markdown without math and without marked reference blockquotes."""
    kept, in_reference = [], False
    for line in markdown.splitlines():
        if line.startswith(">"):
            if not in_reference:
                in_reference = line.lstrip("> ").startswith("**Reference")
            if in_reference:
                continue
        else:
            in_reference = False
        kept.append(line)
    return MATH.sub(" ", "\n".join(kept))


def unbacked_numbers(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    shown = _outputs_and_code(cells)
    missing = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        for number in DECIMAL.findall(_unreferenced_prose("".join(cell["source"]))):
            if number not in shown:
                missing.append(f"cell {index}: {number}")
    return missing


def test_the_claims_check_catches_a_number_no_output_prints(tmp_path):
    def cell(kind, source, text=""):
        outputs = [{"output_type": "stream", "name": "stdout", "text": text}] if kind == "code" else []
        return {"cell_type": kind, "source": source, "metadata": {}, **({"outputs": outputs} if outputs else {})}

    notebook = tmp_path / "99_x.ipynb"
    notebook.write_text(json.dumps({"cells": [
        cell("code", "print(acc)", "accuracy 0.91\n"),
        cell("markdown", "The model reaches 0.91 here and 0.97 in full; loss $0.5$.\n\n"
                         "> **Reference** (docs/results/x.md): 0.99 on a GPU.\n> Over three seeds 0.98."),
    ]}))
    assert unbacked_numbers(notebook) == ["cell 1: 0.97"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_every_decimal_in_the_prose_is_printed_or_referenced(notebook):
    missing = unbacked_numbers(notebook)
    assert not missing, (f"{notebook.name}: numbers in markdown that no output prints and no "
                         f"'> **Reference**' block cites: {missing}")
