"""Readers for pairwise preference data, all producing validated :class:`~prefpred.types.Pair` records.

Supported formats (``format="auto"`` detects them from the file name and content):

========================  ==========================================================================================
``arena``                 Kaggle LMSYS ``train.csv``/``test.csv`` and ``lmarena-ai/arena-human-preference-55k``
                          (CSV or parquet): ``prompt``/``response_a``/``response_b`` cells are JSON-encoded lists of
                          turns, items may be ``null``; labels in one-hot ``winner_model_a/b/tie`` (absent in test).
``arena-conversations``   ``{"examples": [{"input", "context": {model_a, model_b, winner, response_a, ...}}]}``
``autoj``                 Auto-J pairwise JSONL: ``label`` 0 = response 1, 1 = response 2, 2 = tie.
``pandalm``               PandaLM test set: majority vote of ``annotator1..3`` (1, 2 = that response, 0 = tie).
``llmbar``                LLMBar JSON list ``{input, output_1, output_2, label}`` (label 1 or 2, no ties).
``hh-rlhf``               HH-RLHF ``{chosen, rejected}`` transcripts (optionally gzipped); chosen/rejected are placed
                          as A/B at random with a fixed seed.
``arena-votes``           ``id, model_a, model_b, winner`` votes without text (model names only).
``prefpred-jsonl``        prefpred's own JSONL: ``id``, ``prompt``, ``response_a``, ``response_b`` (string or list of
                          turns), ``label`` (``"a"``/``"b"``/``"tie"`` or three probabilities), optional ``model_a``,
                          ``model_b``, ``source``, ``weight``; other keys are kept in ``Pair.meta``.
========================  ==========================================================================================

Bad input raises :class:`~prefpred.types.DataError` naming file, row and column. With ``skip_invalid=True`` bad
rows are dropped instead and reported in :attr:`LoadResult.dropped`. What is accepted but changed (ragged turns
padded with empty text, ``both_bad`` votes counted as ties) is counted in :attr:`LoadResult.notes` and logged as
one warning per file.

Files are recognised by content as well as name: gzip is decompressed whatever the name, a parquet file is read
as parquet, and other binary content (zip, bzip2, xz, zstd, 7z, NUL bytes) is refused in one line that says what
it is. Values quoted in error lines are escaped and trimmed, so no raw bytes reach the terminal.

The code is split by job: :mod:`prefpred.data_io` (raw file access, rows, cells), :mod:`prefpred.data_readers`
(one reader per format), :mod:`prefpred.data_write` (writers) and :mod:`prefpred.data_stats` (summaries); this
module detects formats and is the API (``read_pairs``, ``load_pairs``, ``load_data``...), re-exporting the rest.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from prefpred.config import DataConfig
from prefpred.data_io import (  # noqa: F401  (re-exported)
    ARENA_LABEL_COLUMNS,
    ARENA_TEXT_COLUMNS,
    NOTE_BOTH_BAD,
    NOTE_RAGGED,
    READERS,
    LoadResult,
    clean_text,
    is_parquet,
    json_document,
    json_lines,
    read_bytes,
    show,
)
from prefpred.data_readers import arena_records, parse_hh_transcript  # noqa: F401  (registers the readers)
from prefpred.data_stats import has_text, pairs_summary  # noqa: F401  (re-exported)
from prefpred.data_write import pair_to_json, write_arena_csv, write_pairs_jsonl  # noqa: F401  (re-exported)
from prefpred.types import DataError, Pair, UserError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- detection + API
def detect_format(path: Path) -> str:
    """Guess the reader for ``path`` from its name and first record."""
    name = path.name.lower()
    if name.endswith(".parquet") or is_parquet(path):  # parquet content under another name is read as parquet
        return "arena"
    if name.endswith((".csv", ".csv.gz")):
        data = read_bytes(path)
        header = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").lower()
        cols = {c.strip().strip('"') for c in header.split(",")}
        if {"winner", "model_a", "model_b"} <= cols and "prompt" not in cols:
            return "arena-votes"
        return "arena"
    if name.endswith((".jsonl", ".jsonl.gz")):
        first = next(json_lines(path), None)
        if first is None:
            raise DataError("file is empty", path=str(path))
        keys = set(first[1])
        if {"chosen", "rejected"} <= keys:
            return "hh-rlhf"
        if {"response 1", "response 2"} <= keys:
            return "autoj"
        if {"id", "prompt", "response_a", "response_b"} <= keys:
            return "prefpred-jsonl"
        raise DataError(f"unrecognised JSONL record keys {sorted(keys)} (pass --format)", path=str(path))
    if name.endswith(".json"):
        doc = json_document(path)
        if isinstance(doc, dict) and "examples" in doc:
            return "arena-conversations"
        if isinstance(doc, list) and doc and isinstance(doc[0], dict):
            keys = set(doc[0])
            if "annotator1" in keys:
                return "pandalm"
            if {"output_1", "output_2"} <= keys:
                return "llmbar"
        raise DataError("unrecognised JSON layout (pass --format)", path=str(path))
    if not path.exists():
        raise DataError("file not found", path=str(path))
    raise DataError(f"unknown file type {show(path.suffix)} (csv, parquet, json, jsonl)", path=str(path))


def read_pairs(path: str | Path, *, format: str = "auto", limit: int | None = None, skip_invalid: bool = False,
               seed: int = 0, log: bool = True) -> LoadResult:
    """Read and validate pairs from a file or a directory of files; see the module docstring for formats.

    ``limit`` keeps the first N pairs (N >= 1; ``None`` keeps all). Notes (:attr:`LoadResult.notes`) and drops
    are logged as one warning each per file (``log=False``: not logged, the caller reports them).
    """
    check_limit(limit)
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _looks_like_data(p))
        if not files:
            raise DataError("directory holds no data files", path=str(path))
        results = [read_pairs(p, format=format, skip_invalid=skip_invalid, seed=seed, log=log) for p in files]
        pairs = [pr for r in results for pr in r.pairs]
        _check_unique(pairs, str(path))
        notes: Counter[str] = Counter()
        for r in results:
            notes.update(r.notes)
        res = LoadResult(pairs[:limit] if limit else pairs, [d for r in results for d in r.dropped], str(path),
                         ",".join(sorted({r.format or "" for r in results})), dict(notes))
        return res  # each file was logged by its own read_pairs
    else:
        fmt = detect_format(path) if format == "auto" else format
        if fmt not in READERS:
            raise UserError(f"unknown data format {show(fmt)} (known: {', '.join(sorted(READERS))})")
        res = READERS[fmt](path, skip_invalid=skip_invalid, seed=seed)
        res.path, res.format = str(path), fmt
        if limit:
            res.pairs = res.pairs[:limit]
    if log:
        _log_result(res)
    return res


def check_limit(limit: int | None) -> None:
    """Refuse a row limit below 1 (``--limit 0`` or ``-5`` would silently mean "all" or "all but five")."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"--limit must be a whole number of rows, at least 1 (got {show(limit)})")


