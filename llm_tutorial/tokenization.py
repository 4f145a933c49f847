"""
# Tokenization: how text becomes numbers

A language model never sees text. It sees a sequence of integers, one per *token*, and each
integer picks a row of an embedding matrix. The tokenizer decides what a token is, and with
that it fixes two numbers that everything later pays for:

* the **vocabulary size** $V$: the embedding and output layers have $V \\times d$ weights each,
  and the softmax at the output runs over $V$ classes;
* the **sequence length** $n$ of a text: attention costs $O(n^2)$, and a context window of
  512 tokens holds more text when each token spells more characters.

Characters give a tiny $V$ and a long $n$; whole words give a short $n$ but an unbounded $V$
and no way to spell a word never seen in training. *Subword* tokenizers sit in between: they
start from characters (or bytes) and **merge** frequent neighbours into longer tokens until the
vocabulary has the size we asked for.

* **BPE** (byte-pair encoding, GPT-2) merges the most frequent adjacent pair $(a, b)$.
  *Byte-level* BPE starts from the 256 byte values, so every string can be spelled and there
  is never an unknown token.
* **WordPiece** (BERT) merges the pair with the best score
  $\\mathrm{count}(ab) / (\\mathrm{count}(a)\\,\\mathrm{count}(b))$, which favours pairs that occur
  together more often than chance. Pieces inside a word carry a `##` prefix; a word whose
  characters were never seen becomes `[UNK]`.

This module trains the three kinds (character, WordPiece, byte-level BPE) with the Rust
[🤗 tokenizers](https://huggingface.co/docs/tokenizers) library, wraps them as 🤗 transformers
tokenizers, and measures them. Every measuring function accepts any fast 🤗 tokenizer, such as
MiniLM's.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Iterable, Mapping

import pandas as pd
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers as tk_trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "BERT_SPECIAL_TOKENS",
    "BPE_SPECIAL_TOKEN",
    "CHAR_SPECIAL_TOKENS",
    "SPACE_SYMBOL",
    "train_wordpiece",
    "train_bpe",
    "train_char_tokenizer",
    "fertility",
    "unknown_rate",
    "surface_vocab",
    "vocab_overlap",
    "compare_tokenizers",
    "rare_word_report",
    "tokens_html",
    "token_explorer",
]

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BPE_SPECIAL_TOKEN = "<|endoftext|>"
CHAR_SPECIAL_TOKENS = ["[PAD]", "[UNK]"]
CHAR_BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # for MLM on characters
SPACE_SYMBOL = "▁"  # how the character tokenizer shows a space (as SentencePiece does)

# --------------------------------------------------------------------------- input checks


def _check_texts(texts: Iterable[str], what: str = "texts") -> list[str]:
    """Turn `texts` into a list of strings, or say clearly what is wrong with it.

    A single string is refused on purpose: iterating over it would yield characters, and a
    tokenizer "trained" on single characters is a confusing bug to track down.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, not a single string: wrap it as [text]")
    texts = list(texts)
    if not any(text.strip() for text in texts):
        raise ValueError(f"{what} is empty (or only whitespace): pass at least one non-empty text")
    return texts


def _check_count(name: str, value: int, minimum: int) -> int:
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str = "tokenizer") -> None:
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        hint = ""
        if isinstance(tokenizer, Tokenizer):
            hint = ": wrap it first with PreTrainedTokenizerFast(tokenizer_object=...)"
        raise TypeError(f"{name} must be a 🤗 transformers tokenizer, "
                        f"got {type(tokenizer).__name__}{hint}")


