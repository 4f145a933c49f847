"""Tests of `llm_tutorial.continual` (notebook 11): the GEM metrics on hand-worked matrices,
the reservoir, the Fisher and the EWC penalty by closed form, and both streams on tiny data."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_tutorial import continual as cl
from llm_tutorial import peft_methods as pm
from tests.chat_models import tiny_llama, word_chat_tokenizer
from tests.records import read_record

# ------------------------------------------------------------------------------ metrics

R_HAND = np.array([[0.9, 0.5, 0.1],
                   [0.6, 0.9, 0.2],
                   [0.3, 0.5, 0.9]])
B_HAND = np.array([0.3, 0.5, 0.3])


def test_metrics_equal_the_hand_worked_example():
    assert cl.average_accuracy(R_HAND) == pytest.approx((0.3 + 0.5 + 0.9) / 3)
    assert cl.backward_transfer(R_HAND) == pytest.approx(((0.3 - 0.9) + (0.5 - 0.9)) / 2)
    assert cl.forward_transfer(R_HAND, B_HAND) == pytest.approx(((0.5 - 0.5) + (0.2 - 0.3)) / 2)
    assert set(cl.transfer_metrics(R_HAND)) == {"ACC", "BWT"}


def test_no_forgetting_and_perfect_memory_give_zero_backward_transfer():
    R = np.array([[0.8, 0.1], [0.8, 0.7]])
    assert cl.backward_transfer(R) == 0
    assert cl.backward_transfer(np.array([[0.5, 0.0], [0.9, 0.9]])) == pytest.approx(0.4)  # it improved


def gem_released_code(R: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """What facebookresearch/GradientEpisodicMemory's metrics.py computes (written here from its
    description): bwt[t] = R[T-1, t] - R[t, t] and fwt[t] = R[t-1, t] - b[t] with fwt[0] = 0, each
    averaged over all T entries, so the zero entries (bwt of the last task, fwt of the first)
    are in the mean."""
    T = len(R)
    bwt = R[-1] - np.diag(R)
    fwt = np.zeros(T)
    for t in range(1, T):
        fwt[t] = R[t - 1, t] - b[t]
    return R[-1].mean(), bwt.mean(), fwt.mean()


def test_the_paper_divides_by_t_minus_one_and_gems_released_code_by_t():
    rng = np.random.default_rng(0)
    for T in (2, 3, 5):
        R, b = rng.uniform(size=(T, T)), rng.uniform(size=T)
        acc, bwt, fwt = gem_released_code(R, b)
        assert cl.average_accuracy(R) == pytest.approx(acc)
        assert cl.backward_transfer(R) * (T - 1) / T == pytest.approx(bwt)
        assert cl.forward_transfer(R, b) * (T - 1) / T == pytest.approx(fwt)


def test_accuracy_matrix_tests_before_training_and_after_every_task():
    calls, state = [], {"trained": []}

    def train(i):
        calls.append(("train", i))
        state["trained"].append(i)

    def evaluate(j):
        calls.append(("eval", j))
        return 1.0 if j in state["trained"] else 0.0

    R, b = cl.accuracy_matrix(train, evaluate, 3)
    assert b.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(R, np.triu(np.ones((3, 3))).T)
    assert calls[:4] == [("eval", 0), ("eval", 1), ("eval", 2), ("train", 0)]
    assert len(calls) == 3 + 3 * 4


# ------------------------------------------------------------------------------ tasks


def test_class_tasks_name_the_tasks_and_keep_the_order():
    tasks = cl.class_tasks([[0, 1], [2]], ["a", "b", "c"])
    assert tasks == [cl.Task("a+b", (0, 1)), cl.Task("c", (2,))]


# ------------------------------------------------------------------------------ reservoir


def test_the_reservoir_keeps_the_first_items_then_every_item_with_the_same_probability():
    buffer = cl.ReservoirBuffer(5, seed=0)
    buffer.extend(range(5))
    assert buffer.items == [0, 1, 2, 3, 4] and buffer.seen == 5
    counts = np.zeros(40)
    for seed in range(2000):
        buffer = cl.ReservoirBuffer(10, seed=seed)
        buffer.extend(range(40))
        assert len(buffer) == 10 and len(set(buffer.items)) == 10
        counts[buffer.items] += 1
    inclusion = counts / 2000  # each of 40 items: 10/40 = 0.25; binomial sd ~0.01
    assert np.abs(inclusion - 0.25).max() < 0.05
    assert abs(inclusion[:10].mean() - inclusion[30:].mean()) < 0.03  # first and last alike


def test_a_zero_buffer_keeps_nothing_and_samples_nothing():
    buffer = cl.ReservoirBuffer(0)
    buffer.extend(range(10))
    assert len(buffer) == 0 and buffer.sample(3, random.Random(0)) == []


def test_expected_old_share_is_each_tasks_share_of_the_stream():
    assert cl.expected_old_share([300, 100, 100], 50) == [0.6, 0.2, 0.2]
    assert cl.expected_old_share([], 10) == []


# ------------------------------------------------------------------------------ Fisher and EWC


def softmax_regression(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Linear(5, 3, bias=False), torch.randn(30, 5)


def test_the_fisher_equals_its_closed_form_and_minus_the_hessian():
    model, x = softmax_regression()
    fisher = cl.classifier_fisher(model, x)["weight"]
    with torch.no_grad():
        p = model(x).softmax(-1)
    closed = torch.einsum("nk,nd->kd", p * (1 - p), x ** 2) / len(x)
    torch.testing.assert_close(fisher, closed, atol=1e-6, rtol=1e-5)
    labels = torch.randint(0, 3, (30,))
    hessian = torch.autograd.functional.hessian(
        lambda w: F.log_softmax(x @ w.view(3, 5).T, -1).gather(1, labels[:, None]).mean(),
        model.weight.detach().flatten())
    torch.testing.assert_close(fisher, -hessian.diagonal().view(3, 5), atol=1e-6, rtol=1e-5)


def test_the_empirical_fisher_is_the_mean_squared_gradient_of_the_labels_log_likelihood():
    model, x = softmax_regression(1)
    labels = torch.tensor([i % 3 for i in range(30)])
    ours = cl.classifier_fisher(model, x, labels)["weight"]
    squares = torch.zeros_like(model.weight)
    for n in range(len(x)):
        (g,) = torch.autograd.grad(F.cross_entropy(model(x[n:n + 1]), labels[n:n + 1]), model.weight)
        squares += g ** 2
    torch.testing.assert_close(ours, squares / len(x))
    generic = cl.diagonal_fisher(model, [(x[n:n + 1], labels[n:n + 1]) for n in range(len(x))],
                                 loss_fn=lambda m, ex: F.cross_entropy(m(ex[0]), ex[1]))
    torch.testing.assert_close(generic["weight"], ours)


def test_a_masked_class_has_no_probability_and_adds_nothing_to_the_fisher():
    model, x = softmax_regression(2)
    allowed = torch.tensor([True, True, False]).expand(len(x), -1)
    fisher = cl.classifier_fisher(model, x, allowed=allowed)["weight"]
    assert torch.all(fisher[2] == 0) and torch.all(fisher[:2] > 0)


def test_the_ewc_penalty_and_its_gradient_by_hand():
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.0]]))
    penalty = cl.EWCPenalty(10.0)
    penalty.consolidate(model, {"weight": torch.tensor([[4.0, 0.0, 0.5]])})
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.5, 3.0, -2.0]]))
    value = penalty(model)
    assert value.item() == pytest.approx(5 * (4 * 0.25 + 0 + 0.5 * 4))
    value.backward()
    torch.testing.assert_close(model.weight.grad, 10 * torch.tensor([[4 * 0.5, 0.0, 0.5 * -2.0]]))


def test_the_ewc_objective_adds_the_penalty_to_the_models_loss():
    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.linear(x).pow(2).mean()

    model, x = WithLoss(), torch.randn(4, 2)
    penalty = cl.EWCPenalty(3.0)
    penalty.consolidate(model, {n: torch.ones_like(p) for n, p in model.named_parameters()})
    with torch.no_grad():
        model.linear.bias.add_(1.0)
    assert cl.EWCObjective(model, penalty)(x=x).item() == pytest.approx(model(x).item() + 1.5)


# ------------------------------------------------------------------------------ the classification stream


def clusters(n_classes: int = 4, per_class: int = 40, dim: int = 16, seed: int = 0):
    """Well-separated Gaussian clusters: train and test indices, half and half."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(n_classes, dim, generator=g)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    order = torch.randperm(len(y), generator=g).numpy()
    return x, y, order[: len(y) // 2], order[len(y) // 2:]


TASKS = cl.class_tasks([[0, 1], [2, 3]])


def stream(method, scenario="class", setting=None, **kwargs):
    x, y, train, test = clusters()
    return cl.classification_stream(x, y, TASKS, train, test, scenario, method, setting, steps=30,
                                    batch_size=16, hidden=32, **kwargs)


def test_naive_class_incremental_learning_forgets_and_replay_and_joint_remember():
    naive = stream("naive")
    assert naive.R[0, 0] > 0.9 and naive.R[1, 1] > 0.9
    assert naive.metrics["BWT"] < -0.5  # the old classes are no longer predicted
    assert stream("replay", setting=20).metrics["BWT"] > naive.metrics["BWT"] + 0.3
    assert stream("joint").metrics["ACC"] > 0.9


def test_ewc_with_a_strong_spring_forgets_less_than_naive_and_lambda_zero_is_naive():
    naive = stream("naive")
    np.testing.assert_array_equal(stream("ewc", setting=0.0).R, naive.R)
    assert stream("ewc", setting=1e5).metrics["BWT"] > naive.metrics["BWT"]


def test_one_adapter_per_task_forgets_nothing_exactly():
    res = stream("adapters", scenario="task")
    assert res.R[1, 0] == res.R[0, 0] and res.metrics["BWT"] == 0
    assert res.R[1, 1] > 0.9


def test_the_stream_is_reproducible_and_the_seed_matters():
    a, b = stream("replay", setting=10, seed=3), stream("replay", setting=10, seed=3)
    np.testing.assert_array_equal(a.R, b.R)
    assert a.label == "replay (10 examples)" and "FWT" in a.metrics


def test_summarise_gives_points():
    table = cl.summarise([stream("naive")])
    assert list(table.columns) == ["method", "ACC", "BWT", "FWT", "seconds"]
    assert table["BWT"].iloc[0] < -50


# ------------------------------------------------------------------------------ the instruction stream


@pytest.fixture(scope="module")
def word_tok():
    words = "what is the largest smallest number in list of give a answer".split() + [str(i) for i in range(100)]
    return word_chat_tokenizer(words + [","])


def test_the_instruction_stream_fills_r_and_leaves_the_model_without_lora(word_tok):
    model = tiny_llama(word_tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = cl.instruction_stream(model, word_tok, ["list_max", "list_min"], "adapters", steps=2,
                                batch_size=2, train_records=8, eval_records=4, max_new_tokens=3)
    assert res.R.shape == (2, 2) and res.b.shape == (2,)
    assert res.R[1, 0] == res.R[0, 0]  # its own adapter, unchanged
    assert set(res.answers) == {(-1, 0), (-1, 1), (0, 0), (0, 1), (1, 0), (1, 1)}
    assert len(res.records[0]) == len(res.answers[0, 0])
    assert not pm.lora_modules(model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before[name])


def test_ewc_on_an_instruction_stream_runs_through_the_trainer(word_tok):
    res = cl.instruction_stream(tiny_llama(word_tok), word_tok, ["list_max", "list_min"], "ewc", 1.0,
                                steps=2, batch_size=2, train_records=8, eval_records=4,
                                max_new_tokens=2, fisher_examples=3)
    assert np.isfinite(res.R).all()


# ------------------------------------------------------------------------------ mistakes

BAD_CALLS = [
    (lambda: cl.class_tasks([]), "task list is empty"),
    (lambda: cl.class_tasks([[0, 1], [1, 2]]), "must not share label ids"),
    (lambda: cl.class_tasks([[0], []]), "no classes"),
    (lambda: cl.class_tasks([[0, 5]], ["a", "b"]), "out of range"),
    (lambda: cl.ReservoirBuffer(-1), "capacity must be >= 0"),
    (lambda: cl.EWCPenalty(-0.5), "lambda must be >= 0"),
    (lambda: cl.backward_transfer([[90, 10], [50, 80]]), "divide percentages by 100"),
    (lambda: cl.backward_transfer([[0.9, 0.1, 0.2]]), "square"),
    (lambda: cl.forward_transfer(R_HAND, [0.1, 0.2]), "untrained model's accuracy"),
    (lambda: cl.accuracy_matrix(lambda i: None, lambda j: 0.0, 1), "at least 2 tasks"),
    (lambda: stream("adapters", scenario="class"), "needs the task id"),
    (lambda: stream("replay", setting=-3), "buffer size >= 0"),
    (lambda: stream("ewc", setting=-1.0), "lambda >= 0"),
    (lambda: stream("rehearsal"), "unknown method"),
    (lambda: stream("naive", scenario="domain"), "unknown scenario"),
    (lambda: cl.classifier_fisher(torch.nn.Linear(2, 2).requires_grad_(False), torch.randn(3, 2)),
     "no trainable parameters"),
    (lambda: cl.diagonal_fisher(torch.nn.Linear(2, 2), []), "no examples"),
]


@pytest.mark.parametrize("call, match", BAD_CALLS)
def test_mistakes_raise_a_message_that_names_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_ewc_consolidate_needs_the_fisher_of_the_same_model():
    with pytest.raises(ValueError, match="no entry for trainable parameters"):
        cl.EWCPenalty(1.0).consolidate(torch.nn.Linear(2, 2), {"weight": torch.ones(2, 2)})


# ------------------------------------------------------------------------------ the shipped record

RECORD_SHA256 = "fa424240d4e56a6f4fb6ec0f96ca4ee25b54b4e8f2e616c26301ba9218a9ac87"


def test_the_shipped_full_profile_record_is_complete_and_its_checks_hold():
    rows, _ = read_record("continual", RECORD_SHA256)
    news = rows[rows["stream"] == "news"].pivot_table(index=["scenario", "method"], columns="metric", values="value")
    naive = news.loc[("class", "naive fine-tuning"), "BWT"]
    assert naive <= -20
    replay = news.loc["class"].filter(like="replay", axis=0)["BWT"].max()
    assert 1 - replay / naive >= 0.5
    ins = rows[(rows["stream"] == "instructions") & rows["metric"].isin(["ACC", "BWT", "FWT"])]
    ins = ins.pivot_table(index="method", columns="metric", values="value")
    assert abs(ins.loc["one adapter per task", "BWT"]) <= 0.5
    naive_ins = ins.loc["naive fine-tuning"]
    assert naive_ins["BWT"] <= -20
    remedies = ins[ins.index.str.startswith(("replay", "EWC")) & (ins["ACC"] > naive_ins["ACC"])]
    assert (1 - remedies["BWT"] / naive_ins["BWT"]).max() >= 0.5  # a remedy that still learns
    matrix = rows[(rows["stream"] == "instructions") & (rows["method"] == "one adapter per task")
                  & rows["metric"].str.startswith("R[")].set_index("metric")["value"]
    assert matrix["R[2,0]"] == matrix["R[0,0]"] and matrix["R[2,1]"] == matrix["R[1,1]"]
