"""
# Chat models: prompts, supervised fine-tuning examples, answers

What notebooks 06 (LoRA on SmolLM2), 07 (instruction tuning) and 10 (evaluation) share when they
talk to a chat model, in one place below all three:

* a `Record` is one instruction (`instruction`, optional `input`, reference `output`);
  `records_from_dicts` reads Alpaca-style dicts into records;
* `render_chat` puts a record through the tokenizer's chat template (`chat_prompt` for a bare
  instruction string), `render_alpaca` through the Alpaca format;
* `encode_sft` tokenises records for supervised fine-tuning with the prompt masked out of the
  loss, cutting over-long inputs from the left and never the answer; `pad` and `pack` lay
  examples out in batches (packing keeps examples apart with per-example `position_ids`),
  `sft_batches` shuffles and batches, `batch_stats` counts real, padding and loss tokens;
* `AnswerOnlyLM` is the training loss on the answer tokens only, and `answer_nll` the same
  number for evaluation (how surprised the model is by the reference answers);
* `answer` generates: greedy, or sampled with temperature / top-k / top-p / repetition penalty.

Notebook 07 writes the prompt-masking rule by hand (checked equal to `encode_sft`) and prints
`pack`'s source.
"""

from __future__ import annotations

import inspect
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm_tutorial import runtime
from llm_tutorial.trainer import eval_mode, model_device

__all__ = [
    "Record",
    "records_from_dicts",
    "as_records",
    "render_alpaca",
    "render_chat",
    "chat_prompt",
    "Example",
    "encode_sft",
    "pad",
    "pack",
    "sft_batches",
    "batch_stats",
    "AnswerOnlyLM",
    "answer_token_nll",
    "answer_nll",
    "answer",
    "kv_cache_argument",
    "kv_cache_of",
]


# ------------------------------------------------------------------------------ records, rendering


@dataclass(frozen=True)
class Record:
    """One instruction example. `input` may be empty; `family` is `"alpaca"` for the vendored
    set; `template` is the index of the instruction template (-1 when not generated)."""

    instruction: str
    input: str
    output: str
    family: str = ""
    kind: str = ""
    template: int = -1
    verifier: str = "normalised"



def records_from_dicts(items: Sequence[Mapping[str, Any]], family: str = "alpaca") -> list[Record]:
    """Alpaca-style dicts (`instruction`, optional `input`, `output`) as `Record`s; a record
    without an instruction or an output is an error naming its index."""
    records = []
    for i, item in enumerate(items):
        missing = [key for key in ("instruction", "output") if key not in item]
        if missing:
            raise KeyError(f"record {i} lacks {missing}; every record needs instruction and output")
        records.append(Record(item["instruction"], item.get("input", ""), item["output"],
                              family, "open-ended"))
    return records



def render_alpaca(record: Record, with_answer: bool = True) -> str:
    """The Alpaca prompt format (Taori et al., 2023), optionally followed by the answer."""
    header = ("Below is an instruction that describes a task"
              + (", paired with an input that provides further context" if record.input else "")
              + ". Write a response that appropriately completes the request.\n\n")
    text = header + f"### Instruction:\n{record.instruction}\n\n"
    if record.input:
        text += f"### Input:\n{record.input}\n\n"
    text += "### Response:\n"
    return text + (record.output if with_answer else "")


def render_chat(tokenizer, record: Record, with_answer: bool = True) -> str:
    """The record through the tokenizer's chat template: the user turn (instruction, then the
    input on a new line), and the assistant's answer when `with_answer`."""
    content = record.instruction if not record.input else f"{record.instruction}\n\n{record.input}"
    messages = [{"role": "user", "content": content}]
    if with_answer:
        messages.append({"role": "assistant", "content": record.output})
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=not with_answer)



def chat_prompt(tokenizer, instruction: str, context: str = "") -> str:
    """The user turn `instruction` (followed by `context`, if any) rendered with the
    tokenizer's chat template, ending where the assistant's answer begins: `render_chat` of a
    record with no answer."""
    return render_chat(tokenizer, Record(instruction, context, ""), with_answer=False)


# ------------------------------------------------------------------------------ SFT examples
#
# Supervised fine-tuning (SFT) trains a causal LM on "prompt, then answer" token sequences. Two
# choices shape what it learns and how fast:
#
# * **Which tokens carry the loss.** With `mask_prompt=True` the prompt's labels are -100, so
#   the loss is the answer's negative log-likelihood only; otherwise the model also spends its
#   capacity learning to predict the (templated, repetitive) prompts.
# * **How examples share a batch.** *Padding* right-pads every row to the longest example, and
#   the padding is wasted compute. *Packing* concatenates examples into rows of a fixed length;
#   `position_ids` restart at 0 for each example, and with no `attention_mask` transformers
#   builds a block-diagonal causal mask from them, so packed examples cannot attend to each
#   other and the loss is the same as with padding.


