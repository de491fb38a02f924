"""Teacher labels: judge every pair twice (A/B exchanged), aggregate to a soft label, write prefpred JSONL.

The output (``labels.jsonl``) is the ``prefpred-jsonl`` format read by :func:`prefpred.data.load_pairs`: one line
per input pair, in input order, with ``id``, ``prompt``/``response_a``/``response_b`` (lists of turns),
``model_a``/``model_b``, ``source`` = ``teacher:<model>`` and ``label`` = [p_a, p_b, p_tie], plus ``teacher``,
``style``, ``verdicts`` and ``confidences`` (both orders, in the original frame), ``flip``, ``criteria``
(per-criterion [score_a, score_b] averaged over both orders), ``score_a``/``score_b`` and ``human_label`` when
the input was labelled. A pair whose judgement failed has ``failed: true``, ``error``, ``raw`` (the teacher's
texts per order) and no ``label``.

The work itself lives in the answer cache (see :mod:`prefpred.synth.cache`); the labels file is rebuilt from
it atomically at the end of every run, so it is always either the previous complete file or the new one. An
existing labels file is only replaced with ``force=True`` (checked before any request is sent). Every cached
answer is validated again when the file is built, so a label is never made from a non-finite or out-of-range
answer (e.g. one cached by an older version); such a pair is written as failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.synth.cache import AnswerCache, cache_key
from prefpred.synth.client import ClientConfig, Job, RunStats, TeacherClient, resolve_api_key, run_jobs_async
from prefpred.synth.schema import (
    STYLE_VERSION,
    MalformedAnswer,
    aggregate,
    answer_schema,
    build_messages,
    check_answer,
    pair_hash,
    parse_answer,
)
from prefpred.types import ConfigError, Pair
from prefpred.utils import atomic_path, same_file

logger = logging.getLogger(__name__)

ORDERS = ("ab", "ba")


@dataclass
class LabelReport:
    """What a labelling run did: pairs labelled/failed, the teacher's flip rate, request counts."""

    pairs: int
    labelled: int
    failed: int
    flips: int
    agreement: float | None
    """Share of labelled pairs whose soft label's argmax matches the input's (human) label, if any."""
    out: str | None
    cache: str
    teacher: str
    stats: RunStats = field(default_factory=RunStats)
    json_mode: str | None = None
    """The structured-output dialect the server took (``None``: no request was sent)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed pairs by cause: ``malformed`` (the teacher's text), ``rejected`` (HTTP 400/422), ``error`` (no
    answer), ``not judged`` (a run stopped before the pair was asked)."""

    @property
    def flip_rate(self) -> float | None:
        return self.flips / self.labelled if self.labelled else None

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "labelled": self.labelled, "failed": self.failed, "flips": self.flips,
                "flip_rate": self.flip_rate, "agreement_with_input_labels": self.agreement,
                "failures": dict(self.failures), "teacher": self.teacher, "style": STYLE_VERSION,
                "json_mode": self.json_mode, "out": self.out, "cache": self.cache, "requests": self.stats.to_dict()}


def judge_key(teacher: str, shown: Pair) -> str:
    """Cache key of judging ``shown`` (a pair in the order presented) with ``teacher``."""
    return cache_key("judge", teacher, STYLE_VERSION, pair_hash(shown))


def judge_jobs(pairs: Sequence[Pair], teacher: str, *, max_tokens: int | None = None) -> list[Job]:
    """Two jobs per pair (as shown, then swapped), in pair order."""
    schema = answer_schema()
    jobs = []
    for pair in pairs:
        for order, shown in zip(ORDERS, (pair, pair.swapped()), strict=True):
            h = pair_hash(shown)
            jobs.append(Job(key=judge_key(teacher, shown), model=teacher, messages=build_messages(shown),
                            kind="judge", schema=schema, parse=parse_answer, max_tokens=max_tokens,
                            meta={"style": STYLE_VERSION, "pair_hash": h, "pair_id": pair.id, "order": order}))
    return jobs


