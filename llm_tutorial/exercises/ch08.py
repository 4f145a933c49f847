"""Exercises for notebook 08 · Preference alignment.

* `08.dpo-identical`: predict, then run: the DPO loss of a pair whose chosen and rejected
  answers are the same text.
* `08.advantage-signs`: the sign of each answer's GRPO advantage (rewards standardised
  within each prompt's group).
* `08.beta-kl`: predict, then compare with the recorded sweep: how far DPO moves the policy
  from the reference as β grows.
* `08.hack-proof-reward`: write a reward that an answer listing every candidate cannot game.
"""

from __future__ import annotations

import inspect
import math
import numbers

import torch
import torch.nn.functional as F

from llm_tutorial.exercises import direction_check, exercise


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# ------------------------------------------------------------------------------ 08.dpo-identical


def _check_dpo_identical(answer) -> str | None:
    if not _is_number(answer) or not math.isfinite(answer):
        return "answer with a number (a loss in nats), e.g. my_loss = 1.5"
    if abs(answer - math.log(2)) <= 0.01:
        return None
    if abs(answer) <= 0.01:
        return ("the loss is −log σ(0), not 0: σ(0) = 1/2, so even a pair the policy cannot "
                "tell apart costs something")
    if abs(answer - 0.5) <= 0.01:
        return "that is σ(0), the probability the pair is ranked right; the loss is its negative log"
    if answer < 0:
        return "σ lies between 0 and 1, so −log σ is never negative"
    return ("with the same text, the chosen and the rejected log-ratios are equal: work out what "
            "lies inside σ(·), then take −log of σ of it (natural logarithm)")


@exercise("08.dpo-identical", "Predict, then run: a preference pair whose chosen and rejected "
          "answers are the same text. What is its DPO loss, −log σ(β[(log π(y_w|x) − "
          "log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]), whatever the policy and β? "
          "(a number; ±0.01 is accepted)", _check_dpo_identical, wrong_answer=0.0,
          answer_is_value=True)
def dpo_identical_solution() -> float:
    logp, ref_logp, beta = torch.tensor(-12.3), torch.tensor(-10.1), 0.1  # any policy, any β
    # y_w and y_l are the same text, so both bracketed log-ratios are the same number
    margin = beta * ((logp - ref_logp) - (logp - ref_logp))  # = 0
    return -F.logsigmoid(margin).item()  # −log σ(0) = −log 1/2 = ln 2 ≈ 0.693


# ------------------------------------------------------------------------------ 08.advantage-signs

ADV_REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
ADV_GROUP = 4  # answers sampled per prompt: two prompts, one group each


def _group_signs(rewards: list[float], group: int) -> list[int]:
    signs = []
    for start in range(0, len(rewards), group):
        chunk = rewards[start:start + group]
        mean = sum(chunk) / len(chunk)
        signs += [(r > mean) - (r < mean) for r in chunk]
    return signs


def _check_advantage_signs(answer) -> str | None:
    form = "give a list of eight numbers, each 1, 0 or -1, e.g. [1, 0, -1, 0, 1, 0, -1, 0]"
    if isinstance(answer, (str, bytes)) or callable(answer):
        return form
    try:
        items = list(answer)
        if any(isinstance(v, (str, bytes)) for v in items):
            return form
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        return form
    if len(values) != len(ADV_REWARDS):
        return (f"give eight values, one per sampled answer ({len(ADV_REWARDS) // ADV_GROUP} "
                f"prompts x {ADV_GROUP} answers); got {len(values)}")
    if any(v not in (1.0, 0.0, -1.0) for v in values):
        return "give the sign of each advantage (1, 0 or -1), not the advantages themselves"
    right = _group_signs(ADV_REWARDS, ADV_GROUP)
    if values == right:
        return None
    if values == _group_signs(ADV_REWARDS, len(ADV_REWARDS)):
        return ("standardise within each prompt's group, not over the whole batch: the second "
                "group's answers all scored the same")
    if values == [-s for s in right]:
        return "an answer rewarded above its group's mean has a positive advantage, not a negative one"
    return (f"take the rewards {ADV_GROUP} at a time (one group per prompt) and compare each reward "
            "with its own group's mean: dividing by the group's standard deviation never changes a sign")


@exercise("08.advantage-signs", f"GRPO standardises the rewards within each group of answers to "
          f"the same prompt. Two prompts, {ADV_GROUP} sampled answers each, rewards ADV_REWARDS = "
          f"{ADV_REWARDS}. Give the sign of each answer's advantage, a list of eight numbers from "
          "{1, 0, -1}.", _check_advantage_signs, wrong_answer=[1, -1, -1, -1, 1, 1, 1, 1],
          answer_is_value=True)
