"""Tests for `llm_tutorial.instructions`: the generated, verifiable instruction set."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest
import torch
from chat_models import SFT_RECORDS, SFT_WORDS, tiny_llama, word_chat_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_tutorial import chat
from llm_tutorial import instructions as ins
from llm_tutorial import peft_methods as pm
from llm_tutorial.chat import Record


def test_there_are_at_least_forty_families_with_five_templates_each():
    assert len(ins.FAMILIES) >= 40
    for family in ins.FAMILIES.values():
        assert len(family.templates) >= 5 and len(set(family.templates)) == len(family.templates)
        assert family.verifier in ins.VERIFIERS
    assert {"string", "arithmetic", "list", "dates", "units", "format", "logic", "refusal",
            "text"} <= set(ins.KINDS)


@pytest.mark.parametrize("name", sorted(ins.FAMILIES))
def test_every_solver_passes_its_own_verifier(name):
    records = ins.take(1000, [name], seed=7, templates="all") if name not in SMALL else \
        ins.take(SMALL[name], [name], seed=7, templates="all")
    assert all(ins.verify(r.output, r) for r in records)
    assert all(r.family == name and "{x}" not in r.instruction for r in records)


# Families whose input space holds fewer than 1,000 distinct (template, input) pairs.
SMALL = {"first_letter": 200, "last_letter": 200, "reverse_word": 200, "reverse_letters": 200,
         "sort_letters": 200, "remove_vowels": 200, "count_vowels": 200, "word_length": 200,
         "parity": 1000, "boolean_and": 16, "is_palindrome": 200, "square": 100,
         "hours_to_minutes": 100, "km_to_m": 400, "celsius_to_fahrenheit": 250,
         "refuse_divide_by_zero": 1000, "multiply": 500, "divide": 500,
         "weekday_after": 300, "month_after": 500, "repeat_word": 500}


def _wrong(record: Record) -> str:
    out = record.output
    if record.family == "add":
        return str(int(out) + 1)
    if record.family == "sort_numbers":
        return ", ".join(reversed(out.split(", ")))
    if record.family == "kv_to_json":
        data = json.loads(out)
        return json.dumps({**data, "age": data["age"] + 1})
    if record.family == "weekday_after":
        return "Monday" if out != "Monday" else "Tuesday"
    return "no" if out == "yes" else "yes"


def test_yes_no_families_say_yes_about_half_the_time():
    """Otherwise a model that answers "no" to everything would score as if it had a skill."""
    rng = random.Random(0)
    yes_no = [f for f in ins.FAMILIES.values()
              if {f.solve(f.sample(random.Random(i))) for i in range(200)} == {"yes", "no"}]
    assert {"leap_year", "contains_letter", "is_palindrome"} <= {f.name for f in yes_no}
    for family in yes_no:
        answers = [family.solve(family.sample(rng)) for _ in range(2000)]
        assert 0.4 < answers.count("yes") / len(answers) < 0.6, family.name


def test_title_case_capitalises_words_that_open_with_a_quote():
    """A headline word such as 'las (in 'las vegas') starts with its first letter, not the quote."""
    family, rng = ins.get_family("bbc_title_case"), random.Random(0)
    quoted = 0
    for _ in range(2000):
        for word in family.solve(family.sample(rng)).split(" "):
            first = re.search(r"\w", word)
            assert first is None or not first[0].islower(), word
            quoted += word[:1] in ("'", '"')  # not `in "'\""`: an empty word would count
    assert quoted > 10  # the headlines hold such words, so the check above is not empty
    assert ins._capitalise_words("jowell rejects 'las vegas' jibe") == "Jowell Rejects 'Las Vegas' Jibe"


@pytest.mark.parametrize("name", ["add", "sort_numbers", "kv_to_json", "weekday_after", "leap_year"])
def test_wrong_answers_fail(name):
    for record in ins.take(50, [name], seed=1):
        assert not ins.verify(_wrong(record), record)
        assert not ins.verify("", record) and not ins.verify(None, record)