@dataclass(frozen=True)
class Example:
    """One tokenised SFT example: `labels` is `input_ids` with -100 where there is no loss."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


def as_records(records: Sequence[Record | Mapping[str, Any]]) -> list[Record]:
    """`records` as a list of `Record`s (Alpaca-style dicts are read with `records_from_dicts`);
    an empty list is an error, since every caller would then average over nothing."""
    if not records:
        raise ValueError("records is empty: pass at least one record")
    if all(isinstance(r, Record) for r in records):
        return list(records)
    if all(isinstance(r, Mapping) for r in records):
        return records_from_dicts(records)
    kinds = sorted({type(r).__name__ for r in records})
    raise TypeError(f"records must all be Records or all dicts, got {kinds}")


def _render_parts(tokenizer, record: Record, fmt: str) -> tuple[str, str]:
    """(prompt, answer) texts whose concatenation is the full training text."""
    if fmt == "chat":
        prompt = render_chat(tokenizer, record, with_answer=False)
        full = render_chat(tokenizer, record, with_answer=True)
        if not full.startswith(prompt):  # a template that rewrites earlier turns
            raise ValueError("the chat template's prompt is not a prefix of prompt + answer; "
                             "use fmt='alpaca' for this tokenizer")
        return prompt, full[len(prompt):]
    return render_alpaca(record, with_answer=False), record.output + (tokenizer.eos_token or "")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_sft(tokenizer, records: Sequence[Record | Mapping[str, Any]], max_length: int = 256,
               mask_prompt: bool = True, fmt: str = "chat") -> list[Example]:
    """
    Tokenise records for SFT: the prompt (`fmt="chat"`: the tokenizer's chat template, or
    `"alpaca"`), then the answer and its end-of-turn token. With `mask_prompt` the prompt's
    labels are -100. The first token's label is always -100: nothing predicts it.

    An example longer than `max_length` has its **input** cut from the left (the end of a
    document is usually what the question is about, and the instruction stays whole), with one
    warning naming the records; the answer is never cut. A record whose instruction and answer
    alone exceed `max_length` is an error naming its index.
    """
    records = as_records(records)
    if fmt not in ("chat", "alpaca"):
        raise ValueError(f"fmt must be 'chat' or 'alpaca', got {fmt!r}")
    examples, cut = [], []
    for i, record in enumerate(records):
        was_cut = False
        prompt, answer = _render_parts(tokenizer, record, fmt)
        prompt_ids, answer_ids = _ids(tokenizer, prompt), _ids(tokenizer, answer)
        overflow = len(prompt_ids) + len(answer_ids) - max_length
        if overflow > 0:
            input_ids = _ids(tokenizer, record.input)
            keep = len(input_ids) - overflow
            while keep >= 0 and input_ids:  # re-render: a cut text's token count can drift
                kept = tokenizer.decode(input_ids[len(input_ids) - keep:]).lstrip() if keep else ""
                shorter = Record(record.instruction, kept, record.output, record.family, record.kind)
                prompt_ids = _ids(tokenizer, _render_parts(tokenizer, shorter, fmt)[0])
                overflow = len(prompt_ids) + len(answer_ids) - max_length
                if overflow <= 0 or keep == 0:
                    break
                keep = max(keep - overflow, 0)
            if overflow > 0:
                raise ValueError(
                    f"record {i}: its instruction and answer alone take more than max_length="
                    f"{max_length} tokens, and only the input may be cut; raise max_length or "
                    f"drop the record")
            cut.append(i)
            was_cut = True
        ids = prompt_ids + answer_ids
        labels = ([-100] * len(prompt_ids) if mask_prompt else list(prompt_ids)) + answer_ids
        labels[0] = -100
        examples.append(Example(tuple(ids), tuple(labels), was_cut))
    if cut:
        warnings.warn(f"{len(cut)} of {len(records)} records were longer than max_length="
                      f"{max_length}: their input was cut from the left, answers kept whole "
                      f"(records {cut[:5]}{' ...' if len(cut) > 5 else ''})", stacklevel=2)
    return examples


def pad(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded batch: `input_ids`, `attention_mask` and `labels` (-100 on padding)."""
    width = max(len(e) for e in examples)
    batch = {"input_ids": torch.full((len(examples), width), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),
             "labels": torch.full((len(examples), width), -100, dtype=torch.long)}
    for row, e in enumerate(examples):
        batch["input_ids"][row, :len(e)] = torch.tensor(e.input_ids)
        batch["attention_mask"][row, :len(e)] = 1
        batch["labels"][row, :len(e)] = torch.tensor(e.labels)
    return batch


