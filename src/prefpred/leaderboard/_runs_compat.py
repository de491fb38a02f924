"""Temporary stand-in for :mod:`prefpred.runs` until it lands on this branch (same signatures)."""

from __future__ import annotations

try:
    from prefpred.runs import load_predictor, new_run_dir, write_metrics
except ImportError:  # pragma: no cover - removed once prefpred.runs is merged
    import contextlib
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from prefpred.utils import atomic_write_text, json_safe

    @contextlib.contextmanager
    def new_run_dir(out_dir, name, *, force=False):
        parent = Path(out_dir)
        parent.mkdir(parents=True, exist_ok=True)
        final = parent / name
        if final.exists() and not force:
            raise FileExistsError(f"{final} exists (use --force or another --name)")
        work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
        try:
            yield work
            (work / ".prefpred-complete").write_text("complete\n")
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)

    def write_metrics(run_dir, metrics, *, kind):
        body = {"kind": kind, **{k: v for k, v in metrics.items() if k != "kind"}}
        return atomic_write_text(Path(run_dir) / "metrics.json", json.dumps(json_safe(body), indent=2) + "\n")

    def load_predictor(run_dir, *, calibrated=True):
        from prefpred.pipeline import predict_run

        class _P:
            def predict_proba(self, pairs):
                return predict_run(run_dir, pairs, calibrated=calibrated)

        return _P()

__all__ = ["load_predictor", "new_run_dir", "write_metrics"]
