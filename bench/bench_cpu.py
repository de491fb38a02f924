"""Benchmark of the CPU preference model on real Arena rows: grouped 5-fold CV log loss, accuracy, timings.

Prints, on the same grouped, stratified folds (grouped by normalized prompt, no holdout):

* the class prior (training-fold label frequencies) and a logistic regression on a few length ratios;
* the CPU model (symmetric features + LightGBM, early stopping on each fold's validation part), and with
  ``--embeddings`` the CPU model with sentence-embedding features too;
* timings: featurizing, training, and with ``--embeddings`` the encoder cold (fresh cache, on a sample of
  texts) versus warm (every text from the cache).

Usage::

    python bench/bench_cpu.py [--data ../shared/data/arena/train.csv] [--embeddings] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from prefpred.data import load_pairs
from prefpred.models.cpu import CPUModelConfig, CPUPreferenceModel
from prefpred.splits import SplitConfig, iter_folds, make_splits
from prefpred.types import Pair, hard_labels

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arena" / "train.csv"


def length_features(pairs: list[Pair]) -> np.ndarray:
    """A few length ratios (and their absolute values, for ties)."""
    rows = []
    for p in pairs:
        a, b = p.text_a(), p.text_b()
        ca, cb = len(a), len(b)
        wa, wb = len(a.split()), len(b.split())
        lr_c = np.log1p(ca) - np.log1p(cb)
        lr_w = np.log1p(wa) - np.log1p(wb)
        rows.append([lr_c, lr_w, (ca - cb) / (ca + cb + 1), abs(lr_c), abs(lr_w), np.log1p(ca + cb)])
    return np.asarray(rows)


def summarize(fold_ll: list[float], fold_acc: list[float], y: np.ndarray, oof: np.ndarray) -> dict:
    return {
        "log_loss_mean": float(np.mean(fold_ll)),
        "log_loss_std": float(np.std(fold_ll)),
        "accuracy_mean": float(np.mean(fold_acc)),
        "pooled_log_loss": float(log_loss(y, oof, labels=[0, 1, 2])),
        "folds": [round(v, 5) for v in fold_ll],
    }


def cv_baselines(pairs: list[Pair], folds: list, y: np.ndarray) -> dict:
    out = {}
    X_len = length_features(pairs)
    for name in ("prior", "length_lr"):
        oof = np.zeros((len(pairs), 3))
        lls, accs = [], []
        for _, tr, va in folds:
            if name == "prior":
                oof[va] = np.bincount(y[tr], minlength=3) / len(tr)
            else:
                lr = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
                oof[va] = lr.fit(X_len[tr], y[tr]).predict_proba(X_len[va])
            lls.append(log_loss(y[va], oof[va], labels=[0, 1, 2]))
            accs.append(float((oof[va].argmax(1) == y[va]).mean()))
        out[name] = summarize(lls, accs, y, oof)
    return out


def cv_model(pairs: list[Pair], folds: list, y: np.ndarray, cfg: CPUModelConfig, seed: int) -> dict:
    oof = np.zeros((len(pairs), 3))
    lls, accs, iters, feat_s, train_s = [], [], [], [], []
    t0 = time.perf_counter()
    for _, tr, va in folds:
        model = CPUPreferenceModel(cfg, seed=seed).fit(
            [pairs[i] for i in tr], eval_pairs=[pairs[i] for i in va]
        )
        oof[va] = model.predict_proba([pairs[i] for i in va])
        lls.append(log_loss(y[va], oof[va], labels=[0, 1, 2]))
        accs.append(float((oof[va].argmax(1) == y[va]).mean()))
        iters.append(model.best_iteration_)
        feat_s.append(model.timings_["features_s"])
        train_s.append(model.timings_["train_s"])
    res = summarize(lls, accs, y, oof)
    res.update(
        best_iterations=iters,
        featurize_s_per_fold=float(np.mean(feat_s)),
        train_s_per_fold=float(np.mean(train_s)),
        total_s=time.perf_counter() - t0,
        n_features=len(model.feature_names_),
        top_features=list(model.feature_importance().items())[:10],
    )
    return res


def embedding_timings(pairs: list[Pair], cfg: CPUModelConfig, cold_sample: int) -> dict:
    from prefpred.embeddings import Embedder

    texts = list(dict.fromkeys(t for p in pairs for t in (p.text_prompt(), p.text_a(), p.text_b())))
    out: dict = {"unique_texts": len(texts)}
    emb = Embedder(
        cache_dir=cfg.embedding_cache_dir, device=cfg.embedding_device, batch_size=cfg.embedding_batch_size
    )
    t0 = time.perf_counter()
    _ = emb.encoder
    out["encoder_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb.encode(texts)
    out.update(
        first_pass_s=time.perf_counter() - t0, first_pass_encoded=emb.n_encoded, cache_dir=str(emb.cache_dir)
    )
    t0 = time.perf_counter()
    emb.encode(texts)
    out.update(warm_s=time.perf_counter() - t0, warm_encoded=emb.n_encoded - out["first_pass_encoded"])
    if cold_sample > 0:
        rng = np.random.default_rng(0)
        sample = [texts[i] for i in rng.choice(len(texts), size=min(cold_sample, len(texts)), replace=False)]
        with tempfile.TemporaryDirectory() as tmp:
            cold = Embedder(cache_dir=tmp, device=cfg.embedding_device, batch_size=cfg.embedding_batch_size)
            cold._encoder = emb.encoder  # same loaded weights, empty cache
            t0 = time.perf_counter()
            cold.encode(sample)
            dt = time.perf_counter() - t0
            cold.cache.close()
        out.update(
            cold_sample_texts=len(sample),
            cold_sample_s=dt,
            cold_texts_per_s=len(sample) / dt,
            cold_full_estimate_s=len(texts) * dt / len(sample),
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="Arena CSV/parquet or any prefpred format"
    )
    ap.add_argument("--embeddings", action="store_true", help="also run the model with embedding features")
    ap.add_argument("--cache-dir", default=None, help="embedding cache folder (default: prefpred's)")
    ap.add_argument(
        "--cold-sample", type=int, default=200, help="texts encoded with an empty cache for timing"
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if not args.data.exists():
        print(f"data not found: {args.data}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    pairs = load_pairs(args.data)
    load_s = time.perf_counter() - t0
    y = hard_labels(pairs)
    splits = make_splits(pairs, SplitConfig(n_folds=args.folds, holdout_fraction=0.0), args.seed)
    folds = list(iter_folds(splits, [p.id for p in pairs]))
    results: dict = {
        "data": str(args.data),
        "rows": len(pairs),
        "folds": args.folds,
        "seed": args.seed,
        "load_s": load_s,
        "label_counts": np.bincount(y, minlength=3).tolist(),
    }
    results.update(cv_baselines(pairs, folds, y))

    from prefpred.features import PairFeaturizer

    feat = PairFeaturizer()
    t0, c0 = time.perf_counter(), time.process_time()
    feat.fit(pairs).transform(pairs)
    results["featurize_all"] = {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "n_features": len(feat.feature_names_),
    }

    cfg = CPUModelConfig()
    results["cpu"] = cv_model(pairs, folds, y, cfg, args.seed)
    if args.embeddings:
        ecfg = dataclasses.replace(cfg, embeddings=True, embedding_cache_dir=args.cache_dir)
        results["embedding_timings"] = embedding_timings(pairs, ecfg, args.cold_sample)
        results["cpu_embeddings"] = cv_model(pairs, folds, y, ecfg, args.seed)

    print(
        f"data: {args.data} ({len(pairs)} rows; a/b/tie = {results['label_counts']}), "
        f"{args.folds} grouped folds, seed {args.seed}"
    )
    print(f"{'model':<24}{'log loss (mean ± std)':>24}{'pooled':>9}{'accuracy':>10}")
    for key, label in (
        ("prior", "class prior"),
        ("length_lr", "length-ratio logreg"),
        ("cpu", "cpu (LightGBM)"),
        ("cpu_embeddings", "cpu + embeddings"),
    ):
        if key in results:
            r = results[key]
            print(
                f"{label:<24}{r['log_loss_mean']:>15.4f} ± {r['log_loss_std']:.4f}"
                f"{r['pooled_log_loss']:>9.4f}{r['accuracy_mean']:>10.3f}"
            )
    fa = results["featurize_all"]
    print(
        f"featurize all {len(pairs)} rows: {fa['wall_s']:.2f}s wall, {fa['cpu_s']:.2f}s CPU "
        f"({fa['n_features']} features)"
    )
    for key in ("cpu", "cpu_embeddings"):
        if key in results:
            r = results[key]
            print(
                f"{key}: per fold featurize {r['featurize_s_per_fold']:.2f}s, "
                f"train {r['train_s_per_fold']:.2f}s; "
                f"best iterations {r['best_iterations']}; total {r['total_s']:.1f}s"
            )
    if "embedding_timings" in results:
        e = results["embedding_timings"]
        print(
            f"embeddings: {e['unique_texts']} unique texts; encoder load {e['encoder_load_s']:.1f}s; "
            f"first pass {e['first_pass_s']:.1f}s ({e['first_pass_encoded']} encoded); "
            f"warm cache {e['warm_s']:.2f}s "
            f"({e['warm_encoded']} encoded)"
        )
        if "cold_texts_per_s" in e:
            print(
                f"embeddings cold: {e['cold_sample_texts']} texts in {e['cold_sample_s']:.1f}s "
                f"({e['cold_texts_per_s']:.1f} texts/s; all texts ~{e['cold_full_estimate_s']:.0f}s)"
            )
    if args.json:
        from prefpred.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