def advantage_signs_solution() -> list[int]:
    rewards = torch.tensor(ADV_REWARDS).view(-1, ADV_GROUP)  # one row per prompt
    # (reward − group mean) / group std: the std is positive, so the sign is that of r − mean;
    # a group whose answers all score the same gets 0 everywhere (it carries no signal)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return torch.sign(centred).flatten().int().tolist()


# ------------------------------------------------------------------------------ 08.beta-kl


def _check_beta_kl(answer) -> str | None:
    return direction_check(answer, "lower", (
        "the implicit reward is β · log π/π_ref: think about how large log π/π_ref must become "
        "before the loss of a pair is small when β is large, and when β is small; then compare "
        "with the recorded sweep"))


@exercise("08.beta-kl", "Predict, then compare with the recorded sweep: DPO is trained for the "
          "same number of steps with β = 0.05, 0.1 and 0.5. As β grows, is the policy's KL "
          'divergence from the reference after training "higher", "lower" or "same"?',
          _check_beta_kl, wrong_answer="higher", answer_is_value=True)
def beta_kl_solution() -> str:
    # The loss is −log σ(margin) with margin = β × (difference of the log-ratios log π/π_ref).
    # A larger β reaches the same margin, hence the same small loss, with a smaller log-ratio:
    # the loss stops pushing earlier, and the policy stays closer to the reference.
    return "lower"


# ------------------------------------------------------------------------------ 08.hack-proof-reward

# (answer, reference, expected reward) for the family "Which is larger: 57 or 83?"
_REWARD_CASES = [("83", "83", 1.0), ("The larger number is 83.", "83", 1.0),
                 ("83 is larger", "83", 1.0), ("57 or 83", "83", 0.0), ("83 or 57", "83", 0.0),
                 ("57", "83", 0.0), ("830", "83", 0.0), ("", "83", 0.0), ("8 3", "83", 0.0),
                 ("1,083", "83", 0.0), ("83.", "83", 1.0), ("It is 83, not 57.", "83", 0.0)]
_LISTS_EVERY_CANDIDATE = {"57 or 83", "83 or 57", "It is 83, not 57."}
_SUBSTRINGS = {"830", "1,083"}


def _check_hack_proof_reward(my_reward) -> str | None:
    if not callable(my_reward):
        return "pass the function itself, `my_reward`, not a value"
    try:
        inspect.signature(my_reward).bind("83", "83")
    except TypeError:
        return "my_reward must take two arguments, (answer, reference)"
    except ValueError:  # no signature to read (a builtin): let the calls below tell
        pass
    failures = []  # (answer, reference, expected, got)
    for answer, reference, expected in _REWARD_CASES:
        try:
            got = my_reward(answer, reference)
        except Exception as error:  # a reward sees arbitrary model text: it must not raise
            return (f"my_reward({answer!r}, {reference!r}) raised {type(error).__name__}: a reward "
                    f"must never raise on model text; return 0.0 for text it cannot read")
        if not isinstance(got, numbers.Real):
            return (f"my_reward({answer!r}, {reference!r}) returned {got!r}: return a number, "
                    f"1.0 or 0.0")
        if got != expected:
            failures.append((answer, reference, expected, got))
    if not failures:
        return None
    if any(a in _LISTS_EVERY_CANDIDATE and e == 0.0 for a, _, e, _ in failures):
        return ("an answer that lists every candidate must score 0: count the numbers in the "
                "answer, not only whether the reference is among them")
    if any(a in _SUBSTRINGS for a, _, _, _ in failures):
        return ("match whole numbers, not substrings: '830' and '1,083' contain the characters "
                "'83' but are other numbers")
    answer, reference, expected, got = failures[0]
    return (f"my_reward({answer!r}, {reference!r}) returned {got!r}, expected {expected}: read "
            "every number in the answer (commas as thousands separators) and reward only an "
            "answer whose numbers are exactly the reference")


@exercise("08.hack-proof-reward", "Write my_reward(answer, reference) -> float for the family "
          "\"Which is larger: 57 or 83?\" (reference \"83\"): 1.0 when the answer names the "
          "reference number and no other number, 0.0 otherwise, and never an exception. The "
          "loose \"contains\" reward gives 1.0 to \"57 or 83\", which a policy learns to exploit.",
          _check_hack_proof_reward, wrong_answer=lambda answer, reference: float(reference in answer))
def hack_proof_reward_solution(answer, reference) -> float:
    import re

    if not isinstance(answer, str):
        return 0.0
    numbers_found = []
    for token in re.findall(r"\d[\d,]*(?:\.\d+)?", answer):
        token = token.rstrip(".,").replace(",", "")  # "83," ends a clause; "1,083" is 1083
        numbers_found.append(float(token))
    try:
        target = float(str(reference).replace(",", ""))
    except ValueError:
        return 0.0
    # exactly one number, the reference: "57 or 83" names two, "830" and "8 3" are not 83
    return 1.0 if numbers_found == [target] else 0.0
