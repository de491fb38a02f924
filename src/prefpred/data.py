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
rows are dropped instead and reported in :attr:`LoadResult.dropped`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.config import DataConfig
from prefpred.types import LABELS, DataError, Pair, Turn, UserError, one_hot
from prefpred.utils import atomic_path

logger = logging.getLogger(__name__)

ARENA_TEXT_COLUMNS = ("prompt", "response_a", "response_b")
ARENA_LABEL_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
READERS: dict[str, Any] = {}
_RAW_BYTES = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (decoded with surrogateescape)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

csv.field_size_limit(2**31 - 1)


@dataclass
class LoadResult:
    """Pairs read from a source, plus what was dropped with ``skip_invalid``."""

    pairs: list[Pair]
    dropped: list[DataError] = field(default_factory=list)
    path: str | None = None
    format: str | None = None

    def drop_summary(self) -> dict[str, int]:
        """How many rows were dropped, by reason."""
        return dict(Counter(_reason(e) for e in self.dropped))


def _reason(e: DataError) -> str:
    msg = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "…", e.message)
    return f"{e.column}: {msg}" if e.column else msg


def _reader(name: str):
    def deco(fn):
        READERS[name] = fn
        return fn

    return deco


# --------------------------------------------------------------------------------------------- text helpers
def clean_text(value: Any) -> str:
    """``None`` -> ``""``; lone UTF-16 surrogates (invalid ``\\ud83d`` escapes) replaced by U+FFFD."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    if _LONE_SURROGATE.search(value):
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _turn_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [clean_text(v) for v in value]
    if value is None:
        return [""]
    return [clean_text(value)]


def _json_list_cell(raw: Any, *, path: str, row: int, column: str) -> list[str]:
    """Decode one Arena cell: a JSON-encoded list of turns (items may be null)."""
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        raise DataError("empty cell (expected a JSON list of turns)", path=path, row=row, column=column)
    if isinstance(raw, (list, tuple, np.ndarray)):
        return _turn_list(list(raw))
    text = str(raw)
    if _RAW_BYTES.search(text):
        raise DataError("cell contains bytes that are not valid UTF-8", path=path, row=row, column=column)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"cell is not valid JSON ({e.msg} at char {e.pos})", path=path, row=row,
                        column=column) from None
    if isinstance(value, str):
        return [clean_text(value)]
    if not isinstance(value, list):
        raise DataError(f"expected a JSON list of turns, got {type(value).__name__}", path=path, row=row,
                        column=column)
    return _turn_list(value)


def _make_turns(prompts: list[str], resp_a: list[str], resp_b: list[str], *, path: str, row: int) -> tuple[Turn, ...]:
    n = max(len(prompts), len(resp_a), len(resp_b))
    if n == 0:
        raise DataError("conversation has no turns", path=path, row=row, column="prompt")
    if not (len(prompts) == len(resp_a) == len(resp_b)):
        # the real data has a few ragged rows; pad rather than lose them, but say so at debug level
        logger.debug("%s row %d: ragged turns (%d/%d/%d), padding", path, row, len(prompts), len(resp_a),
                     len(resp_b))
        prompts, resp_a, resp_b = ([*x, *[""] * (n - len(x))] for x in (prompts, resp_a, resp_b))
    return tuple(Turn(p, a, b) for p, a, b in zip(prompts, resp_a, resp_b, strict=True))


def _one_hot_label(values: Sequence[Any], *, path: str, row: int) -> tuple[float, float, float]:
    nums = []
    for col, v in zip(ARENA_LABEL_COLUMNS, values, strict=True):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise DataError(f"label must be 0 or 1, got {v!r}", path=path, row=row, column=col) from None
        if f not in (0.0, 1.0):
            raise DataError(f"label must be 0 or 1, got {v!r}", path=path, row=row, column=col)
        nums.append(f)
    if sum(nums) != 1.0:
        raise DataError(f"label is not one-hot (winner_model_a/b/tie = {'/'.join(str(int(x)) for x in nums)})",
                        path=path, row=row, column="winner_model_a")
    return (nums[0], nums[1], nums[2])


class _Rows:
    """Collects pairs, enforcing unique ids and turning row errors into drops when asked."""

    def __init__(self, path: str, skip_invalid: bool):
        self.path = path
        self.skip_invalid = skip_invalid
        self.pairs: list[Pair] = []
        self.dropped: list[DataError] = []
        self._seen: dict[str, int] = {}

    def add(self, row: int, build) -> None:
        try:
            pair = build()
            if pair.id in self._seen:
                raise DataError(f"duplicate id {pair.id!r} (first seen at row {self._seen[pair.id]})", path=self.path,
                                row=row, column="id")
        except DataError as e:
            if not self.skip_invalid:
                raise
            self.dropped.append(e)
            return
        self._seen[pair.id] = row
        self.pairs.append(pair)


# --------------------------------------------------------------------------------------------- raw file access
def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError("file not found", path=str(path))
    if path.is_dir():
        raise DataError("is a directory (pass a data file)", path=str(path))
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except OSError as e:
            raise DataError(f"not a valid gzip file ({e})", path=str(path)) from None
    if not data.strip():
        raise DataError("file is empty", path=str(path))
    return data


def _decode_whole(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"bytes that are not valid UTF-8 at line {line} (byte offset {e.start})",
                        path=str(path)) from None


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    text = _decode_whole(_read_bytes(path), path)
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"line is not valid JSON ({e.msg})", path=str(path), row=i) from None
        if not isinstance(obj, dict):
            raise DataError("each line must be a JSON object", path=str(path), row=i)
        yield i, obj


def _json_document(path: Path) -> Any:
    text = _decode_whole(_read_bytes(path), path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at line {e.lineno})", path=str(path)) from None


# --------------------------------------------------------------------------------------------- arena (Kaggle / HF)
def _arena_table(path: Path) -> tuple[list[str], Iterable[dict[str, Any]]]:
    if path.suffix == ".parquet":
        if not path.exists():
            raise DataError("file not found", path=str(path))
        import pandas as pd

        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise DataError(f"not a readable parquet file ({type(e).__name__})", path=str(path)) from None
        if len(df) == 0:
            raise DataError("file is empty", path=str(path))
        return list(df.columns), df.to_dict("records")
    text = _read_bytes(path).decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if not columns:
        raise DataError("file is empty", path=str(path))
    reader.fieldnames = columns
    return columns, reader


def arena_records(rows: Iterable[dict[str, Any]], columns: Sequence[str], *, path: str, skip_invalid: bool,
                  source: str = "arena") -> LoadResult:
    """Turn Arena-format rows (Kaggle CSV / HF dataset records) into pairs."""
    missing = [c for c in ("id", *ARENA_TEXT_COLUMNS) if c not in columns]
    if missing:
        raise DataError(f"missing required column(s) {', '.join(missing)} (found: {', '.join(columns)})",
                        path=path, column=missing[0])
    present = [c for c in ARENA_LABEL_COLUMNS if c in columns]
    if present and len(present) != 3:
        absent = [c for c in ARENA_LABEL_COLUMNS if c not in present]
        raise DataError(f"missing label column(s) {', '.join(absent)}", path=path, column=absent[0])
    labelled = bool(present)
    acc = _Rows(path, skip_invalid)
    for i, rec in enumerate(rows, start=1):
        def build(rec=rec, i=i) -> Pair:
            if None in rec:  # csv.DictReader puts surplus fields under None
                raise DataError("row has more fields than the header", path=path, row=i)
            rid = clean_text(rec.get("id")).strip()
            if _RAW_BYTES.search(rid):
                raise DataError("cell contains bytes that are not valid UTF-8", path=path, row=i, column="id")
            if not rid:
                raise DataError("empty id", path=path, row=i, column="id")
            cells = [_json_list_cell(rec.get(c), path=path, row=i, column=c) for c in ARENA_TEXT_COLUMNS]
            label = _one_hot_label([rec.get(c) for c in ARENA_LABEL_COLUMNS], path=path, row=i) if labelled else None
            return Pair(id=rid, turns=_make_turns(*cells, path=path, row=i), label=label,
                        model_a=_opt(rec.get("model_a")), model_b=_opt(rec.get("model_b")), source=source)

        acc.add(i, build)
    if not acc.pairs and not acc.dropped:
        raise DataError("file has a header but no rows", path=path)
    return LoadResult(acc.pairs, acc.dropped)


def _opt(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = clean_text(value).strip()
    return text or None


@_reader("arena")
def read_arena(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    columns, rows = _arena_table(path)
    return arena_records(rows, columns, path=str(path), skip_invalid=skip_invalid)


@_reader("arena-votes")
def read_arena_votes(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    columns, rows = _arena_table(path)
    if missing := [c for c in ("id", "model_a", "model_b", "winner") if c not in columns]:
        raise DataError(f"missing required column(s) {', '.join(missing)}", path=str(path), column=missing[0])
    names = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie", "both_bad": "tie"}
    acc = _Rows(str(path), skip_invalid)
    for i, rec in enumerate(rows, start=1):
        def build(rec=rec, i=i) -> Pair:
            winner = str(rec.get("winner", "")).strip()
            if winner not in names:
                raise DataError(f"unknown winner {winner!r}", path=str(path), row=i, column="winner")
            return Pair(id=str(rec["id"]), turns=(Turn("", "", ""),), label=one_hot(names[winner]),
                        model_a=_opt(rec.get("model_a")), model_b=_opt(rec.get("model_b")), source="arena-votes",
                        meta={"winner": winner})

        acc.add(i, build)
    return LoadResult(acc.pairs, acc.dropped)


# --------------------------------------------------------------------------------------------- other public sets
@_reader("arena-conversations")
def read_arena_conversations(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    doc = _json_document(path)
    examples = doc.get("examples") if isinstance(doc, dict) else None
    if not isinstance(examples, list):
        raise DataError("expected a JSON object with an 'examples' list", path=str(path), column="examples")
    winners = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie"}
    acc = _Rows(str(path), skip_invalid)
    for i, ex in enumerate(examples, start=1):
        def build(ex=ex, i=i) -> Pair:
            ctx = ex.get("context") or {}
            winner = ctx.get("winner")
            if winner not in winners:
                raise DataError(f"unknown winner {winner!r}", path=str(path), row=i, column="winner")
            turn = Turn(clean_text(ex.get("input")), clean_text(ctx.get("response_a")),
                        clean_text(ctx.get("response_b")))
            return Pair(id=f"{path.stem}-{i}", turns=(turn,), label=one_hot(winners[winner]),
                        model_a=_opt(ctx.get("model_a")), model_b=_opt(ctx.get("model_b")),
                        source="arena-conversations")

        acc.add(i, build)
    return LoadResult(acc.pairs, acc.dropped)


@_reader("autoj")
def read_autoj(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    acc = _Rows(str(path), skip_invalid)
    for i, obj in _json_lines(path):
        def build(obj=obj, i=i) -> Pair:
            label = obj.get("label")
            if label not in (0, 1, 2):
                raise DataError(f"label must be 0, 1 or 2, got {label!r}", path=str(path), row=i, column="label")
            turn = Turn(clean_text(obj.get("prompt")), clean_text(obj.get("response 1")),
                        clean_text(obj.get("response 2")))
            return Pair(id=f"autoj-{i}", turns=(turn,), label=one_hot(LABELS[label]), source="autoj",
                        meta={"scenario": obj.get("scenario")})

        acc.add(i, build)
    return LoadResult(acc.pairs, acc.dropped)


@_reader("pandalm")
def read_pandalm(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    doc = _json_document(path)
    if not isinstance(doc, list):
        raise DataError("expected a JSON list", path=str(path))
    names = {1: "a", 2: "b", 0: "tie"}
    acc = _Rows(str(path), skip_invalid)
    for i, obj in enumerate(doc, start=1):
        def build(obj=obj, i=i) -> Pair:
            votes = []
            for col in ("annotator1", "annotator2", "annotator3"):
                try:
                    votes.append(names[int(obj.get(col))])
                except (TypeError, ValueError, KeyError):
                    raise DataError(f"vote must be 0, 1 or 2, got {obj.get(col)!r}", path=str(path), row=i,
                                    column=col) from None
            top, count = Counter(votes).most_common(1)[0]
            label = top if count >= 2 else "tie"
            prompt = clean_text(obj.get("instruction"))
            if obj.get("input"):
                prompt = f"{prompt}\n\n{clean_text(obj.get('input'))}"
            turn = Turn(prompt, clean_text(obj.get("response1")), clean_text(obj.get("response2")))
            key = obj.get("cmp_key", "")
            models = str(key).split("_", 1) if key else [None, None]
            return Pair(id=f"pandalm-{obj.get('idx', i)}", turns=(turn,), label=one_hot(label), source="pandalm",
                        model_a=models[0], model_b=models[-1], meta={"votes": votes})

        acc.add(i, build)
    return LoadResult(acc.pairs, acc.dropped)


@_reader("llmbar")
def read_llmbar(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    doc = _json_document(path)
    if not isinstance(doc, list):
        raise DataError("expected a JSON list", path=str(path))
    acc = _Rows(str(path), skip_invalid)
    for i, obj in enumerate(doc, start=1):
        def build(obj=obj, i=i) -> Pair:
            label = obj.get("label")
            if label not in (1, 2):
                raise DataError(f"label must be 1 or 2, got {label!r}", path=str(path), row=i, column="label")
            turn = Turn(clean_text(obj.get("input")), clean_text(obj.get("output_1")),
                        clean_text(obj.get("output_2")))
            return Pair(id=f"{path.stem}-{i}", turns=(turn,), label=one_hot("a" if label == 1 else "b"),
                        source="llmbar")

        acc.add(i, build)
    return LoadResult(acc.pairs, acc.dropped)


_HH_SPLIT = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_transcript(text: str) -> list[tuple[str, str]]:
    """``"\\n\\nHuman: q\\n\\nAssistant: a ..."`` -> ``[(q, a), ...]`` (a missing last answer becomes ``""``)."""
    parts = _HH_SPLIT.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    turns: list[tuple[str, str]] = []
    for role, content in zip(parts[1::2], parts[2::2], strict=False):
        if role == "Human":
            turns.append((content.strip(), ""))
        elif turns:
            q, a = turns[-1]
            turns[-1] = (q, f"{a}\n\n{content.strip()}".strip() if a else content.strip())
        else:
            turns.append(("", content.strip()))
    return turns


@_reader("hh-rlhf")
def read_hh_rlhf(path: Path, *, skip_invalid: bool = False, seed: int = 0, **_: Any) -> LoadResult:
    rng = random.Random(seed)
    acc = _Rows(str(path), skip_invalid)
    for i, obj in _json_lines(path):
        swap = rng.random() < 0.5  # drawn for every row, so placement does not depend on skipped rows

        def build(obj=obj, i=i, swap=swap) -> Pair:
            for col in ("chosen", "rejected"):
                if not isinstance(obj.get(col), str):
                    raise DataError("expected a transcript string", path=str(path), row=i, column=col)
            chosen, rejected = parse_hh_transcript(obj["chosen"]), parse_hh_transcript(obj["rejected"])
            if not chosen or not rejected:
                raise DataError("no Human/Assistant turns found", path=str(path), row=i, column="chosen")
            n = max(len(chosen), len(rejected))
            chosen += [("", "")] * (n - len(chosen))
            rejected += [("", "")] * (n - len(rejected))
            first, second = (rejected, chosen) if swap else (chosen, rejected)
            turns = tuple(Turn(clean_text(c[0] or r[0]), clean_text(c[1]), clean_text(r[1]))
                          for c, r in zip(first, second, strict=True))
            return Pair(id=f"hh-{i}", turns=turns, label=one_hot("b" if swap else "a"), source="hh-rlhf")

        acc.add(i, build)
    return LoadResult(acc.pairs, acc.dropped)


# --------------------------------------------------------------------------------------------- prefpred JSONL
def _soft_label(value: Any, *, path: str, row: int) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in LABELS:
            raise DataError(f"label must be one of a, b, tie, got {value!r}", path=path, row=row, column="label")
        return one_hot(value)
    if isinstance(value, dict):
        value = [value.get(k) for k in LABELS]
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise DataError("label must be a, b, tie or three probabilities", path=path, row=row, column="label")
    try:
        probs = [float(v) for v in value]
    except (TypeError, ValueError):
        raise DataError(f"label probabilities must be numbers, got {value!r}", path=path, row=row,
                        column="label") from None
    if any(p < 0 or p > 1 for p in probs) or abs(sum(probs) - 1.0) > 1e-3:
        raise DataError(f"label probabilities must lie in [0, 1] and sum to 1, got {value!r}", path=path, row=row,
                        column="label")
    s = sum(probs)
    return (probs[0] / s, probs[1] / s, probs[2] / s)


@_reader("prefpred-jsonl")
def read_prefpred_jsonl(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    acc = _Rows(str(path), skip_invalid)
    known = {"id", "prompt", "response_a", "response_b", "label", "model_a", "model_b", "source", "weight"}
    for i, obj in _json_lines(path):
        def build(obj=obj, i=i) -> Pair:
            for col in ("id", "prompt", "response_a", "response_b"):
                if col not in obj:
                    raise DataError("missing key", path=str(path), row=i, column=col)
            turns = _make_turns(*(_turn_list(obj[c]) for c in ARENA_TEXT_COLUMNS), path=str(path), row=i)
            try:
                weight = float(obj.get("weight", 1.0))
            except (TypeError, ValueError):
                raise DataError(f"weight must be a number, got {obj.get('weight')!r}", path=str(path), row=i,
                                column="weight") from None
            return Pair(id=str(obj["id"]), turns=turns, label=_soft_label(obj.get("label"), path=str(path), row=i),
                        model_a=_opt(obj.get("model_a")), model_b=_opt(obj.get("model_b")),
                        source=str(obj.get("source", "prefpred")), weight=weight,
                        meta={k: v for k, v in obj.items() if k not in known})

        acc.add(i, build)
    return LoadResult(acc.pairs, acc.dropped)


def pair_to_json(pair: Pair) -> dict[str, Any]:
    """The prefpred JSONL record of a pair (inverse of the ``prefpred-jsonl`` reader)."""
    rec: dict[str, Any] = {
        "id": pair.id,
        "prompt": [t.prompt for t in pair.turns],
        "response_a": [t.response_a for t in pair.turns],
        "response_b": [t.response_b for t in pair.turns],
        "label": list(pair.label) if pair.label is not None else None,
        "model_a": pair.model_a,
        "model_b": pair.model_b,
        "source": pair.source,
    }
    if pair.weight != 1.0:
        rec["weight"] = pair.weight
    rec.update(pair.meta)
    return rec


def write_pairs_jsonl(pairs: Iterable[Pair], path: str | Path, *, force: bool = True) -> Path:
    """Write pairs as prefpred JSONL, atomically."""
    with atomic_path(path, force=force) as tmp, tmp.open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(pair_to_json(p), ensure_ascii=False) + "\n")
    return Path(path)


def write_arena_csv(pairs: Iterable[Pair], path: str | Path, *, labels: bool = True, force: bool = True) -> Path:
    """Write pairs in the Kaggle LMSYS layout, atomically: JSON-encoded turn lists and, with ``labels``, one-hot
    ``winner_model_a/b/tie`` columns (soft labels are written as their most probable class); without ``labels``
    the test layout ``id,prompt,response_a,response_b``."""
    cols = ["id", "model_a", "model_b", *ARENA_TEXT_COLUMNS, *ARENA_LABEL_COLUMNS] if labels \
        else ["id", *ARENA_TEXT_COLUMNS]
    with atomic_path(path, force=force) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for p in pairs:
            row = {"id": p.id, "model_a": p.model_a or "", "model_b": p.model_b or "",
                   "prompt": json.dumps([t.prompt for t in p.turns], ensure_ascii=False),
                   "response_a": json.dumps([t.response_a for t in p.turns], ensure_ascii=False),
                   "response_b": json.dumps([t.response_b for t in p.turns], ensure_ascii=False)}
            if labels:
                if p.hard_label is None:
                    raise ValueError(f"pair {p.id!r} has no label (write with labels=False for a test file)")
                row.update(zip(ARENA_LABEL_COLUMNS, (int(v) for v in one_hot(p.hard_label)), strict=True))
            w.writerow([row[c] for c in cols])
    return Path(path)


# --------------------------------------------------------------------------------------------- detection + API
def detect_format(path: Path) -> str:
    """Guess the reader for ``path`` from its name and first record."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "arena"
    if name.endswith((".csv", ".csv.gz")):
        data = _read_bytes(path)
        header = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").lower()
        cols = {c.strip().strip('"') for c in header.split(",")}
        if {"winner", "model_a", "model_b"} <= cols and "prompt" not in cols:
            return "arena-votes"
        return "arena"
    if name.endswith((".jsonl", ".jsonl.gz")):
        first = next(_json_lines(path), None)
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
        doc = _json_document(path)
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
    raise DataError(f"unknown file type {path.suffix!r} (csv, parquet, json, jsonl)", path=str(path))


