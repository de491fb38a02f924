"""Small shared helpers: seeding every RNG, atomic file writes that follow the umask, logging set-up."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("prefpred")


def set_seed(seed: int, *, with_torch: bool | None = True) -> None:
    """Seed Python, NumPy and torch, so one ``seed`` makes a run reproducible.

    ``with_torch=None`` seeds torch only if it is already imported, so CPU-only runs (LightGBM) do not pay the
    ~4 s torch import; LLM code paths keep the default and always seed it.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ["PYTHONHASHSEED"] = str(seed)
    if with_torch is None:
        torch = sys.modules.get("torch")
        if torch is None:
            return
    elif with_torch:
        import torch
    else:
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block that seeds or draws from the global RNGs (Python, NumPy, torch when imported) and give them
    back as they were: building a helper artifact on first use (a tiny model, say) must not change what a seeded
    run draws afterwards."""
    py, npy = random.getstate(), np.random.get_state()
    torch = sys.modules.get("torch")
    th = torch.get_rng_state() if torch is not None else None
    cuda = torch.cuda.get_rng_state_all() if torch is not None and torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        if th is not None:
            torch.set_rng_state(th)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


CACHE_ENV = "PREFPRED_CACHE"
"""Environment variable naming prefpred's cache folder (default ``~/.cache/prefpred``)."""


def cache_root() -> Path:
    """prefpred's cache folder (converted GGUF models, tiny models, embeddings): ``$PREFPRED_CACHE``, else
    ``~/.cache/prefpred``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "prefpred"


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as the user's umask lets a newly created file (0o666) or folder (0o777) have it."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (links and relative spellings included; by path when either is missing)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return a.samefile(b)
    return a.resolve() == b.resolve()


def check_output(out: str | Path, *, force: bool, inputs: Sequence[str | Path | None] = (),
                 option: str = "--out") -> None:
    """Refuse, before any work, to write ``out`` over one of the command's ``inputs`` (never, even with
    ``--force``) or over an existing file without ``force``."""
    from prefpred.types import UserError

    for inp in inputs:
        if inp is not None and Path(inp).is_file() and same_file(out, inp):
            raise UserError(f"{option} {out} is the input file {inp}: choose another output path")
    if Path(out).exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to overwrite)")


def follow_umask(folder: str | Path) -> None:
    """Give ``folder`` and everything in it the modes the user's umask allows (mkdtemp makes 0700 folders, and some
    writers 0600 files), as if each had been created plainly."""
    folder = Path(folder)
    dir_mode, file_mode = umask_mode(0o777), umask_mode(0o666)
    folder.chmod(dir_mode)
    for f in folder.rglob("*"):
        f.chmod(dir_mode if f.is_dir() else file_mode)


@contextlib.contextmanager
def naming_path(path: str | Path) -> Iterator[None]:
    """Give ``path`` to any :class:`OSError` raised inside that names no file (a write failing with ENOSPC
    names none), so the CLI's one-line error says where it happened."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path, *, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    A failure (or an interrupt) leaves any existing file untouched and removes the temporary one. With
    ``force=False`` an existing ``path`` raises :class:`FileExistsError` before anything is written.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, umask_mode(0o666))  # mkstemp makes 0600; outputs follow the umask like any file
    try:
        with naming_path(path):
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str, *, force: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then rename)."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_safe(obj: Any) -> Any:
    """A JSON-safe copy: NaN/inf -> ``None``, numpy scalars -> Python numbers, tuples -> lists, keys -> str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


_THIRD_PARTY = r"(transformers|peft|accelerate|torch|sentence_transformers|bitsandbytes|huggingface_hub|kernels)(\.|$)"
_QUIET_MESSAGES = (
    # prefpred truncates long texts on purpose (head + tail of each part), after tokenizing them whole
    "Token indices sequence length is longer than the specified maximum sequence length",
)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


_DROP_QUIET = _DropMessages(_QUIET_MESSAGES)


def quiet_third_party(verbose: bool = False) -> None:
    """Silence what the libraries under prefpred print that a prefpred user cannot act on.

    * deprecation warnings (``FutureWarning``/``DeprecationWarning``) raised inside transformers, peft,
      accelerate, torch, sentence-transformers, bitsandbytes and huggingface_hub;
    * the tokenizer's "Token indices sequence length is longer than ..." (prefpred truncates on purpose);
    * transformers' weight-loading progress bars and its info/warning chatter (errors still show), and
      bitsandbytes' CPU kernel warnings;
    * every other warning goes through logging: one line, not a source excerpt.

    With ``verbose`` only the tokenizer message is dropped; the rest shows as usual (through logging).
    """
    import warnings

    logging.captureWarnings(True)
    logging.getLogger("transformers.tokenization_utils_base").addFilter(_DROP_QUIET)  # once: same object
    if verbose:
        return
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_THIRD_PARTY)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "bitsandbytes", "peft", "accelerate", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # already imported: its settings were read from the environment
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def setup_logging(verbose: bool = False) -> None:
    """Configure the ``prefpred`` logger for CLI use (library code only logs, never configures), and quiet the
    third-party libraries (:func:`quiet_third_party`)."""
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger("prefpred")
    if not root.handlers:
        try:
            from rich.console import Console
            from rich.logging import RichHandler

            # logs go to stderr so that command output on stdout (tables, --json) stays clean
            handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False,
                                                   rich_tracebacks=False)
            handler.setFormatter(logging.Formatter("%(message)s"))
        except ImportError:  # pragma: no cover
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        warnings_logger = logging.getLogger("py.warnings")  # warnings as one log line each (captureWarnings)
        if not warnings_logger.handlers:
            warnings_logger.addHandler(handler)
            warnings_logger.propagate = False
    root.setLevel(level)
    quiet_third_party(verbose)


def repo_shared_data() -> Path | None:
    """``../shared/data`` beside the project checkout (or ``$PREFPRED_SHARED_DATA``), if present."""
    env = os.environ.get("PREFPRED_SHARED_DATA")
    if env:
        p = Path(env)
        return p if p.is_dir() else None
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data"
        if (parent / "pyproject.toml").is_file() and cand.is_dir():
            return cand
    cand = Path.cwd().parent / "shared" / "data"
    return cand if cand.is_dir() else None
