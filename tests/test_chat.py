"""Tests for `llm_tutorial.chat`: records, chat rendering, SFT encoding, padding and packing, the
answer-only loss, answer NLL and generation, on a word-level chat tokenizer and a tiny random Llama
(fast, offline, and enough to check the token bookkeeping; `chat_models.py`)."""

from __future__ import annotations

import json

import pytest
import torch
from chat_models import SFT_RECORDS, SFT_WORDS, tiny_llama, word_chat_tokenizer
from transformers import BertConfig, BertForMaskedLM

from llm_tutorial import chat
from llm_tutorial.chat import Record


@pytest.fixture(scope="module")
def tok():
    return word_chat_tokenizer(SFT_WORDS)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------ records, rendering


def test_records_from_dicts():
    [record] = chat.records_from_dicts([{"instruction": "a", "output": "b"}])
    assert record == Record("a", "", "b", "alpaca", "open-ended")
    [record] = chat.records_from_dicts([{"instruction": "a", "input": "c", "output": "b"}], "mine")
    assert record == Record("a", "c", "b", "mine", "open-ended")


def test_render_alpaca_and_chat():
    record = Record("Add the numbers.", "2 + 3", "5")
    text = chat.render_alpaca(record)
    assert "### Instruction:\nAdd the numbers." in text and "### Input:\n2 + 3" in text
    assert text.endswith("### Response:\n5") and chat.render_alpaca(record, False).endswith("### Response:\n")

    class Tok:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return json.dumps([messages, add_generation_prompt])

    messages, gen = json.loads(chat.render_chat(Tok(), record, with_answer=False))
    assert messages == [{"role": "user", "content": "Add the numbers.\n\n2 + 3"}] and gen is True
    messages, gen = json.loads(chat.render_chat(Tok(), record))
    assert messages[-1] == {"role": "assistant", "content": "5"} and gen is False


def test_chat_prompt_ends_where_the_answer_begins(tok):
    prompt = chat.chat_prompt(tok, "say hi", "hello")
    assert prompt == "<|im_start|>user\nsay hi\n\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert prompt == chat.render_chat(tok, Record("say hi", "hello", "anything"), with_answer=False)


# ------------------------------------------------------------------------------ SFT examples


def test_encode_sft_masks_the_prompt_and_ends_with_end_of_turn(tok):
    examples = chat.encode_sft(tok, SFT_RECORDS)
    for record, example in zip(SFT_RECORDS, examples, strict=True):
        prompt = _ids(tok, chat.render_chat(tok, record, with_answer=False))
        assert list(example.input_ids) == _ids(tok, chat.render_chat(tok, record))
        assert list(example.labels[:len(prompt)]) == [-100] * len(prompt)
        answer = list(example.labels[len(prompt):])
        assert answer == list(example.input_ids[len(prompt):]) and -100 not in answer
        assert tok.decode(answer).startswith(record.output.replace("or", "<unk>"))
        assert tok.convert_ids_to_tokens(answer).count("<|im_end|>") == 1
        assert not example.truncated and len(example) == len(example.input_ids)
    unmasked = chat.encode_sft(tok, SFT_RECORDS, mask_prompt=False)
    for masked, full in zip(examples, unmasked, strict=True):
        assert full.input_ids == masked.input_ids
        assert full.labels[0] == -100 and full.labels[1:] == full.input_ids[1:]


def test_encode_sft_alpaca_format_and_dict_records(tok):
    [example] = chat.encode_sft(tok, [{"instruction": "say hi", "output": "hello"}], fmt="alpaca")
    text = tok.decode(example.input_ids)
    assert text.endswith("hello <|im_end|>")
    n_answer = sum(label != -100 for label in example.labels)
    assert n_answer == 2  # "hello" and the end-of-sequence token


def test_long_inputs_are_cut_from_the_left_never_the_answer(tok):
    record = Record("count words in this text", " ".join(["one", "two"] * 40) + " ten",
                    "eight nine ten")
    with pytest.warns(UserWarning, match=r"1 of 2 records were longer than max_length=40.*"
                                         r"\(records \[1\]\)"):
        short, cut = chat.encode_sft(tok, [SFT_RECORDS[0], record], max_length=40)
    assert not short.truncated and cut.truncated and len(cut) <= 40
    text = tok.decode(cut.input_ids)
    assert "count words in this text" in text  # the instruction is whole, the input's end kept
    assert text.endswith("two ten <|im_end|> <|im_start|> assistant eight nine ten <|im_end|>")
    assert sum(label != -100 for label in cut.labels) == 4  # the whole answer and end of turn
    only_without_input = Record("say hi", "one two three four five", " ".join(["hello"] * 32))
    with pytest.warns(UserWarning, match="cut from the left"):
        [fits] = chat.encode_sft(tok, [only_without_input], max_length=40)
    assert fits.truncated and len(fits) == 40  # the whole input had to go
    assert not {"one", "two", "three", "four", "five"} & set(tok.decode(fits.input_ids).split())


