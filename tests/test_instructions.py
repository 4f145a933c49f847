"""Tests for `llm_tutorial.instructions`: the generated, verifiable instruction set."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_tutorial import instructions as ins
from llm_tutorial.instructions import Record


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
    with pytest.raises(ValueError, match="templates must be one of"):
        next(ins.stream(templates="test"))


def test_family_split_is_disjoint_reproducible_and_covers_kinds():
    train, held = ins.split_families(8, seed=0)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(ins.FAMILIES)
    assert len(held) == 8 and ins.split_families(8, seed=0) == (train, held)
    assert len({ins.FAMILIES[n].kind for n in held}) == 8
    with pytest.raises(ValueError, match="n_heldout"):
        ins.split_families(0)


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown instruction family 'reverse'.*reverse_word"):
        ins.get_family("reverse")
    with pytest.raises(KeyError, match="known families"):
        ins.take(1, ["add", "nope"])
    with pytest.raises(ValueError, match="families is empty"):
        ins.take(1, [])


def test_records_from_dicts_and_vendored_set():
    records = ins.load_vendored_records()
    assert len(records) == 1100 and all(r.family == "alpaca" for r in records)
    with pytest.raises(KeyError, match="record 1 lacks \\['output'\\]"):
        ins.records_from_dicts([{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    with pytest.raises(TypeError, match="record 0: output must be a string, got int"):
        ins.records_from_dicts([{"instruction": "a", "output": 3}])
    with pytest.raises(TypeError, match="record 0 is a str"):
        ins.records_from_dicts(["x"])


def test_render_alpaca_and_chat():
    record = Record("Add the numbers.", "2 + 3", "5")
    text = ins.render_alpaca(record)
    assert "### Instruction:\nAdd the numbers." in text and "### Input:\n2 + 3" in text
    assert text.endswith("### Response:\n5") and ins.render_alpaca(record, False).endswith("### Response:\n")

    class Tok:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return json.dumps([messages, add_generation_prompt])

    messages, gen = json.loads(ins.render_chat(Tok(), record, with_answer=False))
    assert messages == [{"role": "user", "content": "Add the numbers.\n\n2 + 3"}] and gen is True
    messages, gen = json.loads(ins.render_chat(Tok(), record))
    assert messages[-1] == {"role": "assistant", "content": "5"} and gen is False