def test_verifiers_accept_reasonable_variants():
    assert ins.verify("The answer is 42.", Record("q", "", "42", verifier="numeric"))
    assert ins.verify("  Monday. ", Record("q", "", "monday", verifier="normalised"))
    assert ins.verify("[3, 5, 9]", Record("q", "", "3, 5, 9", verifier="list"))
    assert ins.verify('Here: {"a": 1, "b": "x"}', Record("q", "", '{"b": "x", "a": 1}', verifier="json"))
    assert ins.verify("Sorry, I cannot do that.", Record("q", "", "no", verifier="refusal"))
    assert not ins.verify("4", Record("q", "", "42", verifier="numeric"))
    assert not ins.verify("9, 5, 3", Record("q", "", "3, 5, 9", verifier="list"))
    assert not ins.verify("Sure: 7", Record("q", "", "no", verifier="refusal"))


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(sorted(ins.FAMILIES)))
def test_verifiers_never_crash_on_arbitrary_text(text, name):
    record = ins.take(1, [name], seed=3)[0]
    assert ins.verify(text, record) in (True, False)


def test_stream_is_reproducible_and_distinct():
    a, b = ins.take(500, seed=11), ins.take(500, seed=11)
    assert a == b
    assert ins.take(500, seed=12) != a
    assert len({(r.instruction, r.input) for r in a}) == 500
    assert len({r.family for r in ins.take(2000, seed=0)}) == len(ins.FAMILIES)


def test_template_splits_are_disjoint():
    train = ins.take(2000, seed=0, templates="train")
    held = ins.take(500, seed=0, templates="heldout")
    for r in train:
        assert r.template < len(ins.FAMILIES[r.family].templates) - 1
    for r in held:
        assert r.template == len(ins.FAMILIES[r.family].templates) - 1


def test_family_split_is_disjoint_reproducible_and_covers_kinds():
    train, held = ins.split_families(8, seed=0)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(ins.FAMILIES)
    assert len(held) == 8 and ins.split_families(8, seed=0) == (train, held)
    assert len({ins.FAMILIES[n].kind for n in held}) == 8


def test_the_vendored_set_loads_as_records():
    records = ins.load_vendored_records()
    assert len(records) == 1100 and all(r.family == "alpaca" for r in records)


# ------------------------------------------------------------------------------ packing, tuning
# A word-level chat tokenizer and a tiny random Llama (`chat_models.py`): fast and offline.


@pytest.fixture(scope="module")
def tok():
    return word_chat_tokenizer(SFT_WORDS)


def test_pack_makes_as_many_rows_as_the_exercise_says():
    from llm_tutorial.exercises import ch07

    examples = [chat.Example(tuple(range(1, n + 1)), (-100,) + tuple(range(2, n + 1)))
                for n in ch07.PACK_LENGTHS]
    rows = chat.pack(examples, ch07.PACK_ROW, 0)["input_ids"].shape[0]
    assert rows == ch07.pack_rows_solution() == 5


# ------------------------------------------------------------------------------ answering, scoring


def test_score_applies_each_verifier():
    records = [Record("q", "", "42", "add", "arithmetic", verifier="numeric"),
               Record("q", "", "paris", "capital", "text", verifier="normalised")]
    table = ins.score(records, ["It is 42.", "London"])
    assert table["correct"].tolist() == [True, False]
    assert list(table.columns[:2]) == ["family", "kind"]


def test_family_breakdown_tells_a_habit_from_a_skill():
    years = [Record(f"Is {y} a leap year?", "", "yes" if y % 4 == 0 else "no", "leap_year",
                    verifier="normalised") for y in (2001, 2002, 2003, 2004)]
    words = [Record(f"First letter of {w}?", "", w[0], "first_letter", verifier="normalised")
             for w in ("apple", "bread", "cat")]
    table = ins.score(years + words, ["No.", "no", " NO ", "no", "a", "b", "x"])
    out = ins.family_breakdown(table)
    assert out.index.tolist() == ["leap_year", "first_letter"]  # order of first appearance
    habit, skill = out.loc["leap_year"], out.loc["first_letter"]
    assert habit["records"] == 4 and habit["exact match"] == 0.75
    assert habit["top answer"] == "no" and habit["top share"] == 1.0  # "No." and " NO " count
    assert habit["constant exact match"] == 0.75 and habit["above constant"] == 0.0
    assert skill["exact match"] == pytest.approx(2 / 3) and skill["top answer"] == "a"  # tie: first
    assert skill["constant exact match"] == pytest.approx(1 / 3)
    assert skill["above constant"] == pytest.approx(1 / 3)
    exact = ins.score([Record("Shout: hi", "", "HI", "uppercase", verifier="exact")] * 2, ["HI", "HI"])
    assert ins.family_breakdown(exact).loc["uppercase", "constant exact match"] == 1.0  # as written


