"""Evaluation suites: one model scored on many labelled sets, one row per set (``prefpred evaluate --suite``).

Reward-model users judge a preference model by its agreement with humans on several sets, the way reward-model
benchmarks report per-subset results. A suite is a YAML file::

    datasets:
      - {name: autoj, path: "${shared}/autoj/testdata_pairwise.jsonl", format: autoj}
      - {name: mine, path: data/my-pairs.jsonl}          # format defaults to auto

``path`` is relative to the suite file, or starts with ``${shared}`` (:func:`prefpred.utils.repo_shared_data`:
the project's ``../shared/data`` or ``$PREFPRED_SHARED_DATA``). :data:`DEFAULT_SUITE` (``--suite default``, also
``configs/suites/default.yaml``) lists every labelled set there: Auto-J, PandaLM, LLMBar natural and its four
adversarial subsets, the MT-bench human judgments, HH-RLHF harmless and arena-conversations. A plain data file
given as ``--suite`` is a one-set suite. Sets whose file is absent are skipped with a note.

Per set, :func:`score_set` reports ``n``; **non-tie accuracy** (on pairs whose label is not a tie, the model is
right when it gives the winner more probability than the loser; equal counts half) with a percentile bootstrap
95% interval; log loss and 3-class accuracy only where the set has ties (on tie-free sets they would punish
every tie probability); swap consistency when the swapped pairs are scored too; and the mean tie probability.

Limits: rows are resampled independently in the bootstrap (pairs sharing a prompt are not grouped); hh-rlhf pairs
place chosen/rejected as A/B at random with a fixed seed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefpred.metrics import accuracy, log_loss, normalize_proba, swap_consistency
from prefpred.types import ConfigError, Pair, UserError, label_matrix
from prefpred.utils import repo_shared_data

logger = logging.getLogger(__name__)

SHARED = "${shared}"

DEFAULT_SUITE: tuple[tuple[str, str, str], ...] = (
    ("autoj", "${shared}/autoj/testdata_pairwise.jsonl", "autoj"),
    ("pandalm", "${shared}/pandalm/testset-v1.json", "pandalm"),
    ("llmbar-natural", "${shared}/llmbar/LLMBar_Natural.json", "llmbar"),
    ("llmbar-adv-neighbor", "${shared}/llmbar/LLMBar_Adversarial_Neighbor.json", "llmbar"),
    ("llmbar-adv-gptinst", "${shared}/llmbar/LLMBar_Adversarial_GPTInst.json", "llmbar"),
    ("llmbar-adv-gptout", "${shared}/llmbar/LLMBar_Adversarial_GPTOut.json", "llmbar"),
    ("llmbar-adv-manual", "${shared}/llmbar/LLMBar_Adversarial_Manual.json", "llmbar"),
    ("mtbench-human", "${shared}/llmbar/Processed_MT-Bench.json", "llmbar"),
    ("hh-rlhf-harmless", "${shared}/hh-rlhf/harmless-base_test.jsonl.gz", "hh-rlhf"),
    ("arena-conversations", "${shared}/arena-conversations/data_out.json", "arena-conversations"),
)
"""``(name, path, format)`` of the default suite (same list as ``configs/suites/default.yaml``)."""


@dataclasses.dataclass(frozen=True)
class SuiteEntry:
    """One set of a suite; ``path`` is ``None`` when it could not be resolved (``note`` says why)."""

    name: str
    path: Path | None
    format: str = "auto"
    note: str | None = None


def _resolve(raw: str, base: Path | None) -> tuple[Path | None, str | None]:
    if raw.startswith(SHARED):
        shared = repo_shared_data()
        if shared is None:
            return None, "no shared data folder (../shared/data or $PREFPRED_SHARED_DATA)"
        path = shared / raw[len(SHARED):].lstrip("/\\")
    else:
        path = Path(raw).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
    return (path, None) if path.exists() else (None, f"{path} not found")


def _formats() -> set[str]:
    """The reader names ``format`` may take (importing :mod:`prefpred.data` registers them)."""
    import prefpred.data  # noqa: F401
    from prefpred.data_io import READERS

    return set(READERS)


def _entries(items: Sequence[Any], where: str, base: Path | None) -> list[SuiteEntry]:
    out: list[SuiteEntry] = []
    known = _formats()
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not item.get("path"):
            raise ConfigError(f"{where}: dataset {i} needs at least a 'path' (and a 'name')")
        unknown = set(item) - {"name", "path", "format"}
        if unknown:
            raise ConfigError(f"{where}: dataset {i} has unknown key(s) {sorted(unknown)} (name, path, format)")
        fmt = str(item.get("format") or "auto")
        if fmt != "auto" and fmt not in known:  # a typo would otherwise drop the set from the table
            raise ConfigError(f"{where}: dataset {i} has unknown format {fmt!r} (auto, {', '.join(sorted(known))})")
        path, note = _resolve(str(item["path"]), base)
        name = str(item.get("name") or Path(str(item["path"])).stem)
        out.append(SuiteEntry(name, path, fmt, note))
    names = [e.name for e in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"{where}: dataset name {dup!r} appears twice")
    return out


def load_suite(spec: str | Path) -> list[SuiteEntry]:
    """``default``, a suite YAML file, or a data file (a one-set suite) as suite entries."""
    if str(spec) == "default":
        return _entries([{"name": n, "path": p, "format": f} for n, p, f in DEFAULT_SUITE], "default suite", None)
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml"):
        from prefpred.config import read_yaml

        if not path.is_file():
            raise UserError(f"--suite {spec}: suite file not found")

        doc = read_yaml(path)
        items = doc.get("datasets") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{path}: a suite file needs a non-empty 'datasets' list of {{name, path, format}}")
        return _entries(items, str(path), path.parent)
    if not path.exists():
        raise UserError(f"--suite {spec}: not 'default', a suite .yaml file or a data file that exists")
    return [SuiteEntry(path.stem, path)]


def resolve_suites(specs: Sequence[str]) -> list[SuiteEntry]:
    """Entries of several ``--suite`` values, in order; the same name twice is an error."""
    entries = [e for s in specs for e in load_suite(s)]
    names = [e.name for e in entries]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"--suite: dataset name {dup!r} appears twice")
    return entries


# ---------------------------------------------------------------------------------------------- scoring
def nontie_correct(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per non-tie row: 1 when the winner gets more probability than the loser, 0.5 when equal, else 0."""
    keep = y.argmax(1) != 2
    y, p = y[keep], normalize_proba(proba)[keep]
    win_a = y.argmax(1) == 0
    diff = np.where(win_a, p[:, 0] - p[:, 1], p[:, 1] - p[:, 0])
    return np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def score_set(name: str, pairs: Sequence[Pair], proba: np.ndarray, swapped: np.ndarray | None = None, *,
              n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """One suite row (see the module docstring) for labelled ``pairs`` and their predictions."""
    y = label_matrix(pairs)
    correct = nontie_correct(y, proba)
    lo, hi = bootstrap_ci(correct, n_boot, seed)
    has_ties = bool((y.argmax(1) == 2).any())
    row: dict[str, Any] = {
        "dataset": name, "n": len(pairs), "n_nontie": int(len(correct)),
        "nontie_accuracy": float(correct.mean()) if len(correct) else None, "ci_low": lo, "ci_high": hi,
        "log_loss": log_loss(y, proba) if has_ties else None,
        "accuracy": accuracy(y, proba) if has_ties else None,
        "swap_consistency": swap_consistency(proba, swapped)["consistency"] if swapped is not None else None,
        "mean_p_tie": float(normalize_proba(proba)[:, 2].mean()),
    }
    return row


def run_suite(predictor: Any, entries: Sequence[SuiteEntry], *, first: tuple[str, list[Pair]] | None = None,
              swap: bool = True, n_boot: int = 1000, seed: int = 0,
              in_sample: Callable[[list[Pair]], int] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Score ``predictor`` on every set (``first``: an extra ``(name, pairs)`` set scored first, e.g. the run's
    Arena holdout). ``in_sample(pairs)``: how many of a set's pairs the model trained on (``row["in_sample"]``).
    Returns the rows and notes on the sets that were skipped."""
    from prefpred.data import load_pairs

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    sets: list[tuple[str, Any]] = [first] if first else []
    sets += [(e.name, e) for e in entries]
    for name, item in sets:
        t0 = time.perf_counter()
        if isinstance(item, SuiteEntry):
            if item.path is None:
                notes.append(f"{name}: skipped ({item.note})")
                continue
            try:
                pairs = load_pairs(item.path, format=item.format, skip_invalid=True)
            except UserError as e:
                notes.append(f"{name}: skipped ({e.one_line()})")
                continue
        else:
            pairs = list(item)
        pairs = [p for p in pairs if p.label is not None]
        if not pairs:
            notes.append(f"{name}: skipped (no labelled pairs)")
            continue
        logger.info("suite: scoring %s (%d pairs%s)", name, len(pairs), ", and swapped" if swap else "")
        proba = np.asarray(predictor.predict_proba(pairs), dtype=np.float64)
        swapped = np.asarray(predictor.predict_proba([p.swapped() for p in pairs])) if swap else None
        row = score_set(name, pairs, proba, swapped, n_boot=n_boot, seed=seed)
        if in_sample is not None:
            row["in_sample"] = in_sample(pairs)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    return rows, notes


def suite_markdown(rows: Sequence[dict[str, Any]], notes: Sequence[str] = ()) -> list[str]:
    """The suite table as markdown lines."""

    def f(v: Any, d: int = 3) -> str:
        return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{d}f}"

    lines = ["| dataset | n | non-tie accuracy (95% CI) | log loss | swap consistency |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['n']:,} | {f(r['nontie_accuracy'])} [{f(r['ci_low'])}, "
                     f"{f(r['ci_high'])}] | {f(r['log_loss'], 4)} | {f(r['swap_consistency'])} |")
    return lines + [""] + [f"- {n}" for n in notes] + ([""] if notes else [])


def run_holdout(run_dir: str | Path) -> tuple[str, list[Pair]] | None:
    """``("run-holdout", pairs)``: the holdout rows (fold -1 of ``splits.csv``) of the run's own data file;
    ``None`` (logged) when the run has no holdout or its data file is gone."""
    import json

    from prefpred.data import load_pairs
    from prefpred.splits import HOLDOUT_FOLD, load_splits

    run_dir = Path(run_dir)
    try:
        data = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")).get("data_path")
    except (OSError, ValueError):
        data = None
    if not data or not Path(data).exists() or not (run_dir / "splits.csv").is_file():
        logger.warning("%s: the run's data file or splits.csv is not available: no holdout row", run_dir)
        return None
    splits = load_splits(run_dir / "splits.csv")
    hold = set(splits.loc[splits["fold"] == HOLDOUT_FOLD, "id"])
    pairs = [p for p in load_pairs(data, skip_invalid=True) if p.id in hold]
    return ("run-holdout", pairs) if pairs else None