def read_pairs(path: str | Path, *, format: str = "auto", limit: int | None = None, skip_invalid: bool = False,
               seed: int = 0) -> LoadResult:
    """Read and validate pairs from a file or a directory of files; see the module docstring for formats."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _looks_like_data(p))
        if not files:
            raise DataError("directory holds no data files", path=str(path))
        results = [read_pairs(p, format=format, skip_invalid=skip_invalid, seed=seed) for p in files]
        pairs = [pr for r in results for pr in r.pairs]
        _check_unique(pairs, str(path))
        res = LoadResult(pairs[:limit] if limit else pairs, [d for r in results for d in r.dropped], str(path),
                         ",".join(sorted({r.format or "" for r in results})))
    else:
        fmt = detect_format(path) if format == "auto" else format
        if fmt not in READERS:
            raise UserError(f"unknown data format {fmt!r} (known: {', '.join(sorted(READERS))})")
        res = READERS[fmt](path, skip_invalid=skip_invalid, seed=seed)
        res.path, res.format = str(path), fmt
        if limit:
            res.pairs = res.pairs[:limit]
    if res.dropped:
        logger.warning("%s: dropped %d invalid row(s): %s", path, len(res.dropped),
                       "; ".join(f"{k} ({v})" for k, v in res.drop_summary().items()))
    return res


def _looks_like_data(p: Path) -> bool:
    return p.name.lower().endswith((".csv", ".parquet", ".json", ".jsonl", ".jsonl.gz", ".csv.gz"))


def _check_unique(pairs: Sequence[Pair], path: str) -> None:
    seen: set[str] = set()
    for i, p in enumerate(pairs, start=1):
        if p.id in seen:
            raise DataError(f"duplicate id {p.id!r} across files", path=path, row=i, column="id")
        seen.add(p.id)


def load_pairs(path: str | Path, *, format: str = "auto", limit: int | None = None, skip_invalid: bool = False,
               seed: int = 0) -> list[Pair]:
    """Read and validate pairs; see :func:`read_pairs`."""
    return read_pairs(path, format=format, limit=limit, skip_invalid=skip_invalid, seed=seed).pairs


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
        raise UserError(f"could not load the hub dataset {name!r} ({why}); pass --data PATH to a local file "
                        "(e.g. Kaggle train.csv)") from None
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    res = arena_records(iter(ds), ds.column_names, path=f"hub:{name}", skip_invalid=skip_invalid)
    res.path, res.format = f"hub:{name}", "arena"
    return res


def load_data(cfg: DataConfig, *, seed: int = 0) -> LoadResult:
    """Load what a :class:`~prefpred.config.DataConfig` names (a path, else the hub dataset)."""
    if cfg.path:
        return read_pairs(cfg.path, format=cfg.format, limit=cfg.limit, skip_invalid=cfg.skip_invalid, seed=seed)
    return load_hub_dataset(cfg.hub_dataset, limit=cfg.limit, skip_invalid=cfg.skip_invalid)


def load_extra(cfg: DataConfig, *, seed: int = 0) -> list[Pair]:
    """The extra (e.g. teacher-labelled) training pairs of ``cfg``, weighted by ``extra_weight``.

    Unlabelled rows (e.g. teacher failures) are left out with a log line, since they cannot be trained on.
    """
    if not cfg.extra_path:
        return []
    res = read_pairs(cfg.extra_path, skip_invalid=cfg.skip_invalid, seed=seed)
    labelled = [p for p in res.pairs if p.label is not None]
    if len(labelled) < len(res.pairs):
        logger.warning("%s: %d extra row(s) without a label left out", cfg.extra_path,
                       len(res.pairs) - len(labelled))
    from dataclasses import replace

    return [replace(p, weight=p.weight * cfg.extra_weight) for p in labelled]


# --------------------------------------------------------------------------------------------- stats
def _percentiles(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (5, 25, 50, 75, 95)} | {"max": float(arr.max())}


def pairs_summary(pairs: Sequence[Pair]) -> dict[str, Any]:
    """Rows, label mix, turns, length percentiles (characters) and duplicates of a set of pairs."""
    labels = Counter(p.hard_label or "unlabelled" for p in pairs)
    soft = sum(1 for p in pairs if p.label is not None and not p.is_hard)
    turns = Counter(len(p.turns) for p in pairs)
    content = Counter((p.text_prompt(), p.text_a(), p.text_b()) for p in pairs)
    prompts = Counter(p.prompt.strip().casefold() for p in pairs)
    return {
        "rows": len(pairs),
        "labels": {k: labels.get(k, 0) for k in (*LABELS, "unlabelled") if labels.get(k, 0) or k in LABELS},
        "soft_labels": soft,
        "sources": dict(Counter(p.source for p in pairs)),
        "turns": {"single": turns.get(1, 0), "multi": sum(v for k, v in turns.items() if k > 1),
                  "max": max(turns) if turns else 0},
        "length_chars": {
            "prompt": _percentiles([len(p.text_prompt()) for p in pairs]),
            "response_a": _percentiles([len(p.text_a()) for p in pairs]),
            "response_b": _percentiles([len(p.text_b()) for p in pairs]),
        },
        "duplicates": {
            "identical_pairs": sum(c - 1 for c in content.values() if c > 1),
            "repeated_prompts": sum(c - 1 for c in prompts.values() if c > 1),
            "identical_responses": sum(1 for p in pairs if p.text_a() == p.text_b()),
        },
    }