def test_evaluation_splits_ask_three_questions():
    train, held = ins.split_families(8, seed=0)
    splits = ins.evaluation_splits(train, held, 30)
    assert list(splits) == ["training families", "held-out templates", "held-out families"]
    seen, new_wording, unseen = splits.values()
    assert {r.family for r in seen + new_wording} <= set(train)
    assert {r.family for r in unseen} <= set(held)
    assert all(r.template < len(ins.FAMILIES[r.family].templates) - 1 for r in seen)
    assert all(r.template == len(ins.FAMILIES[r.family].templates) - 1 for r in new_wording)
    assert seen == ins.take(30, train, seed=101)  # seeds apart from the training stream's 0
    assert splits == ins.evaluation_splits(train, held, 30)


def test_evaluate_splits_scores_each_split_as_one_pass_would(tok):
    model = tiny_llama(tok)
    splits = {"a": SFT_RECORDS[:2], "b": SFT_RECORDS[2:5]}
    tables = ins.evaluate_splits(model, tok, splits, max_new_tokens=3, batch_size=2)
    assert list(tables) == ["a", "b"] and [len(t) for t in tables.values()] == [2, 3]
    together = ins.answer_and_score(model, tok, SFT_RECORDS[:5], 3, batch_size=2)
    assert tables["b"]["prediction"].tolist() == together["prediction"].tolist()[2:]
    assert tables["b"].index.tolist() == [0, 1, 2] and set(tables["a"]["split"]) == {"a"}


def test_answers_and_nll_in_one_pass_match_the_two_passes(tok):
    model = tiny_llama(tok)
    records = SFT_RECORDS * 2  # prompts of several lengths, sharing the chat template's start
    answers, pairs = ins.answers_and_nll(model, tok, records, max_new_tokens=4, batch_size=5)
    assert answers == chat.answer(model, tok, records, 4, batch_size=5)
    expected = chat.answer_nll(model, tok, records, batch_size=5, by_record=True)
    assert [n for _, n in pairs] == [n for _, n in expected]
    assert [v for v, _ in pairs] == pytest.approx([v for v, _ in expected], rel=1e-5)
    tables = ins.evaluate_splits(model, tok, {"a": records[:5], "b": records[5:]}, 4, batch_size=5,
                                 nll=True)  # greedy with nll: the one-pass path
    assert pd_list(tables, "prediction") == answers
    assert pd_list(tables, "answer NLL") == pytest.approx([v for v, _ in pairs], rel=1e-6)
    sampled = ins.answers_and_nll(model, tok, records, 4, batch_size=5, temperature=1.5, seed=3)
    assert sampled == ins.answers_and_nll(model, tok, records, 4, batch_size=5, temperature=1.5, seed=3)
    assert sampled[1] == pairs and sampled[0] != answers  # the same NLLs; hot sampling wanders
    hot = ins.evaluate_splits(model, tok, {"a": records}, 4, batch_size=5, nll=True, do_sample=True,
                              temperature=1.5, seed=3)
    assert hot["a"]["prediction"].tolist() == sampled[0]


def pd_list(tables, column):
    return [value for table in tables.values() for value in table[column]]


def test_majority_answer_is_the_constant_answer_baseline():
    years = [Record(f"Is {y} a leap year?", "", "yes" if y % 4 == 0 else "no", "leap_year",
                    verifier="normalised") for y in (2001, 2002, 2003, 2004)]
    # the answer is each family's most frequent one in its own stream, never the records' own
    top_year = Counter(r.output for r in ins._take_cycling(200, ["leap_year"], 0)).most_common(1)[0][0]
    assert ins.majority_answer_accuracy(years) == (0.75 if top_year == "no" else 0.25)
    refusals = ins.take(5, ["refuse_divide_by_zero"], seed=3)
    assert ins.majority_answer_accuracy(refusals) == 1.0  # one refusal answers them all
    words = ins.take(2, ["reverse_word"], seed=3)  # two different words: the records' own
    assert ins.majority_answer_accuracy(words) < 0.5  # majority would be right once by construction
    assert 0.4 < ins.majority_answer_accuracy(ins.take(100, ["leap_year"], seed=5)) < 0.6
    mixed = refusals + words
    assert ins.majority_answer_accuracy(mixed) == pytest.approx(
        (5 + 2 * ins.majority_answer_accuracy(words)) / 7)