def pair_record(pair: Pair, teacher: str, cache: AnswerCache,
                extra: Callable[[Pair], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The labels-file line of ``pair`` from the cached answers of both orders."""
    rec: dict[str, Any] = {
        "id": pair.id,
        "prompt": [t.prompt for t in pair.turns],
        "response_a": [t.response_a for t in pair.turns],
        "response_b": [t.response_b for t in pair.turns],
        "model_a": pair.model_a,
        "model_b": pair.model_b,
        "source": f"teacher:{teacher}",
        "teacher": teacher,
        "style": STYLE_VERSION,
    }
    if extra is not None:
        rec.update({k: v for k, v in extra(pair).items() if k not in rec})
    if pair.label is not None and all(math.isfinite(x) for x in pair.label):
        rec["human_label"] = list(pair.label)
    results = {o: _revalidated(cache.get(judge_key(teacher, s)))
               for o, s in zip(ORDERS, (pair, pair.swapped()), strict=True)}
    if all(r is not None and r["status"] == "ok" for r in results.values()):
        agg = aggregate(results["ab"]["answer"], results["ba"]["answer"])
        rec["label"] = agg.pop("label")
        rec.update(agg)
        return rec
    errors, raw = [], {}
    for order, r in results.items():
        if r is None:
            errors.append(f"{order}: not judged")
        elif r["status"] != "ok":
            errors.append(f"{order}: {r['status']}: {r.get('error')}")
            raw[order] = r.get("raw")
        else:
            raw[order] = r["answer"]
    rec.update(failed=True, error="; ".join(errors), raw=raw)
    return rec


def _revalidated(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    """A cached ``ok`` judgement whose answer no longer validates becomes ``malformed`` (the cache is untouched)."""
    if rec is None or rec["status"] != "ok":
        return rec
    try:
        check_answer(rec.get("answer"))
    except (MalformedAnswer, KeyError, TypeError, AttributeError) as e:
        return {**rec, "status": "malformed", "error": f"cached answer is invalid: {e}", "raw": [rec.get("answer")]}
    return rec


def check_outputs(out: str | Path | None, *, force: bool, inputs: Sequence[str | Path] = (),
                  cache_path: str | Path | None = None) -> None:
    """Refuse, before any request is sent, to overwrite ``out`` without ``force``, or ever to write over one of
    ``inputs`` (the data being labelled) or to use an input or ``out`` as the cache."""
    if out is None:
        return
    out = Path(out)
    for inp in inputs:
        if same_file(out, Path(inp)):
            raise ConfigError(f"--out {out} is the input file {inp}: choose another output path")
        if cache_path is not None and same_file(Path(cache_path), Path(inp)):
            raise ConfigError(f"--cache {cache_path} is the input file {inp}: choose another cache path")
    if cache_path is not None and same_file(Path(cache_path), out):
        raise ConfigError(f"--cache {cache_path} is the output file: choose another cache path")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to overwrite it; the answer cache keeps finished work)")
    if out.exists() and out.is_dir():
        raise ConfigError(f"--out {out} is a directory: give a file path")


def write_labels(pairs: Sequence[Pair], teacher: str, cache: AnswerCache, out: str | Path,
                 extra: Callable[[Pair], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Build every pair's record from the cache and write them atomically to ``out``."""
    records = [pair_record(p, teacher, cache, extra) for p in pairs]
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
    return records


def summarize(pairs: Sequence[Pair], records: Sequence[dict[str, Any]], teacher: str, out: str | None,
              cache_path: str, stats: RunStats, json_mode: str | None = None) -> LabelReport:
    labelled = [r for r in records if "label" in r]
    failures: dict[str, int] = {}
    for r in records:
        if "label" not in r:
            cause = _failure_cause(r.get("error", ""))
            failures[cause] = failures.get(cause, 0) + 1
    agree = [(int(np.argmax(r["label"])), int(np.argmax(r["human_label"]))) for r in labelled
             if r.get("human_label") is not None]
    return LabelReport(
        pairs=len(pairs), labelled=len(labelled), failed=len(records) - len(labelled),
        flips=sum(1 for r in labelled if r["flip"]),
        agreement=(sum(a == b for a, b in agree) / len(agree)) if agree else None,
        out=out, cache=cache_path, teacher=teacher, stats=stats, json_mode=json_mode, failures=failures,
    )


def _failure_cause(error: str) -> str:
    """The cause of a failed pair from its ``error`` (``"ab: malformed: ...; ba: ..."``), malformed first."""
    for cause in ("malformed", "rejected", "error", "not judged"):
        if f": {cause}" in error:
            return cause
    return "error"


def default_cache_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".cache.jsonl")


async def label_pairs_async(pairs: Sequence[Pair], client: TeacherClient, cache: AnswerCache, *, teacher: str,
                            out: str | Path | None, retry_failed: bool = False, progress: bool | None = None,
                            extra: Callable[[Pair], dict[str, Any]] | None = None) -> LabelReport:
    """Judge ``pairs`` with ``client`` (answers go to ``cache``) and write the labels file ``out``."""
    jobs = judge_jobs(pairs, teacher)
    await run_jobs_async(jobs, client, cache, retry_failed=retry_failed, progress=progress, desc="judging")
    if out is not None:
        records = write_labels(pairs, teacher, cache, out, extra)
    else:
        records = [pair_record(p, teacher, cache, extra) for p in pairs]
    report = summarize(pairs, records, teacher, None if out is None else str(out), str(cache.path), client.stats,
                       client.json_mode)
    logger.info("labelled %d/%d pairs (%d failed); position-flip rate %s", report.labelled, report.pairs,
                report.failed, "n/a" if report.flip_rate is None else f"{report.flip_rate:.1%}")
    return report


def label_pairs(pairs: Sequence[Pair], cfg: ClientConfig, *, teacher: str, out: str | Path,
                cache_path: str | Path | None = None, api_key: str | None = None, retry_failed: bool = False,
                progress: bool | None = None, force: bool = False,
                inputs: Sequence[str | Path] = ()) -> LabelReport:
    """Label ``pairs`` with ``teacher`` behind ``cfg.base_url``; resumable through the cache (see module doc).

    An existing ``out`` is replaced only with ``force``; ``out`` is never one of ``inputs`` (the data files).
    """
    cfg.validate()
    cache_path = Path(cache_path) if cache_path is not None else default_cache_path(out)
    check_outputs(out, force=force, inputs=inputs, cache_path=cache_path)
    key = api_key if api_key is not None else resolve_api_key(cfg.api_key_env, cfg.base_url)

    async def main() -> LabelReport:
        client = TeacherClient(cfg, key)
        try:
            with AnswerCache(cache_path) as cache:
                return await label_pairs_async(pairs, client, cache, teacher=teacher, out=out,
                                               retry_failed=retry_failed, progress=progress)
        finally:
            await client.close()

    return asyncio.run(main())
