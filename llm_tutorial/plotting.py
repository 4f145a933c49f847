"""Plots the course reuses: loss curves from the trainer's history, learning-rate schedules,
attention heat-maps, confusion matrices and reliability diagrams. Each function draws on a
given (or new) matplotlib `Axes` and returns it, so notebooks can combine them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def _axes(ax=None, figsize=(6, 3.5)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def loss_curves(histories: Mapping[str, pd.DataFrame], baselines: Mapping[str, float] | None = None,
                column: str = "eval_loss", ax=None, title: str = "held-out loss"):
    """One line per run (`{name: trainer history}`) of `column` against the step, plus
    horizontal dashed lines for reference values such as the unigram baseline."""
    if not histories:
        raise ValueError("histories is empty: pass {'run name': trainer_history, ...}")
    ax = _axes(ax)
    for name, history in histories.items():
        if column not in history or "step" not in history:
            raise KeyError(f"history of {name!r} has no {column!r}/'step' column: "
                           f"columns are {list(history.columns)}")
        points = history[["step", column]].dropna()
        ax.plot(points["step"], points[column], marker="o", markersize=3, label=name)
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{len(histories) + i}", label=name)
    ax.set(xlabel="optimizer step", ylabel="loss (nats)", title=title)
    ax.legend(fontsize=8)
    return ax


def lr_schedule(lrs: Sequence[float], ax=None, title: str = "learning-rate schedule"):
    """The learning rate at every step (e.g. from `trainer.lr_lambda`)."""
    ax = _axes(ax)
    ax.plot(range(len(lrs)), lrs)
    ax.set(xlabel="optimizer step", ylabel="learning rate", title=title)
    return ax


def attention_heatmap(weights, tokens: Sequence[str], ax=None, title: str = "attention"):
    """Heat-map of one attention matrix (query rows attend to key columns)."""
    weights = weights.detach().cpu().numpy() if hasattr(weights, "detach") else weights
    if weights.shape != (len(tokens), len(tokens)):
        raise ValueError(f"weights {weights.shape} must be (len(tokens), len(tokens)) = "
                         f"({len(tokens)}, {len(tokens)})")
    ax = _axes(ax, figsize=(5, 4.5))
    sns.heatmap(weights, xticklabels=tokens, yticklabels=tokens, cmap="viridis", square=True,
                cbar=True, ax=ax)
    ax.set(title=title, xlabel="key", ylabel="query")
    return ax


def confusion_heatmap(matrix, labels: Sequence[str], ax=None, title: str = "confusion matrix"):
    """Heat-map of a confusion matrix (rows: true class, columns: predicted) with counts."""
    if getattr(matrix, "shape", None) != (len(labels), len(labels)):
        raise ValueError(f"matrix must be (len(labels), len(labels)) = ({len(labels)}, "
                         f"{len(labels)}), got {getattr(matrix, 'shape', type(matrix).__name__)}")
    ax = _axes(ax, figsize=(5, 4.2))
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", xticklabels=labels,
                yticklabels=labels, cbar=False, square=True, ax=ax)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    return ax


def reliability_diagram(table: pd.DataFrame, ax=None, title: str = "reliability diagram"):
    """Bars of accuracy per confidence bin (from `evaluation.reliability_table`) against the
    diagonal of perfect calibration; the orange part of a bar is its gap to the mean confidence
    (above the bar: over-confident, inside it: under-confident), and the low grey bars show the
    share of predictions in each bin."""
    missing = {"low", "high", "count", "confidence", "accuracy"} - set(table.columns)
    if missing:
        raise KeyError(f"table lacks columns {sorted(missing)}: pass evaluation.reliability_table(...)")
    ax = _axes(ax, figsize=(4, 4))
    width = (table["high"] - table["low"]).to_numpy()
    centers = ((table["low"] + table["high"]) / 2).to_numpy()
    filled = table["count"].to_numpy() > 0
    acc = table["accuracy"].fillna(0).to_numpy()
    conf = table["confidence"].fillna(0).to_numpy()
    ax.bar(centers[filled], acc[filled], width=width[filled], edgecolor="black", color="#4c72b0",
           label="accuracy")
    ax.bar(centers[filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled],
           color="#dd8452", alpha=0.6, edgecolor="#dd8452", label="gap to confidence")
    share = table["count"].to_numpy() / max(int(table["count"].sum()), 1)
    ax.bar(centers, share * 0.25, width=width, color="grey", alpha=0.5, label="share of predictions (×¼)")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend(fontsize=7, loc="upper left")
    return ax