def test_split_summary_reads_exact_match_majority_and_nll(tok):
    model = tiny_llama(tok)
    splits = {"a": ins.take(2, ["leap_year"], seed=1), "b": ins.take(3, ["reverse_word", "add"], seed=1)}
    tables = ins.evaluate_splits(model, tok, splits, max_new_tokens=3, batch_size=2, nll=True)
    assert {"answer NLL", "answer tokens"} <= set(tables["a"].columns)
    summary = ins.split_summary(tables)
    assert summary.index.tolist() == ["a", "b"] and summary["records"].tolist() == [2, 3]
    for name, records in splits.items():
        assert summary.loc[name, "answer NLL"] == pytest.approx(
            chat.answer_nll(model, tok, records), rel=1e-5)
        assert summary.loc[name, "exact match"] == tables[name]["correct"].mean()
        assert summary.loc[name, "majority answer"] == ins.majority_answer_accuracy(records)
    by_family = ins.split_summary(tables, by="family")
    assert by_family["records"].sum() == 5 and by_family.index.name == "family"
    plain = ins.split_summary(ins.evaluate_splits(model, tok, {"open": SFT_RECORDS[:2]}, 3))
    assert "answer NLL" not in plain.columns and "majority answer" not in plain.columns


def _open_records(n=50):
    return chat.records_from_dicts([{"instruction": f"Say {i}.", "output": str(i)} for i in range(n)])


def test_sft_mixture_shares_and_seeds():
    open_records = _open_records()
    train, _ = ins.split_families(8, seed=0)
    mix = ins.sft_mixture(train, 40, open_records, open_share=0.25, seed=3)
    assert len(mix) == 40 and sum(r.family == "alpaca" for r in mix) == 10
    assert {r.family for r in mix} - {"alpaca"} <= set(train)
    assert all(r.template < len(ins.FAMILIES[r.family].templates) - 1
               for r in mix if r.family != "alpaca")  # training templates only
    assert mix == ins.sft_mixture(train, 40, open_records, open_share=0.25, seed=3)
    assert mix != ins.sft_mixture(train, 40, open_records, open_share=0.25, seed=4)
    assert all(r.family != "alpaca" for r in ins.sft_mixture(train, 8, open_share=0))


# ------------------------------------------------------------------------------ tuning


def test_tune_trains_a_removable_lora(tok):
    model = tiny_llama(tok)
    wrapper = chat.AnswerOnlyLM(model)
    batch = chat.pad(chat.encode_sft(tok, SFT_RECORDS), tok.pad_token_id)
    with torch.no_grad():
        base_loss = wrapper(**batch).loss.item()
    history = ins.tune(model, tok, SFT_RECORDS * 4, steps=30, batch_size=2, lr=5e-2,
                       targets=["q_proj", "v_proj", "o_proj"], max_length=64, progress=False)
    assert len(pm.lora_modules(model)) == 6 and history["step"].iloc[-1] == 30
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora" not in n)
    with torch.no_grad():
        assert wrapper(**batch).loss.item() < base_loss - 0.2  # 3.81 -> 3.50 when written
    pm.remove_lora(model)
    with torch.no_grad():
        assert wrapper(**batch).loss.item() == pytest.approx(base_loss, abs=1e-6)


def test_family_subsets_are_nested_and_mix_kinds():
    train, _ = ins.split_families(8, seed=0)
    subsets = ins.family_subsets(train, [1, 4, 8, len(train)], seed=0)
    assert [len(s) for s in subsets.values()] == [1, 4, 8, len(train)]
    assert subsets[4] == subsets[8][:4] and sorted(subsets[len(train)]) == sorted(train)
    assert len({ins.FAMILIES[n].kind for n in subsets[8]}) == 8


