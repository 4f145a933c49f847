"""Plot helpers draw what they are given and reject malformed input with a useful message."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from llm_tutorial import plotting


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_loss_curves_draws_runs_and_baselines():
    history = pd.DataFrame({"step": [10, 20, 30], "eval_loss": [3.0, np.nan, 2.0]})
    ax = plotting.loss_curves({"run": history}, {"unigram": 2.5})
    lines = ax.get_lines()
    assert len(lines) == 2
    assert list(lines[0].get_xdata()) == [10, 30]  # NaN rows (no evaluation) are skipped
    assert list(lines[1].get_ydata()) == [2.5, 2.5]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["run", "unigram"]


def test_loss_curves_rejects_empty_and_missing_columns():
    with pytest.raises(ValueError, match="histories is empty"):
        plotting.loss_curves({})
    with pytest.raises(KeyError, match="eval_loss"):
        plotting.loss_curves({"run": pd.DataFrame({"step": [1], "train_loss": [1.0]})})


def test_lr_schedule_plots_every_step():
    ax = plotting.lr_schedule([0.0, 0.5, 1.0, 0.5])
    assert list(ax.get_lines()[0].get_ydata()) == [0.0, 0.5, 1.0, 0.5]


def test_attention_heatmap_checks_shape():
    weights = torch.softmax(torch.randn(3, 3), dim=-1)
    ax = plotting.attention_heatmap(weights, ["a", "b", "c"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="len\\(tokens\\)"):
        plotting.attention_heatmap(weights, ["a", "b"])


def test_confusion_heatmap_annotates_counts():
    matrix = np.array([[5, 1], [0, 4]])
    ax = plotting.confusion_heatmap(matrix, ["a", "b"])
    assert [t.get_text() for t in ax.texts] == ["5", "1", "0", "4"]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    plt.close("all")
    with pytest.raises(ValueError, match=r"\(len\(labels\), len\(labels\)\) = \(3, 3\)"):
        plotting.confusion_heatmap(matrix, ["a", "b", "c"])


def test_reliability_diagram_draws_filled_bins_and_the_diagonal():
    from llm_tutorial import evaluation

    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    table = evaluation.reliability_table(probs, [0, 1, 0, 0], n_bins=5)
    ax = plotting.reliability_diagram(table, title="r")
    assert len(ax.get_lines()) == 1 and list(ax.get_lines()[0].get_xdata()) == [0, 1]
    assert ax.get_title() == "r"
    # two filled bins: (0.4, 0.6] with 2 of 2 right and (0.8, 1.0] with 1 of 2; their accuracy
    # bars come first, then the two gap bars, then one share bar per bin (5)
    assert len(ax.patches) == 2 + 2 + 5
    assert sorted(round(p.get_height(), 3) for p in ax.patches[:2]) == [0.5, 1.0]
    with pytest.raises(KeyError, match="reliability_table"):
        plotting.reliability_diagram(pd.DataFrame({"count": [1]}))
