"""The readers of every supported format (see :mod:`prefpred.data` for the table), registered in
:data:`prefpred.data_io.READERS`. Each returns a :class:`~prefpred.data_io.LoadResult`; bad rows raise
:class:`~prefpred.types.DataError` (file, row, column) or are dropped with ``skip_invalid``.
"""

from __future__ import annotations

import csv
import io
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.data_io import (
    ARENA_LABEL_COLUMNS,
    ARENA_TEXT_COLUMNS,
    BOTH_BAD,
    NOTE_BOTH_BAD,
    RAW_BYTES,
    LoadResult,
    Rows,
    clean_text,
    is_parquet,
    json_document,
    json_lines,
    json_list_cell,
    make_turns,
    one_hot_label,
    read_bytes,
    register_reader,
    show,
    turn_list,
)
from prefpred.types import LABELS, DataError, Pair, Turn, one_hot


# --------------------------------------------------------------------------------------------- arena (Kaggle / HF)
def _arena_table(path: Path) -> tuple[list[str], Iterable[dict[str, Any]]]:
    if is_parquet(path):
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
    text = read_bytes(path).decode("utf-8-sig", errors="surrogateescape")
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
        found = show(", ".join(columns), 200).strip("'\"")
        raise DataError(f"missing required column(s) {', '.join(missing)} (found: {found})", path=path,
                        column=missing[0])
    present = [c for c in ARENA_LABEL_COLUMNS if c in columns]
    if present and len(present) != 3:
        absent = [c for c in ARENA_LABEL_COLUMNS if c not in present]
        raise DataError(f"missing label column(s) {', '.join(absent)}", path=path, column=absent[0])
    labelled = bool(present)
    acc = Rows(path, skip_invalid)
    for i, rec in enumerate(rows, start=1):
        def build(rec=rec, i=i) -> Pair:
            if None in rec:  # csv.DictReader puts surplus fields under None
                raise DataError("row has more fields than the header", path=path, row=i)
            rid = clean_text(rec.get("id")).strip()
            if RAW_BYTES.search(rid):
                raise DataError("cell contains bytes that are not valid UTF-8", path=path, row=i, column="id")
            if not rid:
                raise DataError("empty id", path=path, row=i, column="id")
            cells = [json_list_cell(rec.get(c), path=path, row=i, column=c) for c in ARENA_TEXT_COLUMNS]
            label = one_hot_label([rec.get(c) for c in ARENA_LABEL_COLUMNS], path=path, row=i) if labelled else None
            return Pair(id=rid, turns=make_turns(*cells, path=path, row=i, notes=acc.notes), label=label,
                        model_a=_opt(rec.get("model_a")), model_b=_opt(rec.get("model_b")), source=source)

        acc.add(i, build)
    if not acc.pairs and not acc.dropped:
        raise DataError("file has a header but no rows", path=path)
    return acc.result()


