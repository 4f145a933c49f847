"""Shared test fixtures: no network, ever, and the offline assets loaded once per session."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from llm_tutorial import assets

# huggingface_hub reads these when it is first imported, which can happen while the test
# modules are collected (before any fixture runs), so set them at import time as well.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
os.environ.update(OFFLINE_ENV)


def _is_local(address) -> bool:
    """``True`` for AF_UNIX paths and loopback hosts (127.0.0.0/8, ::1, ``localhost``)."""
    if isinstance(address, (str, bytes, bytearray)):  # AF_UNIX path (or abstract socket)
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:  # any other host name would need DNS, i.e. the network
        return False


def _blocked(address) -> RuntimeError:
    return RuntimeError(
        f"network access blocked in tests: tried to connect to {address!r}; "
        "the course must run offline (use the packaged assets in llm_tutorial.assets)"
    )


@pytest.fixture(scope="session", autouse=True)
def no_network():
    """Refuse every non-loopback connection and put Hugging Face libraries in offline mode."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create_connection = socket.create_connection

    def connect(self, address):
        if self.family != socket.AF_UNIX and not _is_local(address):
            raise _blocked(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family != socket.AF_UNIX and not _is_local(address):
            raise _blocked(address)
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        if not _is_local(address):
            raise _blocked(address)
        return real_create_connection(address, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        for name, value in OFFLINE_ENV.items():
            mp.setenv(name, value)
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(socket, "create_connection", create_connection)
        yield


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Run PyTorch on one thread: the test models are tiny, and on a shared CPU several threads
    spin against each other (a tiny BERT forward pass goes from ~0.5 ms to ~100 ms)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def minilm_mlm():
    """``(BertForMaskedLM, tokenizer)`` for MiniLM, loaded once (its MLM head is seeded)."""
    import torch

    try:
        assets.asset_path("minilm")
    except assets.AssetNotFoundError as error:
        pytest.skip(str(error))
    state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the MLM head is freshly initialised: make it repeatable
    try:
        return assets.load_minilm(mlm_head=True)
    finally:
        torch.random.set_rng_state(state)


@pytest.fixture(scope="session")
def bbc_small() -> assets.TextClassificationData:
    """BBC News, 20 articles per topic (100 in all: 80 train, 20 test)."""
    try:
        return assets.load_bbc_news(max_per_class=20)
    except assets.AssetNotFoundError as error:
        pytest.skip(str(error))