def _wrap(backend: Tokenizer, model_max_length: int, model_input_names: list[str] | None = None,
          **special_tokens: str) -> PreTrainedTokenizerFast:
    """Wrap a trained `tokenizers.Tokenizer` so that 🤗 transformers can use it.

    The wrapper knows which strings are the special tokens (`pad_token` and friends), which
    is what `DataCollatorForLanguageModeling` and the models' `generate` read, and which
    inputs the model takes (BERT also takes `token_type_ids`, the segment of each token).
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=model_max_length,
        model_input_names=model_input_names or ["input_ids", "attention_mask"], **special_tokens
    )


# --------------------------------------------------------------------------- WordPiece


def _continuation_alphabet(backend: Tokenizer, texts: list[str]) -> tuple[list[str], list[str]]:
    """The characters a word can start with, and those that occur inside a word.

    Both are read after the tokenizer's own normalisation and pre-tokenisation, so they are
    exactly the characters the trainer will see. Looking at each distinct whitespace-separated
    chunk once keeps this fast on a whole corpus.
    """
    chunks: set[str] = set()
    for text in texts:
        chunks.update(backend.normalizer.normalize_str(text).split())
    first, inner = set(), set()
    for chunk in chunks:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(chunk):
            first.add(word[0])
            inner.update(word[1:])
    return sorted(first), sorted(inner)


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2,
                    lowercase: bool = True, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer on `texts`.

    The pipeline is BERT's: a `BertNormalizer` (cleans control characters, lowercases and
    strips accents when `lowercase`, as uncased BERT does), a `BertPreTokenizer` (splits on
    whitespace and punctuation), the WordPiece model with `##` marking pieces that continue a
    word, and a template that adds `[CLS] A [SEP]` (`[CLS] A [SEP] B [SEP]` for pairs, with
    token type 1 for the second segment). The special tokens have ids 0 to 4 in the order of
    `BERT_SPECIAL_TOKENS`.

    **Determinism.** The Rust trainer registers the `##x` form of each character in the order
    it meets words in a hash map, which changes from run to run; ids, and the tie-breaks between
    merges of equal score, then change too. We therefore register every `##x` up front, sorted,
    next to the special tokens, and rebuild the model from the trained vocabulary so that only
    the five real special tokens stay special. Two trainings on the same texts are identical.
    """
    texts = _check_texts(texts)
    _check_count("vocab_size", vocab_size, 1)
    _check_count("min_frequency", min_frequency, 1)

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    first, inner = _continuation_alphabet(backend, texts)
    continuations = ["##" + c for c in inner]
    minimum = len(BERT_SPECIAL_TOKENS) + len(set(first) | set(inner)) + len(continuations)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} cannot hold the {len(BERT_SPECIAL_TOKENS)} special tokens "
            f"and the {minimum - len(BERT_SPECIAL_TOKENS)} single characters (with their ## forms) "
            f"of this corpus: use vocab_size >= {minimum}"
        )
    trainer = tk_trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=BERT_SPECIAL_TOKENS + continuations, continuing_subword_prefix="##",
    )
    backend.train_from_iterator(texts, trainer=trainer)

    vocab = backend.get_vocab(with_added_tokens=False)
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]",
                                           continuing_subword_prefix="##"))
    tokenizer.normalizer = backend.normalizer
    tokenizer.pre_tokenizer = backend.pre_tokenizer
    tokenizer.add_special_tokens(BERT_SPECIAL_TOKENS)
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return _wrap(tokenizer, model_max_length, pad_token="[PAD]", unk_token="[UNK]",
                 cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                 model_input_names=["input_ids", "token_type_ids", "attention_mask"])


# --------------------------------------------------------------------------- byte-level BPE