def _opt(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = clean_text(value).strip()
    return text or None


@register_reader("arena")
def read_arena(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    columns, rows = _arena_table(path)
    return arena_records(rows, columns, path=str(path), skip_invalid=skip_invalid)


@register_reader("arena-votes")
def read_arena_votes(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    columns, rows = _arena_table(path)
    if missing := [c for c in ("id", "model_a", "model_b", "winner") if c not in columns]:
        raise DataError(f"missing required column(s) {', '.join(missing)}", path=str(path), column=missing[0])
    names = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie", "both_bad": "tie"}
    acc = Rows(str(path), skip_invalid)
    for i, rec in enumerate(rows, start=1):
        def build(rec=rec, i=i) -> Pair:
            winner = str(rec.get("winner", "")).strip()
            if winner not in names:
                raise DataError(f"unknown winner {show(winner)}", path=str(path), row=i, column="winner")
            if winner in BOTH_BAD:
                acc.notes[NOTE_BOTH_BAD] += 1
            return Pair(id=str(rec["id"]), turns=(Turn("", "", ""),), label=one_hot(names[winner]),
                        model_a=_opt(rec.get("model_a")), model_b=_opt(rec.get("model_b")), source="arena-votes",
                        meta={"winner": winner})

        acc.add(i, build)
    return acc.result()


# --------------------------------------------------------------------------------------------- other public sets
@register_reader("arena-conversations")
def read_arena_conversations(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    doc = json_document(path)
    examples = doc.get("examples") if isinstance(doc, dict) else None
    if not isinstance(examples, list):
        raise DataError("expected a JSON object with an 'examples' list", path=str(path), column="examples")
    winners = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie"}
    acc = Rows(str(path), skip_invalid)
    for i, ex in enumerate(examples, start=1):
        def build(ex=ex, i=i) -> Pair:
            ctx = ex.get("context") or {}
            winner = ctx.get("winner")
            if winner not in winners:
                raise DataError(f"unknown winner {show(winner)}", path=str(path), row=i, column="winner")
            if winner in BOTH_BAD:
                acc.notes[NOTE_BOTH_BAD] += 1
            turn = Turn(clean_text(ex.get("input")), clean_text(ctx.get("response_a")),
                        clean_text(ctx.get("response_b")))
            return Pair(id=f"{path.stem}-{i}", turns=(turn,), label=one_hot(winners[winner]),
                        model_a=_opt(ctx.get("model_a")), model_b=_opt(ctx.get("model_b")),
                        source="arena-conversations")

        acc.add(i, build)
    return acc.result()


@register_reader("autoj")
def read_autoj(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    acc = Rows(str(path), skip_invalid)
    for i, obj in json_lines(path):
        def build(obj=obj, i=i) -> Pair:
            label = obj.get("label")
            if label not in (0, 1, 2):
                raise DataError(f"label must be 0, 1 or 2, got {show(label)}", path=str(path), row=i, column="label")
            turn = Turn(clean_text(obj.get("prompt")), clean_text(obj.get("response 1")),
                        clean_text(obj.get("response 2")))
            return Pair(id=f"autoj-{i}", turns=(turn,), label=one_hot(LABELS[label]), source="autoj",
                        meta={"scenario": obj.get("scenario")})

        acc.add(i, build)
    return acc.result()


@register_reader("pandalm")
def read_pandalm(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    doc = json_document(path)
    if not isinstance(doc, list):
        raise DataError("expected a JSON list", path=str(path))
    names = {1: "a", 2: "b", 0: "tie"}
    acc = Rows(str(path), skip_invalid)
    for i, obj in enumerate(doc, start=1):
        def build(obj=obj, i=i) -> Pair:
            votes = []
            for col in ("annotator1", "annotator2", "annotator3"):
                try:
                    votes.append(names[int(obj.get(col))])
                except (TypeError, ValueError, KeyError):
                    raise DataError(f"vote must be 0, 1 or 2, got {show(obj.get(col))}", path=str(path), row=i,
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
    return acc.result()


@register_reader("llmbar")
def read_llmbar(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    doc = json_document(path)
    if not isinstance(doc, list):
        raise DataError("expected a JSON list", path=str(path))
    acc = Rows(str(path), skip_invalid)
    for i, obj in enumerate(doc, start=1):
        def build(obj=obj, i=i) -> Pair:
            label = obj.get("label")
            if label not in (1, 2):
                raise DataError(f"label must be 1 or 2, got {show(label)}", path=str(path), row=i, column="label")
            turn = Turn(clean_text(obj.get("input")), clean_text(obj.get("output_1")),
                        clean_text(obj.get("output_2")))
            return Pair(id=f"{path.stem}-{i}", turns=(turn,), label=one_hot("a" if label == 1 else "b"),
                        source="llmbar")

        acc.add(i, build)
    return acc.result()


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


@register_reader("hh-rlhf")
def read_hh_rlhf(path: Path, *, skip_invalid: bool = False, seed: int = 0, **_: Any) -> LoadResult:
    rng = random.Random(seed)
    acc = Rows(str(path), skip_invalid)
    for i, obj in json_lines(path):
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
    return acc.result()


# --------------------------------------------------------------------------------------------- prefpred JSONL
def _soft_label(value: Any, *, path: str, row: int) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in LABELS:
            raise DataError(f"label must be one of a, b, tie, got {show(value)}", path=path, row=row, column="label")
        return one_hot(value)
    if isinstance(value, dict):
        value = [value.get(k) for k in LABELS]
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise DataError("label must be a, b, tie or three probabilities", path=path, row=row, column="label")
    try:
        probs = [float(v) for v in value]
    except (TypeError, ValueError):
        raise DataError(f"label probabilities must be numbers, got {show(value)}", path=path, row=row,
                        column="label") from None
    if not all(0 <= p <= 1 for p in probs) or abs(sum(probs) - 1.0) > 1e-3:  # NaN fails both
        raise DataError(f"label probabilities must lie in [0, 1] and sum to 1, got {show(value)}", path=path, row=row,
                        column="label")
    s = sum(probs)
    return (probs[0] / s, probs[1] / s, probs[2] / s)


@register_reader("prefpred-jsonl")
def read_prefpred_jsonl(path: Path, *, skip_invalid: bool = False, **_: Any) -> LoadResult:
    acc = Rows(str(path), skip_invalid)
    known = {"id", "prompt", "response_a", "response_b", "label", "model_a", "model_b", "source", "weight"}
    for i, obj in json_lines(path):
        def build(obj=obj, i=i) -> Pair:
            for col in ("id", "prompt", "response_a", "response_b"):
                if col not in obj:
                    raise DataError("missing key", path=str(path), row=i, column=col)
            turns = make_turns(*(turn_list(obj[c]) for c in ARENA_TEXT_COLUMNS), path=str(path), row=i,
                                notes=acc.notes)
            try:
                weight = float(obj.get("weight", 1.0))
            except (TypeError, ValueError):
                weight = math.nan
            if not (math.isfinite(weight) and weight >= 0):  # NaN, inf and negatives would poison training
                raise DataError(f"weight must be a finite number >= 0, got {show(obj.get('weight'))}",
                                path=str(path), row=i, column="weight")
            return Pair(id=str(obj["id"]), turns=turns, label=_soft_label(obj.get("label"), path=str(path), row=i),
                        model_a=_opt(obj.get("model_a")), model_b=_opt(obj.get("model_b")),
                        source=str(obj.get("source", "prefpred")), weight=weight,
                        meta={k: v for k, v in obj.items() if k not in known})

        acc.add(i, build)
    return acc.result()
