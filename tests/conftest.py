"""Shared test fixtures: small pairs written by the tests themselves (never copies of shared data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"




@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="module", autouse=True)
def torch_one_thread():
    """Tiny torch models run far faster on one thread than on a shared 2-core CPU; restored afterwards.

    Applies to every test module that imports torch (other modules never pay the torch import).
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    """A tokenizer trained on the planted pairs (module-scoped: cheap, and modules may override it)."""
    from prefpred.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="module")
def lm(tok):
    """A tiny random causal LM over :func:`tok`."""
    from prefpred.testing import tiny_causal_lm

    return tiny_causal_lm(tok, hidden=32)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 model + trained tokenizer saved as a local model directory (shared, read-only)."""
    from prefpred.training.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama model + trained tokenizer saved as a local model directory (shared, read-only)."""
    from prefpred.training.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")
