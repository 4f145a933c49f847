"""The full-profile records that notebooks 11 to 14 show beside their smoke runs
(`llm_tutorial/data/results/<name>.csv`), read the way their tests check them."""

from __future__ import annotations

import hashlib

import pandas as pd

from llm_tutorial import assets


def read_record(name: str, sha256: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The record's rows and provenance, once its bytes are the ones its test was written against
    (a re-recorded file fails here: check its numbers, then pin the new digest)."""
    path = assets.recorded_results(name)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == sha256, f"{path.name} is not the pinned record (sha256 {digest})"
    rows, provenance = assets.read_recorded_results(name)
    assert {"command", "hardware", "date", "commit"} <= set(provenance), f"{path.name}: provenance lines missing"
    return rows, provenance


def record_table(rows: pd.DataFrame, table: str) -> pd.DataFrame:
    """One table of a record kept as (table, row, column, value) lines, as rows x columns (each
    cell recorded once: a repeated line would otherwise be averaged away)."""
    part = rows[rows["table"] == table]
    assert len(part) and not part.duplicated(["row", "column"]).any(), f"table {table!r}: missing, or a cell twice"
    return part.pivot(index="row", columns="column", values="value")
