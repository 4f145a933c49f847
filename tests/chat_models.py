"""Tiny offline stand-ins for a chat LM, shared by the tests of `chat` and notebooks 06, 07 and 10: a
word-level tokenizer with a ChatML template, and a 2-layer random Llama sized to it."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llm_tutorial.chat import Record

SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# the words the SFT tests' records use (others map to <unk>: "or" in "red or blue")
SFT_WORDS = ("system user assistant what is the capital of france paris say hi hello name a colour "
             "red blue green translate cat dog into french chat chien count words in this text "
             "one two three four five six seven eight nine ten").split()
SFT_RECORDS = [Record("what is the capital of france", "", "paris"),
               Record("translate cat into french", "cat", "chat"),
               Record("name a colour", "", "red or blue"),
               Record("say hi", "", "hello hello hello"),
               Record("count words in this text", "one two three", "three"),
               Record("translate dog into french", "", "chien")]


def word_chat_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """One token per word of `words` (others are <unk>), whitespace split, ChatML template."""
    vocab = {w: i for i, w in enumerate(SPECIAL + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token="<unk>", chat_template=CHATML)


def tiny_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"))
    return LlamaForCausalLM(config)