def _log_result(res: LoadResult) -> None:
    for note, count in res.notes.items():
        logger.warning("%s: %d %s", res.path, count, note)
    if res.dropped:
        logger.warning("%s: dropped %d invalid row(s): %s", res.path, len(res.dropped),
                       "; ".join(f"{k} ({v})" for k, v in res.drop_summary().items()))


def no_text_message(res: LoadResult) -> str:
    """What is wrong with a file of votes without any prompt/response text (the path is not included)."""
    return (f"the file has no prompt/response text (format {res.format}: votes with model names only), so it "
            "cannot train or evaluate a text model; `prefpred leaderboard` ranks models from votes")


def _looks_like_data(p: Path) -> bool:
    return p.name.lower().endswith((".csv", ".parquet", ".json", ".jsonl", ".jsonl.gz", ".csv.gz"))


def _check_unique(pairs: Sequence[Pair], path: str) -> None:
    seen: set[str] = set()
    for i, p in enumerate(pairs, start=1):
        if p.id in seen:
            raise DataError(f"duplicate id {show(p.id)} across files", path=path, row=i, column="id")
        seen.add(p.id)


def load_pairs(path: str | Path, *, format: str = "auto", limit: int | None = None, skip_invalid: bool = False,
               seed: int = 0, require_text: bool = True) -> list[Pair]:
    """Read and validate pairs (see :func:`read_pairs`) for a text model: a file without any prompt/response text
    (votes only) is refused in one line unless ``require_text`` is off (scoring predictions by id only)."""
    res = read_pairs(path, format=format, limit=limit, skip_invalid=skip_invalid, seed=seed)
    if require_text and res.pairs and not has_text(res.pairs):
        raise DataError(no_text_message(res), path=res.path)
    return res.pairs


def load_hub_dataset(name: str, *, split: str = "train", limit: int | None = None,
                     skip_invalid: bool = False) -> LoadResult:
    """Load an Arena-format dataset from the Hugging Face Hub (needs network access, or the local cache)."""
    from prefpred.sources import hub_offline

    offline = hub_offline()  # an unreachable hub switches to offline mode: a cache miss fails at once
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline: ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, ...
        why = "offline and not in the local cache" if offline else type(e).__name__
        raise UserError(f"could not load the hub dataset {show(name)} ({why}); pass --data PATH to a local file "
                        "(e.g. Kaggle train.csv)") from None
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    res = arena_records(iter(ds), ds.column_names, path=f"hub:{name}", skip_invalid=skip_invalid)
    res.path, res.format = f"hub:{name}", "arena"
    return res


def load_data(cfg: DataConfig, *, seed: int = 0) -> LoadResult:
    """Load what a :class:`~prefpred.config.DataConfig` names (a path, else the hub dataset) for training or
    evaluating a text model: a file without any prompt/response text (votes only) is refused in one line."""
    check_limit(cfg.limit)
    if cfg.path:
        res = read_pairs(cfg.path, format=cfg.format, limit=cfg.limit, skip_invalid=cfg.skip_invalid, seed=seed)
    else:
        res = load_hub_dataset(cfg.hub_dataset, limit=cfg.limit, skip_invalid=cfg.skip_invalid)
    if res.pairs and not has_text(res.pairs):
        raise DataError(no_text_message(res), path=res.path)
    return res


def load_extra(cfg: DataConfig, *, seed: int = 0) -> list[Pair]:
    """The extra (e.g. teacher-labelled) training pairs of ``cfg``, weighted by ``extra_weight``.

    Unlabelled rows (e.g. teacher failures) are left out with a log line, since they cannot be trained on.
    """
    if not cfg.extra_path:
        return []
    res = read_pairs(cfg.extra_path, skip_invalid=cfg.skip_invalid, seed=seed)
    if res.pairs and not has_text(res.pairs):  # votes only: as refused for --data, never trained on as empty text
        raise DataError(no_text_message(res), path=res.path)
    labelled = [p for p in res.pairs if p.label is not None]
    if len(labelled) < len(res.pairs):
        logger.warning("%s: %d extra row(s) without a label left out", cfg.extra_path,
                       len(res.pairs) - len(labelled))
    from dataclasses import replace

    return [replace(p, weight=p.weight * cfg.extra_weight) for p in labelled]
