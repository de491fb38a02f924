"""The named steps every job (``run``, ``train``, ``experiment``) is made of, so each job reads as a short list.

1. :func:`load_job_data` — load the labelled pairs and the extra training-only pairs of ``cfg.data`` and check
   them (:func:`check_labelled`: not empty, every row labelled, ids unique);
2. :func:`check_classes` — refuse training pairs in which a class (a, b or tie) never occurs: a model trained on
   them gives that class a probability of ~1e-20, and one such pair in evaluation costs ~46 nats of log loss;
3. :func:`leak_free_extra` — the extra pairs without those whose normalized prompt is the prompt of a validation
   or holdout pair (teacher-labelled copies of evaluation prompts must not leak into training);
4. the run folder: :func:`prefpred.runs.new_run_dir` (assembled aside, moved into place atomically; ``run``) or
   :func:`prepare_in_place` (trained in place, so checkpoints survive a kill and the run can resume; ``train``,
   ``experiment``);
5. :func:`write_run_files` (``config.yaml``, ``splits.csv``) at the start, :func:`finish_run` (``metrics.json``
   with its ``kind``, ``report.md``) at the end; predictions go through
   :func:`prefpred.submission.write_predictions`.

Jobs that write nothing until the end use :func:`prefpred.runs.new_run_dir` directly; ``ensemble``,
``leaderboard`` and other new run kinds are meant to be built from these same steps.

Limits: the class check looks at label mass (soft labels count), so a class present only as a small share of
soft labels passes; ids are checked for uniqueness within the labelled data and within the extra pairs, not
across the two (extra ids never reach a prediction file). Under ``accelerate launch`` only the main process
removes a folder (``overwrite``) or the half-written checkpoints of a failed start (its other files are
rewritten by the new start).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.runs import is_complete, mark_complete, write_metrics
from prefpred.types import LABELS, DataError, Pair

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class JobData:
    """The checked data of a job: the labelled pairs, the extra training-only pairs and where they came from."""

    pairs: list[Pair]
    extra: list[Pair]
    where: str
    """The data's path or hub dataset id, for messages."""
    data_path: str | None
    """The file or folder read (``None`` for a hub dataset), as recorded in ``metrics.json``."""
    dropped: int = 0
    """Invalid rows dropped with ``skip_invalid``."""


def check_labelled(pairs: Sequence[Pair], where: str, *, purpose: str = "training") -> None:
    """Raise :class:`DataError` (one line) unless ``pairs`` is non-empty, fully labelled and has unique ids."""
    if not pairs:
        raise DataError(f"no pairs for {purpose}", path=where)
    unlabelled = [p for p in pairs if p.label is None]
    if unlabelled:
        raise DataError(f"{len(unlabelled)} row(s) have no label (first: id {unlabelled[0].id!r}); {purpose} "
                        "needs labelled data", path=where)
    seen: set[str] = set()
    for i, p in enumerate(pairs, start=1):
        if p.id in seen:
            raise DataError(f"duplicate id {p.id!r}", path=where, row=i, column="id")
        seen.add(p.id)


def check_classes(train_pairs: Sequence[Pair], where: str, *, part: str = "the training pairs") -> None:
    """Raise :class:`DataError` when a class never occurs (no label mass) in ``train_pairs``."""
    if not train_pairs:
        return
    mass = np.asarray([p.label for p in train_pairs if p.label is not None], dtype=np.float64).reshape(-1, 3)
    missing = [LABELS[k] for k in range(3) if mass[:, k].sum() <= 0]
    if missing:
        present = [LABELS[k] for k in range(3) if LABELS[k] not in missing]
        raise DataError(f"class(es) {', '.join(missing)} never occur in {part} (only {', '.join(present)}): a "
                        "model trained on them would give those classes ~0 probability; use data with all three "
                        "classes (a, b, tie)", path=where)


def load_job_data(data_cfg: Any, *, seed: int, purpose: str = "training") -> JobData:
    """Load ``data_cfg`` (a :class:`~prefpred.config.DataConfig`) and its extra pairs, checked; see the module."""
    from prefpred.data import load_data, load_extra

    loaded = load_data(data_cfg, seed=seed)
    pairs = list(loaded.pairs)
    where = str(loaded.path or data_cfg.path or data_cfg.hub_dataset)
    check_labelled(pairs, where, purpose=purpose)
    check_classes(pairs, where, part="the data")
    extra = load_extra(data_cfg, seed=seed)
    if extra:
        check_labelled(extra, str(data_cfg.extra_path), purpose="extra training data")
    logger.info("loaded %d pairs from %s%s", len(pairs), where,
                f" and {len(extra)} extra training pairs" if extra else "")
    return JobData(pairs=pairs, extra=extra, where=where, data_path=loaded.path or data_cfg.path,
                   dropped=len(getattr(loaded, "dropped", []) or []))


def leak_free_extra(extra: Sequence[Pair], held_out: Iterable[Pair], *, keys: Sequence[str] | None = None,
                    ) -> list[Pair]:
    """``extra`` without the pairs whose normalized prompt is the prompt of a ``held_out`` pair.

    ``keys`` are the extra pairs' normalized prompts when the caller has them already (one per extra pair).
    """
    from prefpred.splits import normalize_prompt

    if not extra:
        return []
    excluded = {normalize_prompt(p.prompt) for p in held_out}
    keys = keys if keys is not None else [normalize_prompt(p.prompt) for p in extra]
    kept = [e for e, k in zip(extra, keys, strict=True) if k not in excluded]
    if len(kept) < len(extra):
        logger.info("left out %d extra pair(s) whose prompt is a validation/holdout prompt", len(extra) - len(kept))
    return kept