def test_pad_and_pack_lay_out_the_same_tokens(tok):
    examples = chat.encode_sft(tok, SFT_RECORDS)
    padded = chat.pad(examples, tok.pad_token_id)
    longest = max(len(e) for e in examples)
    assert padded["input_ids"].shape == (6, longest)
    assert padded["attention_mask"].sum() == sum(len(e) for e in examples)
    assert (padded["labels"][padded["attention_mask"] == 0] == -100).all()

    packed = chat.pack(examples, 2 * longest, tok.pad_token_id)
    assert "attention_mask" not in packed and packed["input_ids"].shape[1] == 2 * longest
    real = packed["input_ids"] != tok.pad_token_id
    assert packed["input_ids"][real].tolist() == [i for e in examples for i in e.input_ids]
    # in order, none split or lost, and each example's positions count from 0
    assert packed["position_ids"][real].tolist() == [p for e in examples for p in range(len(e))]
    assert chat.batch_stats([padded])["real"] == chat.batch_stats([packed])["real"]
    assert chat.batch_stats([padded])["loss"] == chat.batch_stats([packed])["loss"]
    assert chat.batch_stats([packed])["examples"] == 6
    assert chat.pack(examples, longest, tok.pad_token_id)["input_ids"].shape[1] == longest


def test_packing_gives_the_padded_loss(tok):
    """The block-diagonal mask from restarting position_ids: packed examples cannot see each
    other, so the loss over the same examples is the same as with padding."""
    model = tiny_llama(tok).eval()
    wrapper = chat.AnswerOnlyLM(model)
    for mask_prompt in (True, False):
        examples = chat.encode_sft(tok, SFT_RECORDS, mask_prompt=mask_prompt)
        with torch.no_grad():
            padded = wrapper(**chat.pad(examples, tok.pad_token_id)).loss
            packed = wrapper(**chat.pack(examples, 64, tok.pad_token_id)).loss
        assert torch.allclose(padded, packed, atol=1e-5), (padded, packed)
    # without the restart (one long sequence) the examples would attend to each other
    batch = chat.pack(examples, 64, tok.pad_token_id)
    batch["position_ids"] = torch.arange(64).expand_as(batch["position_ids"])
    with torch.no_grad():
        assert not torch.allclose(wrapper(**batch).loss, padded, atol=1e-4)


def test_sft_batches_cover_every_example_once(tok):
    examples = chat.encode_sft(tok, SFT_RECORDS * 3)
    for packing in (False, True):
        batches = chat.sft_batches(examples, 4, tok.pad_token_id, packing=packing, length=64, seed=1)
        assert chat.batch_stats(batches)["examples"] == 18
        assert all(len(b["input_ids"]) <= 4 for b in batches)
        again = chat.sft_batches(examples, 4, tok.pad_token_id, packing=packing, length=64, seed=1)
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))


# ------------------------------------------------------------------------------ the answer-only loss


def test_answer_only_loss_equals_the_full_lm_loss(tok):
    model = tiny_llama(tok)
    batch = chat.pad(chat.encode_sft(tok, SFT_RECORDS), tok.pad_token_id)
    ours = chat.AnswerOnlyLM(model)(**batch).loss
    assert ours.item() == pytest.approx(model(**batch).loss.item(), abs=1e-5)
    ours.backward()
    assert model.lm_head.weight.grad is not None


def test_answer_nll_is_the_answer_only_loss_per_record_and_overall(tok):
    model = tiny_llama(tok)
    examples = chat.encode_sft(tok, SFT_RECORDS)
    loss = chat.AnswerOnlyLM(model)
    with torch.no_grad():
        whole = loss(**chat.pad(examples, tok.pad_token_id)).loss.item()
    assert chat.answer_nll(model, tok, SFT_RECORDS, batch_size=4) == pytest.approx(whole, rel=1e-5)
    pairs = chat.answer_nll(model, tok, SFT_RECORDS, batch_size=4, by_record=True)
    assert [n for _, n in pairs] == [sum(y != -100 for y in e.labels[1:]) for e in examples]
    for (value, _), example in zip(pairs, examples, strict=True):  # each record on its own
        with torch.no_grad():
            alone = loss(**chat.pad([example], tok.pad_token_id)).loss.item()
        assert value == pytest.approx(alone, rel=1e-5)
    total = sum(value * n for value, n in pairs) / sum(n for _, n in pairs)
    assert total == pytest.approx(whole, rel=1e-5)


