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
