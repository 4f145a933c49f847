"""Exercises for notebook 06 · Parameter-efficient fine-tuning.

* `06.ffn-targets`: choose `target_modules` that adapt only the feed-forward layers of BERT.
* `06.lora-count`: predict how many parameters LoRA adds to MiniLM.
* `06.merge`: merge a LoRA update into the weight matrix.
* `06.slow-head`: predict, then measure: LoRA with its fresh head at LoRA's own learning rate.
"""

from __future__ import annotations

import numbers

import torch

from llm_tutorial.exercises import direction_check, exercise

# MiniLM: 6 layers, hidden size 384, feed-forward size 1536.
MINILM = {"layers": 6, "hidden": 384, "intermediate": 1536}


def _tiny_bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    return BertModel(config)


def _check_ffn_targets(target_modules) -> str | None:
    from llm_tutorial.peft_methods import find_modules

    if not isinstance(target_modules, (str, list, tuple)):
        return "give a list of module names, or one regular expression as a string"
    model = _tiny_bert()
    expected = {f"encoder.layer.{i}.{part}.dense" for i in range(2)
                for part in ("intermediate", "output")}
    try:
        got = set(find_modules(model, target_modules))
    except (TypeError, ValueError) as error:
        return f"find_modules rejected it: {error}"
    if got == expected:
        return None
    extra, missing = sorted(got - expected), sorted(expected - got)
    if any("attention.output" in name for name in extra):
        return ("you also selected attention.output.dense: the name 'output.dense' is a suffix of "
                "both; use a regular expression such as r'.*layer\\.\\d+\\.output\\.dense' for the "
                "feed-forward output")
    if missing:
        return f"you missed {missing[:2]}: each layer has two feed-forward linears"
    return f"you selected modules outside the feed-forward block: {extra[:3]}"


@exercise("06.ffn-targets", "Give target_modules (a list of names, or one regular expression) "
          "that select exactly the two feed-forward linear layers of every BERT layer: "
          "intermediate.dense and the layer's own output.dense (not attention.output.dense).",
          _check_ffn_targets, wrong_answer=["intermediate.dense", "output.dense"],
          answer_is_value=True)
def ffn_targets_solution():
    return r".*layer\.\d+\.(intermediate|output)\.dense"


def _check_lora_count(answer) -> str | None:
    if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
        return f"give a whole number of parameters, got {answer!r}"
    layers, d = MINILM["layers"], MINILM["hidden"]
    right = layers * 2 * 4 * (d + d)
    if answer == right:
        return None
    if answer == layers * 2 * 4 * d:
        return "count both matrices: A is r x in_features and B is out_features x r"
    if answer == 2 * 4 * (d + d):
        return "that is one layer; MiniLM has 6"
    if answer == layers * 2 * d * d:
        return "that is the size of the full query and value matrices; LoRA adds r (in + out) each"
    return "per adapted matrix r * (in_features + out_features); 2 matrices per layer, 6 layers"


@exercise("06.lora-count", "How many trainable parameters does LoRA with r = 4 on the query and "
          "value projections (each 384 x 384) of MiniLM's 6 layers add?", _check_lora_count,
          wrong_answer=6 * 2 * 4 * 384, answer_is_value=True)
def lora_count_solution():
    layers, hidden, r = MINILM["layers"], MINILM["hidden"], 4
    per_matrix = r * hidden + hidden * r  # A: r x in, B: out x r
    return layers * 2 * per_matrix


def _merge_inputs():
    generator = torch.Generator().manual_seed(5)
    W = torch.randn(6, 5, generator=generator)
    A = torch.randn(2, 5, generator=generator)
    B = torch.randn(6, 2, generator=generator)
    return W, A, B


def _check_merge(my_merge) -> str | None:
    if not callable(my_merge):
        return "pass the function itself, `my_merge`, not a value"
    W, A, B = _merge_inputs()
    got = my_merge(W.clone(), A.clone(), B.clone(), 4.0, 2)
    if got is None:
        return "your function returned None: return the merged weight tensor"
    if not isinstance(got, torch.Tensor) or got.shape != W.shape:
        return f"return a tensor shaped like W, {tuple(W.shape)}; got {getattr(got, 'shape', got)}"
    if torch.allclose(got, W + 2.0 * B @ A, atol=1e-5):
        return None
    if torch.allclose(got, W + B @ A, atol=1e-5):
        return "scale the update by alpha / r"
    if torch.allclose(got, W + 4.0 * B @ A, atol=1e-5):
        return "the scale is alpha / r, not alpha"
    return "the merged weight is W + (alpha / r) * B @ A (B is out x r, A is r x in)"


@exercise("06.merge", "Write my_merge(W, A, B, alpha, r): the weight of the plain linear layer "
          "that computes what LoRALinear computes.", _check_merge,
          wrong_answer=lambda W, A, B, alpha, r: W + B @ A)
def merge_solution(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, r: int
                   ) -> torch.Tensor:
    return W + (alpha / r) * (B @ A)


def _check_slow_head(answer) -> str | None:
    return direction_check(answer, "lower", (
        "the head starts from random numbers and sees 30 steps; at a third of the rate it "
        "ends far from where it should be, whatever LoRA does below it: run the cell and look"))


@exercise("06.slow-head", "Predict, then measure: in section 4 every method's fresh head trains "
          "at 3e-3. Trained for 30 steps on a 2-layer MiniLM with its head at 1e-3 (LoRA's own "
          'rate) instead, will LoRA r=8 on all linear layers score "higher", "lower" or "same" '
          "(within 2 points) on the test headlines?", _check_slow_head, wrong_answer="same",
          answer_is_value=True)
def slow_head_solution() -> str:
    # The head is a fresh 384 x 5 matrix; everything the encoder learns reaches the labels
    # through it. At 1e-3 it moves a third as far per step, so after 30 steps its decision
    # boundaries are still close to random: accuracy drops by several points (about 9 here).
    return "lower"