def test_generalisation_curve_runs_and_restores_the_model(tok):
    model = tiny_llama(tok)
    train, held = ins.split_families(8, seed=0)
    evaluation = ins.take(4, held, seed=1, templates="all")
    curve = ins.generalisation_curve(model, tok, train, evaluation, [1, 3], steps=2, examples=8,
                                     batch_size=2, max_length=128, max_new_tokens=3,
                                     progress=False)
    assert curve["families"].tolist() == [1, 3] and curve["accuracy"].between(0, 1).all()
    assert (curve["answer NLL"] > 0).all()
    assert not pm.lora_modules(model)


def test_small_families_are_cycled_for_the_curve():
    records = ins._take_cycling(40, ["boolean_and"], seed=0)
    assert len(records) == 40 and len(set(records)) == 16


# ------------------------------------------------------------------------------ mistakes

TRAIN, HELD = ins.split_families(8, seed=0)


def _lora_llama(tok):
    model = tiny_llama(tok)
    pm.inject_lora(model, ["q_proj"], r=2)
    return model


BAD_CALLS = [  # (call(tok), error, message): each mistake is named, with its fix
    (lambda tok: ins.get_family("reverse"), KeyError,
     "unknown instruction family 'reverse'; known families: .*reverse_word"),
    (lambda tok: ins.take(1, ["add", "nope"]), KeyError, "unknown instruction family 'nope'"),
    (lambda tok: ins.family_subsets(["nope"], [1]), KeyError, "unknown instruction family 'nope'"),
    (lambda tok: ins.majority_answer_accuracy([Record("name a colour", "", "red", "alpaca")]),
     KeyError, "unknown instruction family 'alpaca'"),  # no stream to find its usual answer in
    (lambda tok: ins.take(1, []), ValueError, "families is empty"),
    (lambda tok: next(ins.stream(templates="test")), ValueError,
     r"templates must be one of \('train', 'heldout', 'all'\), got 'test'"),
    (lambda tok: ins.verify("x", Record("q", "", "a", verifier="exactly")), KeyError,
     "unknown verifier 'exactly'; known: .*'exact'"),
    (lambda tok: ins.split_families(0), ValueError, r"n_heldout must be in \[1, \d+\], got 0"),
    (lambda tok: ins.split_families(len(ins.FAMILIES)), ValueError, "n_heldout must be in"),
    (lambda tok: ins.score(SFT_RECORDS[:2], ["42"]), ValueError,
     "1 predictions for 2 records: pass one answer per record"),
    (lambda tok: ins.evaluation_splits(TRAIN, HELD + ["add"], 5), ValueError,
     r"families \['add'\] are both trained on and held out"),
    (lambda tok: ins.evaluate_splits(None, tok, {"a": SFT_RECORDS[:1], "b": []}), ValueError,
     r"splits \['b'\] have no records"),
    (lambda tok: ins.answers_and_nll(None, tok, SFT_RECORDS, temperature=-1.0), ValueError,
     "temperature must be >= 0"),
    (lambda tok: ins.sft_mixture(TRAIN, 400, _open_records(), open_share=0.25), ValueError,
     "open_share=0.25 of 400 records needs 100 open-ended records, 50 given"),
    (lambda tok: ins.sft_mixture(TRAIN, 40, _open_records(), open_share=1.0), ValueError,
     r"keep open_share in \[0, 1\)"),
    (lambda tok: ins.tune(_lora_llama(tok), tok, SFT_RECORDS, steps=1, progress=False), ValueError,
     "already has LoRA layers: call peft_methods.remove_lora"),
    (lambda tok: ins.family_subsets(TRAIN, [0]), ValueError, r"counts must be in \[1, \d+\], got \[0\]"),
    (lambda tok: ins.family_subsets(TRAIN, [len(TRAIN) + 1]), ValueError, "counts must be in"),
    (lambda tok: ins.generalisation_curve(None, tok, TRAIN, ins.take(2, TRAIN[:1]), [1], steps=1),
     ValueError, "eval_records come from training families .* evaluate on held-out families"),
]


@pytest.mark.parametrize("call, error, match", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_mistakes_are_named_with_their_fix(tok, call, error, match):
    with pytest.raises(error, match=match):
        call(tok)