def pack(examples: Sequence[Example], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """
    Examples concatenated, in order, into rows of `length` tokens (a new row starts when the
    next example does not fit; examples are never split). `position_ids` restart at 0 for
    each example, which is how the model keeps them apart; the unused tail of a row is padding
    with labels -100. No `attention_mask`: passing one would switch the packed mask off.
    """
    longest = max(len(e) for e in examples)
    if length < longest:  # examples are never split
        raise ValueError(f"length={length} is shorter than the longest example ({longest} tokens)")
    rows: list[list[Example]] = [[]]
    for e in examples:
        if sum(len(x) for x in rows[-1]) + len(e) > length:
            rows.append([])
        rows[-1].append(e)
    batch = {"input_ids": torch.full((len(rows), length), pad_id, dtype=torch.long),
             "labels": torch.full((len(rows), length), -100, dtype=torch.long),
             "position_ids": torch.zeros((len(rows), length), dtype=torch.long)}
    for r, row in enumerate(rows):
        start = 0
        for e in row:
            end = start + len(e)
            batch["input_ids"][r, start:end] = torch.tensor(e.input_ids)
            batch["labels"][r, start:end] = torch.tensor(e.labels)
            batch["position_ids"][r, start:end] = torch.arange(len(e))
            start = end
        batch["position_ids"][r, start:] = torch.arange(length - start)  # the padding tail
    return batch


def sft_batches(examples: Sequence[Example], batch_size: int, pad_id: int, packing: bool = False,
                length: int | None = None, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """
    Training batches from `examples`, shuffled with `seed`. Padding: `batch_size` examples per
    batch, padded to the longest. Packing: `batch_size` rows of `length` tokens each (default:
    the longest example), as many examples per row as fit.
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    shuffled = [examples[i] for i in order]
    if not packing:
        return [pad(shuffled[i:i + batch_size], pad_id) for i in range(0, len(shuffled), batch_size)]
    packed = pack(shuffled, length or max(len(e) for e in examples), pad_id)
    return [{key: value[i:i + batch_size] for key, value in packed.items()}
            for i in range(0, len(packed["input_ids"]), batch_size)]


def batch_stats(batches: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Tokens in `batches`: `tokens` (all positions), `real` (not padding), `loss` (with a label),
    `padding` (the wasted fraction) and `examples`."""
    tokens = real = loss = examples = 0
    for b in batches:
        tokens += b["input_ids"].numel()
        if "attention_mask" in b:
            real += int(b["attention_mask"].sum())
            examples += len(b["input_ids"])
        else:  # packed: a row's examples end at its last label; each starts at position 0
            for positions, labels in zip(b["position_ids"], b["labels"], strict=True):
                labelled = (labels != -100).nonzero()
                end = int(labelled.max()) + 1 if len(labelled) else 0
                real += end
                examples += int((positions[:end] == 0).sum())
        loss += int((b["labels"][:, 1:] != -100).sum())
    return {"tokens": tokens, "real": real, "loss": loss, "padding": 1 - real / max(tokens, 1),
            "examples": examples}


# ------------------------------------------------------------------------------ the answer-only loss


@dataclass
class _LossOutput:
    loss: torch.Tensor


class AnswerOnlyLM(nn.Module):
    """
    Wraps a Hugging Face causal LM so that its forward pass computes the next-token loss
    **only where there are labels**: the transformer runs on every position, but the output
    layer (576 × 49,152 for SmolLM2, a fifth of the model) only on the answer tokens. Same loss
    as `model(**batch).loss`, a fraction of the output layer's time and memory. The wrapped
    model is `self.model`; its weights are shared, not copied.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
            raise TypeError("AnswerOnlyLM wraps a causal LM with an output layer (AutoModelForCausalLM)")
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                **_: Any) -> _LossOutput:
        if labels is None:
            raise ValueError("AnswerOnlyLM needs labels (-100 where there is no target)")
        # Packed rows (several examples in one row, `instructions.pack`) come with position_ids
        # that restart at 0 for each example and no attention_mask: transformers then builds a
        # block-diagonal causal mask, so examples cannot see each other. It only does so
        # without a KV cache, hence use_cache=False.
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                          position_ids=position_ids,
                                          use_cache=False).last_hidden_state
        targets = labels[:, 1:]  # position t predicts token t + 1
        keep = targets != -100
        logits = self.model.get_output_embeddings()(hidden[:, :-1][keep])
        return _LossOutput(loss=F.cross_entropy(logits.float(), targets[keep]))


def answer_token_nll(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a batch: the summed negative log-likelihood of the tokens that carry a label,
    and how many there are. Position $t$'s hidden state predicts token $t + 1$; the output layer
    `head` runs only at those positions, as in `AnswerOnlyLM`."""
    targets = labels[:, 1:]
    keep = targets != -100
    losses = F.cross_entropy(head(hidden[:, :-1][keep]).float(), targets[keep], reduction="none")
    per_row = torch.zeros(len(labels), device=losses.device).index_add_(0, keep.nonzero()[:, 0], losses)
    return per_row, keep.sum(1)


@torch.no_grad()
def answer_nll(model, tokenizer, records: Sequence[Record | Mapping[str, Any]],
               max_length: int = 256, batch_size: int = 16, by_record: bool = False
               ) -> float | list[tuple[float, int]]:
    """
    How surprised the model is by the **reference** answers: the mean negative log-likelihood
    per answer token (nats), with the prompt given and the answer teacher-forced, as in training
    (`encode_sft`, prompt masked). No generation, so it moves before whole answers come out
    right. Token-weighted over all records (the loss `AnswerOnlyLM` trains), or with
    `by_record` one `(mean NLL per answer token, answer tokens)` pair per record, in order.
    Examples are sorted by length and padded per batch, so little compute goes to padding.
    """
    records = as_records(records)
    examples = encode_sft(tokenizer, records, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    sums, counts = [0.0] * len(examples), [0] * len(examples)
    device = model_device(model)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    with eval_mode(model):
        for start in runtime.batch_progress(range(0, len(order), batch_size), desc="answer NLL"):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in pad([examples[i] for i in chunk], pad_id).items()}
            hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             use_cache=False).last_hidden_state
            per_row, answer_tokens = answer_token_nll(head, hidden, batch["labels"])
            for row, i in enumerate(chunk):
                sums[i], counts[i] = float(per_row[row]), int(answer_tokens[row])
    if by_record:
        return [(total / max(n, 1), n) for total, n in zip(sums, counts, strict=True)]
    return sum(sums) / max(sum(counts), 1)



# ------------------------------------------------------------------------------ answering


@torch.no_grad()
def answer(model, tokenizer, records: Sequence[Record | Mapping[str, Any]], max_new_tokens: int = 32,
           batch_size: int = 16, *, do_sample: bool = False, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
           seed: int = 0) -> list[str]:
    """
    A chat model's answers to `records` (rendered with `render_chat`), in order. Greedy by
    default; `do_sample=True` samples from the next-token distribution divided by
    `temperature`, restricted to the `top_k` likeliest tokens and/or the smallest set whose
    probability reaches `top_p` (None: no restriction). `repetition_penalty` > 1 makes tokens
    already present less likely. Sampling is reproducible from `seed`. Prompts are sorted by
    length and left-padded in batches, so little compute goes to padding.
    """
    records = as_records(records)
    if do_sample and not (temperature > 0 and (top_p is None or 0 < top_p <= 1)):
        raise ValueError(f"sampling needs temperature > 0 and top_p in (0, 1] or None, got "
                         f"temperature={temperature}, top_p={top_p} (greedy: do_sample=False)")
    prompts = [render_chat(tokenizer, r, with_answer=False) for r in records]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                   repetition_penalty=float(repetition_penalty),
                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if do_sample:  # 0 / 1.0 switch the filters off (transformers' own defaults are top_k=50)
        options.update(temperature=float(temperature), top_k=top_k or 0, top_p=float(top_p or 1.0))
    else:
        options.update(temperature=None, top_k=None, top_p=None)
    device = model_device(model)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: dict[int, str] = {}
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        with eval_mode(model):
            for start in runtime.batch_progress(range(0, len(order), batch_size), desc="generate"):
                chunk = order[start:start + batch_size]
                enc = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True,
                                add_special_tokens=False)
                enc = {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}
                out = model.generate(**enc, **options)
                for i, row in zip(chunk, out, strict=True):
                    answers[i] = tokenizer.decode(row[enc["input_ids"].shape[1]:],
                                                  skip_special_tokens=True).strip()
    finally:
        torch.random.set_rng_state(generator_state)
        tokenizer.padding_side = side
    return [answers[i] for i in range(len(records))]


# ------------------------------------------------------------------------------ the key-value cache


def kv_cache_argument(model: nn.Module) -> str:
    """The name under which `model`'s forward pass (and its `generate`) takes a key-value cache:
    transformers 5 renames `past_key_values` to `cache` (5.2x and later)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def kv_cache_of(output: Any) -> Any:
    """The key-value cache a forward pass returned with `use_cache=True`, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