def train_bpe(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2,
              model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE tokenizer on `texts`.

    The pre-tokenizer turns the text into UTF-8 bytes and shows each byte as a printable
    character (a space becomes `Ġ`, a newline `Ċ`), then splits it GPT-2's way into words
    that carry their leading space. The trainer starts from all 256 byte characters, so any
    string can be spelled and no token is ever unknown; it then adds merges, most frequent pair
    first, until the vocabulary has `vocab_size` entries.

    The one special token, `<|endoftext|>` (id 0), separates documents and doubles as the
    beginning, end, padding and "unknown" token, as in GPT-2.
    """
    texts = _check_texts(texts)
    _check_count("min_frequency", min_frequency, 1)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(alphabet) + 1
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} cannot hold the {len(alphabet)} byte tokens and "
                         f"{BPE_SPECIAL_TOKEN}: use vocab_size >= {minimum}")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = tk_trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=[BPE_SPECIAL_TOKEN], initial_alphabet=alphabet,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return _wrap(backend, model_max_length, bos_token=BPE_SPECIAL_TOKEN,
                 eos_token=BPE_SPECIAL_TOKEN, pad_token=BPE_SPECIAL_TOKEN,
                 unk_token=BPE_SPECIAL_TOKEN)


# --------------------------------------------------------------------------- characters


def train_char_tokenizer(texts: Iterable[str], min_frequency: int = 1,
                         model_max_length: int = 2048, bert_specials: bool = False) -> PreTrainedTokenizerFast:
    """Train a character-level tokenizer: one token per character seen in `texts`.

    It is a word-level model whose "words" are single characters: a normaliser shows spaces as
    `▁`, a `Split` pre-tokenizer cuts the text after every character, and a `WordLevel`
    trainer keeps the characters seen at least `min_frequency` times (ids after `[PAD]` = 0
    and `[UNK]` = 1, most frequent first). A character never seen becomes `[UNK]`. Decoding
    turns `▁` back into spaces and joins the characters, so `decode(encode(text)) == text`
    for any text made of known characters. `bert_specials` adds `[CLS]`, `[SEP]` and
    `[MASK]` (ids 2, 3, 4), which masked-language-model pretraining needs (notebook 03).
    """
    texts = _check_texts(texts)
    _check_count("min_frequency", min_frequency, 1)
    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.normalizer = normalizers.Replace(" ", SPACE_SYMBOL)
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE_SYMBOL, " "), decoders.Fuse()])
    trainer = tk_trainers.WordLevelTrainer(
        vocab_size=1_000_000, min_frequency=min_frequency, show_progress=False,
        special_tokens=CHAR_BERT_SPECIAL_TOKENS if bert_specials else CHAR_SPECIAL_TOKENS,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if bert_specials:
        return _wrap(backend, model_max_length, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                     sep_token="[SEP]", mask_token="[MASK]")
    return _wrap(backend, model_max_length, pad_token="[PAD]", unk_token="[UNK]")


# --------------------------------------------------------------------------- measuring


def _token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens, truncation or padding.

    Fast tokenizers are run through their Rust backend directly: it is quicker, and it does not
    warn about texts longer than `model_max_length` (we measure, we do not feed a model). If
    someone left truncation or padding switched on in the backend, we work on a copy without it.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) for text in texts]
    if backend.truncation is not None or backend.padding is not None:
        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]


def _pieces(tokenizer: PreTrainedTokenizerBase, text: str) -> list[str]:
    """The token strings of `text`, without special tokens."""
    return tokenizer.convert_ids_to_tokens(_token_ids(tokenizer, [text])[0])


def fertility(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> float:
    """Mean number of tokens per word: total tokens / total whitespace-separated words.

    Special tokens such as `[CLS]` are not counted. A fertility of 1 means every word is a
    single token; English text with a good subword vocabulary lands around 1.2 to 1.5.
    Tokenizers that spell spaces (characters, byte-level BPE) count them inside their tokens:
    `Ġthe` is one token, and the character tokenizer's `▁` is one token of its own.
    """
    _check_tokenizer(tokenizer)
    texts = _check_texts(texts)
    n_tokens = sum(len(ids) for ids in _token_ids(tokenizer, texts))
    n_words = sum(len(text.split()) for text in texts)
    return n_tokens / n_words


def unknown_rate(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> float:
    """Fraction of the tokens of `texts` that are the unknown token (0.0 if there is none).

    Every `[UNK]` is information thrown away: the model cannot tell `[UNK]` from `[UNK]`.
    """
    _check_tokenizer(tokenizer)
    texts = _check_texts(texts)
    all_ids = _token_ids(tokenizer, texts)
    n_tokens = sum(len(ids) for ids in all_ids)
    unk_id = tokenizer.unk_token_id
    if unk_id is None or n_tokens == 0:
        return 0.0
    return sum(ids.count(unk_id) for ids in all_ids) / n_tokens


def compare_tokenizers(tokenizers: Mapping[str, PreTrainedTokenizerBase],
                       texts: Iterable[str]) -> pd.DataFrame:
    """One row per tokenizer, measured on `texts`.

    Columns: `vocab size` (with special tokens), `fertility` (tokens per word),
    `unknown rate` (fraction of tokens that are unknown) and `unknown tokens` (their number,
    easier to read when the rate is tiny), `tokens per document` (mean sequence length a model
    would see) and `chars per token` (how much text one token carries; the inverse view of
    fertility). Each text is tokenized once per tokenizer.
    """
    if not isinstance(tokenizers, Mapping) or not tokenizers:
        raise TypeError("tokenizers must be a non-empty dict {name: tokenizer}")
    texts = _check_texts(texts)
    n_words = sum(len(text.split()) for text in texts)
    n_chars = sum(len(text) for text in texts)
    rows = {}
    for name, tokenizer in tokenizers.items():
        _check_tokenizer(tokenizer, f"tokenizers[{name!r}]")
        all_ids = _token_ids(tokenizer, texts)
        n_tokens = sum(len(ids) for ids in all_ids)
        unk_id = tokenizer.unk_token_id
        n_unk = 0 if unk_id is None else sum(ids.count(unk_id) for ids in all_ids)
        rows[name] = {
            "vocab size": len(tokenizer),
            "fertility": n_tokens / n_words,
            "unknown rate": n_unk / n_tokens if n_tokens else 0.0,
            "unknown tokens": n_unk,
            "tokens per document": n_tokens / len(texts),
            "chars per token": n_chars / n_tokens if n_tokens else float("nan"),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "tokenizer"
    return table


def rare_word_report(tokenizer: PreTrainedTokenizerBase, words: Iterable[str]) -> pd.DataFrame:
    """How `tokenizer` splits each word: columns `word`, `pieces` and `n_pieces`.

    The pieces are the tokenizer's own token strings joined with spaces, so WordPiece shows
    `crypt ##oc ##ur ##ren ##cy` and byte-level BPE shows its `Ġ` markers.
    """
    _check_tokenizer(tokenizer)
    words = _check_texts(words, "words")
    rows = []
    for word in words:
        pieces = _pieces(tokenizer, word)
        rows.append({"word": word, "pieces": " ".join(pieces), "n_pieces": len(pieces)})
    return pd.DataFrame(rows, columns=["word", "pieces", "n_pieces"])


# --------------------------------------------------------------------------- vocabularies


def _continuation_prefix(tokenizer: PreTrainedTokenizerBase) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    prefix = getattr(getattr(backend, "model", None), "continuing_subword_prefix", None)
    if prefix is None and type(tokenizer).__name__.startswith("Bert"):
        prefix = "##"
    return prefix or None


def surface_vocab(tokenizer: PreTrainedTokenizerBase) -> set[str]:
    """The set of strings a tokenizer's vocabulary spells, with position markers removed.

    Tokenizers mark *where* a token may stand in different ways, and the marks would make two
    vocabularies look disjoint when they hold the same pieces of text. So each token is turned
    into the text it spells: the tokenizer's own decoder undoes byte-level BPE's byte mapping
    (`Ġthe` → `" the"`) and SentencePiece's `▁`, the WordPiece continuation prefix is
    dropped (`##ing` → `ing`), and surrounding whitespace is stripped. Special tokens,
    tokens that become empty (a lone space), control characters, and byte tokens that are only
    part of a UTF-8 character (they decode to `�`) are left out. `##ing` and `ing` therefore count once.
    """
    _check_tokenizer(tokenizer)
    special = set(tokenizer.all_special_tokens)
    prefix = _continuation_prefix(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if isinstance(decoder, decoders.WordPiece):
        decoder = None  # it would keep "##" on a lone token and tidy punctuation
    surfaces = set()
    for token in tokenizer.get_vocab():
        if token in special:
            continue
        text = token
        if prefix and text.startswith(prefix) and len(text) > len(prefix):
            text = text[len(prefix):]
        elif decoder is not None:
            text = decoder.decode([text])
        elif backend is None:
            text = tokenizer.convert_tokens_to_string([text])
        text = text.strip()
        if text and text.isprintable() and "\ufffd" not in text:
            surfaces.add(text)
    return surfaces


def vocab_overlap(tokenizer_a: PreTrainedTokenizerBase,
                  tokenizer_b: PreTrainedTokenizerBase) -> dict[str, float | int]:
    """How much two vocabularies share, compared as surface strings (see `surface_vocab`).

    Returns `size_a` and `size_b` (vocabulary sizes as the tokenizers report them),
    `strings_a` and `strings_b` (distinct surface strings), `shared` (strings in both),
    `jaccard` = shared / strings in either, and `coverage_a_by_b` = shared / `strings_a`:
    the fraction of a's pieces that b also has.
    """
    _check_tokenizer(tokenizer_a, "tokenizer_a")
    _check_tokenizer(tokenizer_b, "tokenizer_b")
    a, b = surface_vocab(tokenizer_a), surface_vocab(tokenizer_b)
    shared = len(a & b)
    union = len(a | b)
    return {
        "size_a": len(tokenizer_a),
        "size_b": len(tokenizer_b),
        "strings_a": len(a),
        "strings_b": len(b),
        "shared": shared,
        "jaccard": shared / union if union else 1.0,
        "coverage_a_by_b": shared / len(a) if a else 1.0,
    }


# --------------------------------------------------------------------------- showing tokens

_COLORS = ["#fde2e4", "#d8f3dc", "#dbe7fd", "#fff1c1", "#e9d8fd", "#ffd8be"]


def _visible(token: str) -> str:
    """A token string with invisible characters shown (newline ↵, tab →, space ␣)."""
    return token.replace("\n", "↵").replace("\t", "→").replace(" ", "␣")


def tokens_html(tokenizer: PreTrainedTokenizerBase, text: str, name: str | None = None) -> str:
    """An HTML snippet showing `text` cut into tokens, each in its own coloured box.

    Hovering over a box shows the token id. A header line gives the number of tokens, of
    words, and their ratio (the fertility of this one text).
    """
    _check_tokenizer(tokenizer)
    ids = _token_ids(tokenizer, [text])[0]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    spans = "".join(
        f'<span title="id {i}" style="background:{color};border-radius:3px;padding:1px 3px;'
        f'margin:1px;display:inline-block;font-family:monospace">{html.escape(_visible(t))}</span>'
        for t, i, color in zip(tokens, ids, itertools.cycle(_COLORS))
    )
    n_words = len(text.split())
    ratio = f", {len(ids) / n_words:.2f} tokens per word" if n_words else ""
    title = f"<b>{html.escape(name)}</b>: " if name else ""
    header = f"<div>{title}{len(ids)} tokens, {n_words} words{ratio}</div>"
    return f"<div style='margin-bottom:6px'>{header}<div>{spans}</div></div>"


def token_explorer(tokenizers: Mapping[str, PreTrainedTokenizerBase], text: str = ""):
    """An ipywidgets explorer: type a text, pick a tokenizer (or all), see the tokens.

    Returns a `VBox` with a text box, a dropdown and an HTML area that is redrawn on every
    change. The area starts with `text` already tokenized.
    """
    import ipywidgets as widgets

    if not isinstance(tokenizers, Mapping) or not tokenizers:
        raise TypeError("tokenizers must be a non-empty dict {name: tokenizer}")
    for name, tokenizer in tokenizers.items():
        _check_tokenizer(tokenizer, f"tokenizers[{name!r}]")
    box = widgets.Text(value=text, description="Text", continuous_update=True,
                       layout=widgets.Layout(width="95%"))
    choice = widgets.Dropdown(options=["all", *tokenizers], value="all", description="Tokenizer")
    area = widgets.HTML()

    def redraw(_change=None) -> None:
        names = list(tokenizers) if choice.value == "all" else [choice.value]
        area.value = "".join(tokens_html(tokenizers[n], box.value, n) for n in names)

    box.observe(redraw, names="value")
    choice.observe(redraw, names="value")
    redraw()
    return widgets.VBox([box, choice, area])
