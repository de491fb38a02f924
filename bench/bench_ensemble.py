"""Ensemble benchmark on real Arena rows: members alone and blended, grouped 5-fold CV, nested validation.

On ``../shared/data/arena/train.csv`` (1,660 rows) every member is a real ``prefpred run`` with the same data,
seed and split config (5 grouped, stratified folds, no holdout), so their ``splits.csv`` are identical (checked)
and their out-of-fold predictions line up:

* ``cpu``: the CPU model of ``configs/cpu.yaml``;
* ``cpu-emb``: the same with MiniLM sentence-embedding features (``configs/cpu-embeddings.yaml``; the first run
  encodes ~5k texts, later runs read the embedding cache);
* ``cpu-wide``: a differently regularised LightGBM (more leaves, fewer features per tree, no TF-IDF cap change)
  for diversity.

It prints, all on held-out folds:

1. each member's out-of-fold log loss (pooled and per fold);
2. every ensemble candidate's cross-validated log loss (:func:`prefpred.ensemble.select.cross_validate`), the
   best member alone too (``prefpred ensemble`` leaves it out of its choice: see ``DEFAULT_CANDIDATES``);
3. the nested number of the whole procedure (select by inner CV, fit, predict the outer fold) fold by fold
   against the best member of that fold: the ensemble must never be worse;
4. calibrated vs uncalibrated for each combiner, fold by fold;
5. with ``--suite``: the out-of-domain table (``prefpred evaluate --suite default``) of the CPU member and of
   the ensemble run.

Usage::

    python bench/bench_ensemble.py --out /tmp/bench-ens [--members cpu,cpu-emb,cpu-wide] [--suite] [--json f]

Runs already in ``--out`` are reused (delete them to retrain).

Measured (2 shared, loaded CPU cores; all 1,660 rows, seed 42, 5 grouped folds, no holdout; members trained in
66-109 s each, the ensemble built in 8-16 s; log loss, lower is better):

==================================  ===========  ===================================================
predictions                         log loss     per fold
==================================  ===========  ===================================================
cpu                                 1.0313       1.0274 1.0530 1.0310 1.0065 1.0388
cpu-wide                            1.0310       1.0229 1.0614 1.0347 1.0025 1.0335
cpu-emb-wide                        1.0282       1.0257 1.0554 1.0298 0.9991 1.0308
cpu-emb (best member)               1.0274       1.0245 1.0505 1.0298 1.0036 1.0287
blend-prob (cross-validated)        1.0266       –
blend-prob+temperature (CV)         1.0263       –
stack-logistic (CV)                 1.0316       –
ensemble, nested (honest)           1.0267       1.0225 1.0537 1.0292 1.0002 1.0283
==================================  ===========  ===================================================

The nested ensemble beats the best member in 4 of 5 folds (fold 1: +0.003, where ``cpu-emb`` alone was far
ahead) and the CPU model alone by 0.0046; weights ``cpu-emb`` 0.53, ``cpu-wide`` 0.25, ``cpu-emb-wide`` 0.22,
``cpu`` 0. Temperature calibration of the blend improves the pooled held-out log loss (1.0266 -> 1.0263) but is
worse in 2 of 5 folds (by < 0.0005). Out of domain (``--suite``) the ensemble is within the CPU model's
confidence intervals everywhere (arena-conversations 0.673 vs 0.641 non-tie accuracy, hh-rlhf 0.423 vs 0.446);
both stay length models that fail the LLMBar adversarial sets (0.14-0.38).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from prefpred.config import DataConfig, load_config
from prefpred.ensemble import EnsembleConfig, build_ensemble, load_members
from prefpred.ensemble.blend import ALL_CANDIDATES, COMBINERS, pair_features
from prefpred.ensemble.select import cross_validate, nested_oof
from prefpred.metrics import label_targets, log_loss
from prefpred.pipeline import RunConfig, run_job
from prefpred.runs import is_complete
from prefpred.splits import SplitConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "arena" / "train.csv"
SHARED = ROOT.parent / "shared" / "data"
MEMBERS: dict[str, tuple[str, dict, dict]] = {
    "cpu": ("configs/cpu.yaml", {}, {}),
    "cpu-emb": ("configs/cpu-embeddings.yaml", {}, {}),
    "cpu-wide": ("configs/cpu.yaml", {"num_leaves": 24, "max_depth": -1, "min_child_samples": 20,
                                      "colsample_bytree": 0.3, "learning_rate": 0.03, "reg_lambda": 1.0}, {}),
    "cpu-emb-wide": ("configs/cpu-embeddings.yaml", {"num_leaves": 24, "max_depth": -1, "min_child_samples": 20,
                                                     "colsample_bytree": 0.3, "learning_rate": 0.03,
                                                     "reg_lambda": 1.0}, {}),
    "cpu-pandalm": ("configs/cpu.yaml", {}, {"extra_path": str(SHARED / "pandalm" / "testset-v1.json"),
                                             "extra_weight": 0.5}),
}
"""name -> (config, model overrides, data overrides). ``cpu-pandalm`` trains on PandaLM pairs too (training parts
only, weight 0.5): a member that has seen other judgments, at the price of PandaLM's row in the suite table."""


