"""The run lifecycle: atomic replacement, the completion marker, leftovers, umask, one-line refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefpred.runs import (
    COMPLETE_MARKER,
    RunError,
    is_complete,
    load_predictor,
    new_run_dir,
    read_run,
    write_metrics,
)


def _write_run(out: Path, name: str, value: str, *, force: bool = False) -> Path:
    with new_run_dir(out, name, force=force) as work:
        (work / "value.txt").write_text(value)
        write_metrics(work, {"value": value}, kind="test")
    return out / name


def test_new_run_dir_is_complete_and_has_kind(tmp_path):
    run = _write_run(tmp_path, "r", "one")
    assert is_complete(run)
    info = read_run(run)
    assert info.kind == "test" and info.metrics["value"] == "one"
    assert list(tmp_path.iterdir()) == [run]  # no temporary folder left beside it


def test_existing_run_needs_force_and_is_replaced_whole(tmp_path):
    _write_run(tmp_path, "r", "one")
    with pytest.raises(FileExistsError, match="--force"):
        _write_run(tmp_path, "r", "two")
    assert (tmp_path / "r" / "value.txt").read_text() == "one"
    _write_run(tmp_path, "r", "two", force=True)
    assert (tmp_path / "r" / "value.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_failure_inside_block_keeps_old_run(tmp_path):
    _write_run(tmp_path, "r", "one")
    with pytest.raises(RuntimeError), new_run_dir(tmp_path, "r", force=True) as work:
        (work / "value.txt").write_text("half")
        raise RuntimeError("boom")
    assert (tmp_path / "r" / "value.txt").read_text() == "one"
    assert is_complete(tmp_path / "r")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_killed_writer_leftovers_are_cleaned_and_old_run_restored(tmp_path):
    # a writer killed mid-run leaves its .tmp folder; one killed mid-replacement leaves the old run as .old
    code = ("import os, sys\nfrom prefpred.runs import new_run_dir\n"
            "with new_run_dir(sys.argv[1], 'r') as w:\n    (w / 'x').write_text('x')\n    os._exit(9)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    leftovers = list(tmp_path.glob(".r.*.tmp"))
    assert len(leftovers) == 1
    old = _write_run(tmp_path / "other", "r", "old")
    os.replace(old, tmp_path / ".r.dead.old")  # as if killed between renaming the old aside and the new in
    _write_run(tmp_path, "s", "unrelated")
    assert leftovers[0].exists()  # only runs of the same name clean up
    with pytest.raises(FileExistsError):  # the old run came back under its name, so this is refused
        _write_run(tmp_path, "r", "new")
    assert not leftovers[0].exists()
    assert (tmp_path / "r" / "value.txt").read_text() == "old"


def test_outputs_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = _write_run(tmp_path, "r", "one")
    finally:
        os.umask(old)
    assert run.stat().st_mode & 0o777 == 0o755
    assert (run / "metrics.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("damage", ["missing", "no-marker", "binary", "no-kind", "unknown-kind", "bad-model"])
def test_damaged_runs_are_refused_in_one_line(tmp_path, damage):
    run = _write_run(tmp_path, "r", "one")
    if damage == "missing":
        run = tmp_path / "nope"
    elif damage == "no-marker":
        (run / COMPLETE_MARKER).unlink()
    elif damage == "binary":
        (run / "metrics.json").write_bytes(b"\x89PNG\x00\xff\xfe")
    elif damage == "no-kind":
        (run / "metrics.json").write_text('{"value": 1}')
    elif damage == "unknown-kind":
        pass  # kind "test" has no predictor
    elif damage == "bad-model":  # a real saved CPU model whose LightGBM file is damaged
        from prefpred.models.cpu import BOOSTER_FILE, CPUModelConfig, CPUPreferenceModel
        from prefpred.testing import planted_pairs

        write_metrics(run, {}, kind="cpu")
        CPUPreferenceModel(CPUModelConfig(n_estimators=5), seed=0).fit(planted_pairs(60)).save(run / "model")
        load_predictor(run)  # loads while intact
        (run / "model" / BOOSTER_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(RunError) as exc:
        load_predictor(run)
    line = exc.value.one_line()
    assert "\n" not in line and str(run) in line


def test_an_unfinished_in_place_run_is_named_incomplete_not_foreign(tmp_path):
    """A `train` stopped before its metrics: predict said "not a prefpred run directory"."""
    run = tmp_path / "t"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(RunError, match="incomplete run .* run the same command again"):
        load_predictor(run)
    (run / "config.yaml").unlink()
    with pytest.raises(RunError, match="not a prefpred run directory"):
        load_predictor(run)


def test_bad_run_names_are_refused(tmp_path):
    for name in ("", ".", "..", "a/b", ".hidden"):
        with pytest.raises(Exception, match="plain folder name"), new_run_dir(tmp_path, name):
            pass


@pytest.mark.slow
def test_sigterm_removes_the_half_written_run(tmp_path):
    """`kill` (SIGTERM) left runs/.NAME.*.tmp behind (only Ctrl+C cleaned up): it now unwinds the same way."""
    import signal
    import subprocess
    import sys
    import time

    from prefpred.data import write_pairs_jsonl
    from prefpred.testing import planted_pairs

    data = write_pairs_jsonl(planted_pairs(3000, seed=5), tmp_path / "pairs.jsonl")
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "prefpred", "run", "--data", str(data), "--out", str(out),
                             "--name", "k", "--folds", "5"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".k.*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(out.glob(".k.*.tmp")), "the run never started writing"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert not list(out.glob(".k.*")) and not (out / "k").exists()  # nothing half-written is left