def extra_prompt_keys(extra: Sequence[Pair]) -> list[str]:
    """Normalized prompts of the extra pairs (computed once for jobs that filter them several times)."""
    from prefpred.splits import normalize_prompt

    return [normalize_prompt(p.prompt) for p in extra]


# ------------------------------------------------------------------------------------------------ run folder
IN_PLACE_FILES = ("config.yaml", "splits.csv", "metrics.jsonl", "checkpoints")
"""What an in-place job writes before its first checkpoint: a folder holding only these (and no checkpoint)
is the leftover of a failed start and is safe to start over in."""


def is_main() -> bool:
    """Rank 0 or a lone process (from the launcher's environment: right before the process group exists)."""
    from prefpred.training.trainer import process_rank

    return process_rank() == 0


def join_processes(device: str | None = None) -> None:
    """Set up the process group of a multi-process run as the Trainer will: gloo for ``device`` cpu (default: when
    there is no CUDA), NCCL on GPUs. No-op in a single process or once set up."""
    from prefpred.training.trainer import world_size

    if world_size() > 1:
        import torch
        from accelerate import PartialState

        from prefpred.hf import resolve_device

        cpu = resolve_device(device) == "cpu" if device else not torch.cuda.is_available()
        PartialState(cpu=cpu)


def leave_processes() -> None:
    """Tear down the process group of a multi-process run, if one was set up (no-op otherwise).

    A process that exits with a gloo group still alive can abort at interpreter shutdown ("terminate called
    without an active exception", SIGABRT), turning a finished run into a failed exit code; so every job that
    joins processes leaves them before it returns.
    """
    from prefpred.training.trainer import world_size

    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every training process (no-op in a single process)."""
    from prefpred.training.trainer import world_size

    if world_size() > 1:
        from accelerate import PartialState

        join_processes()
        PartialState().wait_for_everyone()


def _failed_start(run_dir: Path) -> bool:
    """Whether ``run_dir`` is what a job left when it failed before its first checkpoint (see IN_PLACE_FILES)."""
    from prefpred.training.trainer import CHECKPOINT_DIR, last_checkpoint

    if last_checkpoint(run_dir / CHECKPOINT_DIR) is not None or is_complete(run_dir):
        return False
    names = {p.name for p in run_dir.iterdir()}
    if not names <= set(IN_PLACE_FILES):
        return False
    ckpt = run_dir / CHECKPOINT_DIR
    return not ckpt.exists() or (ckpt.is_dir() and all(p.is_dir() for p in ckpt.iterdir()))


def prepare_in_place(run_dir: Path, *, overwrite: bool, resume: bool) -> bool:
    """Check/clear ``run_dir`` of a job that trains in place; returns whether an unfinished run will be resumed.

    Empty or missing: start fresh. The leftover of a failed start (only files the job writes, no checkpoint):
    start over in it (logged). ``overwrite``: remove it (main process only). Unfinished with a checkpoint and
    ``resume``: resume. Anything else is an error naming the way out.
    """
    from prefpred.training.trainer import CHECKPOINT_DIR, last_checkpoint

    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return False
    if not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} exists and is not a directory")
    finished = is_complete(run_dir) or (run_dir / "metrics.json").is_file()
    resumable = last_checkpoint(run_dir / CHECKPOINT_DIR) is not None
    if overwrite:
        barrier()
        if is_main():
            shutil.rmtree(run_dir)
        barrier()
        return False
    if resumable and not finished and resume:
        return True
    if not finished and _failed_start(run_dir):
        logger.warning("%s holds only the files of a run that failed before its first checkpoint: starting over",
                       run_dir)
        barrier()
        if is_main():  # half-written checkpoint folders; the other files are rewritten from scratch
            shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
        barrier()
        return False
    raise FileExistsError(f"{run_dir} exists (use --force or another --name"
                          + (")" if finished or not resumable else "; set training.resume to continue it)"))


def write_run_files(run_dir: Path, cfg: Any, splits: Any = None) -> None:
    """Write the resolved ``config.yaml`` and (when given) ``splits.csv`` into ``run_dir`` (created)."""
    from prefpred.config import save_config
    from prefpred.utils import atomic_path

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if splits is not None:  # every column (an experiment's table also names each row's part)
        with atomic_path(run_dir / "splits.csv") as tmp:
            splits.to_csv(tmp, index=False)


def finish_run(run_dir: Path, metrics: dict[str, Any], *, kind: str, in_place: bool = False,
               drop_checkpoints: bool = False) -> Path:
    """Write ``metrics.json`` (with ``kind``) and ``report.md``; for an in-place run also drop its checkpoints
    (when asked) and write the completion marker (a :func:`~prefpred.runs.new_run_dir` run gets it on exit)."""
    from prefpred.report import build_report

    write_metrics(run_dir, metrics, kind=kind)
    build_report(run_dir)
    if in_place:
        if drop_checkpoints:
            from prefpred.training.trainer import CHECKPOINT_DIR

            shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
        mark_complete(run_dir)
    return run_dir


__all__ = ["IN_PLACE_FILES", "JobData", "check_classes", "check_labelled", "extra_prompt_keys",
           "finish_run", "leak_free_extra", "load_job_data", "prepare_in_place", "write_run_files"]
