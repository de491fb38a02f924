"""Synthetic pairs: candidate models answer new prompts, their answers are paired, then a teacher labels them.

Generated answers go to the same answer cache as judgements (keyed by model, generation settings and prompt),
so an interrupted run resumes without asking any model twice. For every prompt each two candidate models that
both answered form a pair (at most ``pairs_per_prompt`` of them, drawn with ``seed``); which answer is shown
as A is decided by a seeded coin, so no model sits in one position. Answers that could not be generated are
counted and logged and their pairs left out (the failure stays in the cache).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefpred.synth.cache import AnswerCache, cache_key
from prefpred.synth.client import ClientConfig, Job, RunStats, TeacherClient, resolve_api_key, run_jobs_async
from prefpred.synth.label import LabelReport, check_outputs, default_cache_path, label_pairs_async
from prefpred.types import ConfigError, DataError, Pair, Turn

logger = logging.getLogger(__name__)

GEN_VERSION = "generate/1"


@dataclass
class GenerationConfig:
    """How candidate models answer the prompts."""

    temperature: float = 0.7
    max_tokens: int = 1024
    system: str | None = None
    """Optional system message before each prompt."""
    pairs_per_prompt: int | None = None
    """Most pairs per prompt (``None``: every two models)."""
    seed: int = 0


def read_prompts(path: str | Path) -> list[tuple[str, str]]:
    """``(id, prompt)`` from a text file (one prompt per line) or JSONL with a ``prompt`` key (and optional ``id``).

    Blank lines are skipped; ids default to ``p<line number>``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=str(path))
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    is_jsonl = path.suffix in (".jsonl", ".json") or next((ln.lstrip().startswith("{") for ln in lines
                                                           if ln.strip()), False)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if is_jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"line is not valid JSON ({e.msg})", path=str(path), row=i) from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                raise DataError("each line needs a non-empty string 'prompt'", path=str(path), row=i,
                                column="prompt")
            pid, prompt = str(obj.get("id", f"p{i}")), obj["prompt"]
        else:
            pid, prompt = f"p{i}", line.strip()
        if pid in seen:
            raise DataError(f"duplicate id {pid!r}", path=str(path), row=i, column="id")
        seen.add(pid)
        out.append((pid, prompt))
    if not out:
        raise DataError("no prompts", path=str(path))
    return out


def _prompt_hash(prompt: str, system: str | None) -> str:
    return hashlib.sha256(json.dumps([system, prompt], ensure_ascii=False).encode("utf-8")).hexdigest()


def generation_key(model: str, prompt: str, gen: GenerationConfig) -> str:
    return cache_key("generate", model, GEN_VERSION, _prompt_hash(prompt, gen.system), f"{gen.temperature:g}",
                     str(gen.max_tokens))


def generation_jobs(prompts: Sequence[tuple[str, str]], models: Sequence[str], gen: GenerationConfig) -> list[Job]:
    jobs = []
    for pid, prompt in prompts:
        messages = ([{"role": "system", "content": gen.system}] if gen.system else []) + [
            {"role": "user", "content": prompt}]
        for model in models:
            jobs.append(Job(key=generation_key(model, prompt, gen), model=model, messages=messages, kind="generate",
                            temperature=gen.temperature, max_tokens=gen.max_tokens,
                            meta={"version": GEN_VERSION, "prompt_id": pid,
                                  "prompt_hash": _prompt_hash(prompt, gen.system)}))
    return jobs


def make_pairs(prompts: Sequence[tuple[str, str]], models: Sequence[str], cache: AnswerCache,
               gen: GenerationConfig) -> tuple[list[Pair], int]:
    """Pairs of generated answers, and how many (prompt, model) answers were missing."""
    pairs: list[Pair] = []
    missing = 0
    for pid, prompt in prompts:
        answers = {}
        for m in models:
            rec = cache.get(generation_key(m, prompt, gen))
            if rec is not None and rec["status"] == "ok":
                answers[m] = rec["answer"]
            else:
                missing += 1
        combos = list(itertools.combinations([m for m in models if m in answers], 2))
        rng = random.Random(f"{gen.seed}:{_prompt_hash(prompt, gen.system)}")
        if gen.pairs_per_prompt is not None and len(combos) > gen.pairs_per_prompt:
            combos = rng.sample(combos, gen.pairs_per_prompt)
        for m1, m2 in combos:
            ma, mb = (m2, m1) if rng.random() < 0.5 else (m1, m2)
            pairs.append(Pair(id=f"{pid}:{m1}~{m2}", turns=(Turn(prompt, answers[ma], answers[mb]),),
                              model_a=ma, model_b=mb, source="synth", meta={"prompt_id": pid}))
    return pairs, missing


@dataclass
class PairsReport:
    prompts: int
    models: list[str]
    generated: int
    missing: int
    generation: RunStats
    label: LabelReport

    def to_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "models": self.models, "answers": self.generated,
                "answers_missing": self.missing, "generation_requests": self.generation.to_dict(),
                "labelling": self.label.to_dict()}


def synth_pairs(prompts: Sequence[tuple[str, str]], models: Sequence[str], cfg: ClientConfig, *, teacher: str,
                out: str | Path, gen: GenerationConfig | None = None, teacher_cfg: ClientConfig | None = None,
                cache_path: str | Path | None = None, api_key: str | None = None, retry_failed: bool = False,
                progress: bool | None = None, force: bool = False, inputs: Sequence[str | Path] = ()) -> PairsReport:
    """Generate answers to ``prompts`` with ``models``, pair them and label the pairs with ``teacher``.

    An existing ``out`` is replaced only with ``force``; ``out`` is never one of ``inputs`` (the prompts file).
    """
    gen = gen or GenerationConfig()
    models = list(dict.fromkeys(models))
    if len(models) < 2:
        raise ConfigError("--models needs at least two candidate models")
    teacher_cfg = teacher_cfg or cfg
    cfg.validate()
    teacher_cfg.validate()
    if api_key is not None:
        key = tkey = api_key
    else:
        key = resolve_api_key(cfg.api_key_env, cfg.base_url)
        tkey = resolve_api_key(teacher_cfg.api_key_env, teacher_cfg.base_url)
    cache_path = Path(cache_path) if cache_path is not None else default_cache_path(out)
    check_outputs(out, force=force, inputs=inputs, cache_path=cache_path)

    async def main() -> PairsReport:
        gen_client = TeacherClient(cfg, key)
        judge_client = TeacherClient(teacher_cfg, tkey)
        try:
            with AnswerCache(cache_path) as cache:
                jobs = generation_jobs(prompts, models, gen)
                gstats = await run_jobs_async(jobs, gen_client, cache, retry_failed=retry_failed, progress=progress,
                                              desc="generating")
                pairs, missing = make_pairs(prompts, models, cache, gen)
                if missing:
                    logger.warning("%d answer(s) could not be generated; their pairs are left out "
                                   "(see %s)", missing, cache_path)
                if not pairs:
                    raise ConfigError("no pair could be built: every prompt lacks two generated answers")
                report = await label_pairs_async(pairs, judge_client, cache, teacher=teacher, out=out,
                                                 retry_failed=retry_failed, progress=progress,
                                                 extra=lambda p: dict(p.meta))
                return PairsReport(prompts=len(prompts), models=models, generated=len(jobs) - missing,
                                   missing=missing, generation=gstats, label=report)
        finally:
            await gen_client.close()
            await judge_client.close()

    return asyncio.run(main())
