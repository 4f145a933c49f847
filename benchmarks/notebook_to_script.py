"""Turn a course notebook into a plain Python script, for machines without Jupyter.

GPU machines that run the `full` profile may lack Jupyter, papermill and ipywidgets. This
writes a script that runs the same code cells in order, with these changes:

* `display` prints, and a cell's last expression is displayed, as in Jupyter;
* widget cells (those that use `ipywidgets`) and hidden solution cells are skipped; an imports
  cell that only imports it keeps its other imports;
* matplotlib draws off-screen (`Agg`) and figures are closed after each cell;
* a failing cell prints its traceback and the script goes on (exit status 1 at the end), so
  one failed check does not hide the numbers of the cells after it;
* each cell's wall time is printed, so the log shows where the time goes, and at the end the
  peak GPU memory PyTorch allocated (when there is a GPU).

    python benchmarks/notebook_to_script.py notebooks/04_finetuning_classification.ipynb out.py
    LLM_TUTORIAL_PROFILE=full python out.py

`--cells 3,5,25` keeps only those code cells (numbered as in the notebook, counting markdown
cells too, as the `[cell N: s]` lines do): a run of one section with the cells it needs, when
the whole notebook would take hours. Say which cells ran when you record such a run.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import textwrap
from pathlib import Path

PREAMBLE = '''\
import time as _time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as _plt
import pandas as _pd

_pd.set_option("display.width", 200)
_pd.set_option("display.max_columns", 20)


def display(*objects, **_):
    for obj in objects:
        if obj is not None:
            print(obj)


PROFILE = ""
_failed = []
'''


def _display_last_expression(source: str) -> str:
    """Wrap a cell's final bare expression in display(...), as Jupyter shows it."""
    tree = ast.parse(source)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        lines = source.splitlines()
        head = "\n".join(lines[: last.lineno - 1] + [lines[last.lineno - 1][: last.col_offset]])
        expr = ast.get_source_segment(source, last)
        if not (isinstance(last.value, ast.Call) and ast.unparse(last.value.func) in (
                "print", "display")):
            return f"{head}display({expr})\n"
    return source


def convert(notebook: Path, cells: set[int] | None = None) -> str:
    """The script's source; `cells`, when given, are the only code cells it runs."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    if cells is not None:
        not_code = sorted(n for n in cells
                          if not 0 <= n < len(nb["cells"]) or nb["cells"][n]["cell_type"] != "code")
        if not_code:
            raise ValueError(f"cells {not_code} are not code cells of {notebook} "
                             "(number cells from 0, markdown cells included)")
    parts = [PREAMBLE]
    for number, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or (cells is not None and number not in cells):
            continue
        source = "".join(cell["source"])
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags or "solution" in tags:
            continue
        # an imports cell keeps its other imports; the cells that build widgets are dropped
        source = "\n".join(line for line in source.splitlines()
                           if not re.match(r"\s*(import ipywidgets|from ipywidgets )", line))
        if re.search(r"\b(widgets|interact|ipywidgets)\b", source):
            continue
        body = textwrap.indent(_display_last_expression(source), "    ")
        parts.append(f"# ---- cell {number}\n_t = _time.perf_counter()\ntry:\n{body}\n"
                     f"except Exception:\n    import traceback\n\n    traceback.print_exc()\n"
                     f"    _failed.append({number})\n"
                     f"_plt.close('all')\n"
                     f"print(f'[cell {number}: {{_time.perf_counter() - _t:.1f}} s]', flush=True)\n")
    parts.append("import torch as _torch\n\nif _torch.cuda.is_available():\n"
                 "    print(f'[peak GPU memory allocated: "
                 "{_torch.cuda.max_memory_allocated() / 2**30:.2f} GiB]')\n"
                 "if _failed:\n    raise SystemExit(f'failed cells: {_failed}')\n")
    return "\n".join(parts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cells", help="comma-separated cell numbers to keep (default: all)")
    args = parser.parse_args()
    keep = None if args.cells is None else {int(n) for n in args.cells.split(",")}
    try:
        args.out.write_text(convert(args.notebook, keep), encoding="utf-8")
    except ValueError as error:
        sys.exit(str(error))
    print(f"wrote {args.out}")