def member_run(name: str, data: Path, out: Path, seed: int, folds: int) -> Path:
    """The member's run directory in ``out``, trained unless a complete one is there."""
    run_dir = out / name
    if is_complete(run_dir):
        return run_dir
    config, model_overrides, data_overrides = MEMBERS[name]
    cfg = load_config(RunConfig, ROOT / config)
    model = dataclasses.replace(cfg.model, n_jobs=1, **model_overrides)
    data_cfg = DataConfig(path=str(data), **data_overrides)
    cfg = dataclasses.replace(cfg, name=name, out_dir=str(out), seed=seed, data=data_cfg,
                              split=SplitConfig(n_folds=folds, holdout_fraction=0.0), model=model, overwrite=True)
    t0 = time.perf_counter()
    run_job(cfg)
    print(f"trained member {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return run_dir


def _fold_losses(y: np.ndarray, pred: np.ndarray, folds: np.ndarray) -> list[float]:
    return [log_loss(y[folds == k], pred[folds == k]) for k in np.unique(folds)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, required=True, help="Folder for the member and ensemble runs.")
    ap.add_argument("--members", default="cpu,cpu-emb,cpu-wide")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--suite", action="store_true", help="Also the out-of-domain table of cpu and the ensemble.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.data.is_file():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    runs = [member_run(n, args.data, args.out, args.seed, args.folds) for n in names]
    splits = [pd.read_csv(r / "splits.csv", dtype={"id": str}) for r in runs]
    same = all(s[["id", "fold"]].equals(splits[0][["id", "fold"]]) for s in splits[1:])
    print(f"splits.csv identical across the {len(runs)} members: {same}")

    members = load_members(runs)
    y = label_targets(members[0].labels)
    P = np.stack([m.proba for m in members])
    folds = members[0].folds
    from prefpred.data import load_pairs

    by_id = {p.id: p for p in load_pairs(args.data)}
    X = pair_features([by_id[i] for i in members[0].ids])
    result: dict = {"n": int(len(y)), "folds": int(len(np.unique(folds))), "members": {}, "candidates": {}}

    print(f"\n{len(y)} rows, {len(np.unique(folds))} grouped folds\n\nmembers (out-of-fold, raw)")
    for m in members:
        per = _fold_losses(y, m.proba, folds)
        result["members"][m.name] = {"log_loss": log_loss(y, m.proba), "per_fold": per}
        print(f"  {m.name:<12} {log_loss(y, m.proba):.4f}  per fold {' '.join(f'{v:.4f}' for v in per)}")

    t0 = time.perf_counter()
    cv = cross_validate(P, y, folds, X, ALL_CANDIDATES)
    print(f"\ncandidates (cross-validated, {time.perf_counter() - t0:.1f} s)")
    for name, ll in sorted(cv.log_loss.items(), key=lambda kv: kv[1]):
        result["candidates"][name] = {"log_loss": ll, "per_fold": _fold_losses(y, cv.oof[name], folds)}
        print(f"  {name:<28} {ll:.4f}")

    nested, chosen = nested_oof(P, y, folds, X)
    print(f"\nnested (select inside, predict outside): {log_loss(y, nested):.4f}")
    member_folds = np.array([result["members"][m.name]["per_fold"] for m in members])
    best_name = min(result["members"], key=lambda k: result["members"][k]["log_loss"])
    best_folds = result["members"][best_name]["per_fold"]
    ens_folds = _fold_losses(y, nested, folds)
    vs_best = vs_oracle = 0
    for k, (c, e) in enumerate(zip(chosen, ens_folds, strict=True)):
        vs_best += e <= best_folds[k] + 1e-12
        vs_oracle += e <= member_folds[:, k].min() + 1e-12
        print(f"  fold {c['fold']}: chose {c['chosen']:<26} ensemble {e:.4f}  {best_name} {best_folds[k]:.4f}"
              f"  fold's best member {member_folds[:, k].min():.4f}")
    print(f"  ensemble not worse than the best member ({best_name}) in {vs_best} of {len(ens_folds)} folds, "
          f"than each fold's best member (hindsight) in {vs_oracle}")
    result["nested"] = {"log_loss": log_loss(y, nested), "per_fold": ens_folds, "chosen": chosen,
                        "best_member": best_name, "not_worse_than_best_member_folds": int(vs_best),
                        "not_worse_than_fold_oracle_folds": int(vs_oracle)}

    print("\ncalibration on held-out folds (temperature / bias vs none), per fold")
    cal_ok = True
    for comb in COMBINERS:
        base = result["candidates"][comb]["per_fold"]
        for cal in ("temperature", "bias"):
            other = result["candidates"][f"{comb}+{cal}"]["per_fold"]
            worse = sum(o > b + 1e-12 for o, b in zip(other, base, strict=True))
            cal_ok &= cal != "temperature" or worse == 0
            print(f"  {comb:<16} +{cal:<12} pooled {cv.log_loss[comb]:.4f} -> {cv.log_loss[f'{comb}+{cal}']:.4f}"
                  f", worse in {worse} of {len(base)} folds")

    t0 = time.perf_counter()
    ens_dir = build_ensemble(EnsembleConfig(members=[str(r) for r in runs], name="ensemble", out_dir=str(args.out),
                                            data=str(args.data), overwrite=True))
    m = json.loads((ens_dir / "metrics.json").read_text())
    print(f"\nensemble run {ens_dir} ({m['method']}, weights {m['member_weights']}) built in "
          f"{time.perf_counter() - t0:.0f} s; nested OOF log loss {m['cv']['oof']['log_loss']:.4f}")
    result["ensemble_run"] = {"method": m["method"], "weights": m["member_weights"]}

    if args.suite:
        from prefpred.runs import load_predictor
        from prefpred.suite import resolve_suites, run_suite, suite_markdown

        entries = resolve_suites(["default"])
        result["suite"] = {}
        for label, run_dir in (("cpu", runs[0]), ("ensemble", ens_dir)):
            t0 = time.perf_counter()
            rows, notes = run_suite(load_predictor(run_dir), entries, swap=True)
            print(f"\nout-of-domain suite: {label} ({time.perf_counter() - t0:.0f} s)")
            print("\n".join(suite_markdown(rows, notes)))
            result["suite"][label] = rows
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