def test_answer_nll_leaves_the_training_mode_as_it_found_it(tok):
    model = tiny_llama(tok).train()
    chat.answer_nll(model, tok, SFT_RECORDS, batch_size=2)
    assert model.training, "answer_nll restores the training mode"
    model.eval()
    chat.answer_nll(model, tok, SFT_RECORDS)
    assert not any(m.training for m in model.modules()), "and leaves an eval model in eval"


# ------------------------------------------------------------------------------ answering


def test_answer_keeps_order_and_sampling_is_seeded(tok):
    model = tiny_llama(tok)
    records = [SFT_RECORDS[4], SFT_RECORDS[0], SFT_RECORDS[3]]  # different prompt lengths
    batched = chat.answer(model, tok, records, max_new_tokens=4, batch_size=2)
    assert batched == [chat.answer(model, tok, [r], max_new_tokens=4)[0] for r in records]
    sampled = chat.answer(model, tok, records, 4, do_sample=True, temperature=1.5, seed=3)
    assert sampled == chat.answer(model, tok, records, 4, do_sample=True, temperature=1.5, seed=3)
    assert model.training and tok.padding_side == "right"  # left as they were found


# ------------------------------------------------------------------------------ mistakes


class _AnswerFirstTemplate:
    """A chat template that writes the answer before the question: the prompt alone is then
    not a prefix of prompt + answer, and masking the prompt would mask the wrong tokens."""

    eos_token = None

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "\n".join(m["content"] for m in reversed(messages))


def _bert_encoder():
    """A BERT encoder without its MLM head: no output layer to score answers with."""
    return BertForMaskedLM(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=16)).bert


BAD_CALLS = [  # (call, error, message): each mistake is named, with its fix
    (lambda tok: chat.records_from_dicts([{"instruction": "a", "output": "b"}, {"instruction": "c"}]),
     KeyError, r"record 1 lacks \['output'\]; every record needs instruction and output"),
    (lambda tok: chat.encode_sft(tok, []), ValueError, "records is empty"),
    (lambda tok: chat.encode_sft(tok, [SFT_RECORDS[0], {"instruction": "a", "output": "b"}]),
     TypeError, r"all be Records or all dicts, got \['Record', 'dict'\]"),
    (lambda tok: chat.encode_sft(tok, SFT_RECORDS, fmt="llama"), ValueError,
     "fmt must be 'chat' or 'alpaca', got 'llama'"),
    (lambda tok: chat.encode_sft(_AnswerFirstTemplate(), SFT_RECORDS), ValueError,
     "prompt is not a prefix of prompt \\+ answer; use fmt='alpaca'"),
    (lambda tok: chat.encode_sft(tok, [SFT_RECORDS[0], Record("say hi", "", " ".join(["hello"] * 60))],
                                 max_length=40),
     ValueError, "record 1: its instruction and answer alone take more than max_length=40 tokens"),
    (lambda tok: chat.pack(chat.encode_sft(tok, SFT_RECORDS[:1]), 5, tok.pad_token_id), ValueError,
     r"length=5 is shorter than the longest example \(\d+ tokens\)"),
    (lambda tok: chat.AnswerOnlyLM(tiny_llama(tok))(torch.tensor([[2, 5, 6]])), ValueError,
     "AnswerOnlyLM needs labels"),
    (lambda tok: chat.AnswerOnlyLM(_bert_encoder()), TypeError, "causal LM with an output layer"),
    (lambda tok: chat.answer(None, tok, SFT_RECORDS[:1], do_sample=True, temperature=0), ValueError,
     "sampling needs temperature > 0 .* got temperature=0, top_p=None"),
    (lambda tok: chat.answer(None, tok, SFT_RECORDS[:1], do_sample=True, top_p=1.5), ValueError,
     "sampling needs .* top_p in \\(0, 1\\] or None, got temperature=1.0, top_p=1.5"),
]


@pytest.mark.parametrize("call, error, match", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_mistakes_are_named_with_their_fix(tok, call, error, match):
    with pytest.raises(error, match=match):
        call(tok)


def test_kv_cache_helpers_read_either_name_transformers_5_uses():
    """transformers 5 renames the cache argument and output `past_key_values` to `cache`."""
    from types import SimpleNamespace

    class Older(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None):
            return input_ids

    class Newer(torch.nn.Module):
        def forward(self, input_ids, cache=None):
            return input_ids

    assert (chat.kv_cache_argument(Older()), chat.kv_cache_argument(Newer())) == ("past_key_values", "cache")
    old, new = object(), object()
    assert chat.kv_cache_of(SimpleNamespace(past_key_values=old)) is old
    assert chat.kv_cache_of(SimpleNamespace(cache=new, past_key_values=None)) is new
