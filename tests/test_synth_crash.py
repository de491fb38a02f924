"""A labelling process killed mid-run (SIGKILL) and restarted loses no finished answer and repeats no request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from openai_server import FakeOpenAIServer, content_hash
from prefpred.data import load_pairs, write_pairs_jsonl
from prefpred.synth.schema import build_messages
from prefpred.testing import planted_pairs

KEY = "sk-crash-test-9f8e7d6c5b4a3210"
CONCURRENCY = 3

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def n_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_killed_run_resumes_without_loss_or_repeat(tmp_path):
    pairs = planted_pairs(30, seed=21, multi_turn_rate=0.2)
    by_id = {p.id: p for p in pairs}
    data = tmp_path / "pairs.jsonl"
    write_pairs_jsonl(pairs, data)
    out = tmp_path / "labels.jsonl"
    cache = tmp_path / "labels.jsonl.cache.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    with FakeOpenAIServer(delay=0.1) as srv:
        cmd = [sys.executable, "-m", "prefpred", "synth", "label", "--data", str(data), "--base-url", srv.url,
               "--model", "judge", "--out", str(out), "--concurrency", str(CONCURRENCY), "--no-progress"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        try:
            while n_lines(cache) < 12:
                assert proc.poll() is None, "the run finished before it could be killed"
                assert time.monotonic() < deadline, "no progress"
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            first_output = proc.communicate(timeout=30)[0].decode()
        assert proc.returncode == -signal.SIGKILL
        assert not out.exists()  # the labels file is only ever written whole

        finished = [json.loads(ln) for ln in cache.read_text(encoding="utf-8").splitlines() if ln.strip()]
        assert len(finished) >= 12 and all(r["status"] == "ok" for r in finished)

        def sent_hash(rec: dict) -> str:
            pair = by_id[rec["pair_id"]]
            shown = pair if rec["order"] == "ab" else pair.swapped()
            return content_hash(build_messages(shown)[-1]["content"])

        finished_hashes = {sent_hash(r) for r in finished}
        assert all(srv.counts[h] == 1 for h in finished_hashes)

        res = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
        assert res.returncode == 0, res.stderr.decode()
        counts = Counter(srv.counts)

    # the server saw no request twice for a pair finished before the kill; only requests in flight at the
    # moment of the kill can have been sent a second time
    assert all(counts[h] == 1 for h in finished_hashes)
    assert max(counts.values()) <= 2 and sum(c == 2 for c in counts.values()) <= CONCURRENCY
    # the final file holds every pair exactly once, each labelled
    labelled = load_pairs(out)
    assert sorted(p.id for p in labelled) == sorted(by_id) and len(labelled) == len(pairs)
    assert all(p.label is not None and abs(sum(p.label) - 1) < 1e-6 for p in labelled)
    # the cache holds each request once
    records = [json.loads(ln) for ln in cache.read_text(encoding="utf-8").splitlines()]
    assert max(Counter(r["key"] for r in records).values()) == 1
    assert len(records) == len(counts)
    for text in (first_output, res.stdout.decode(), res.stderr.decode(), out.read_text(encoding="utf-8"),
                 cache.read_text(encoding="utf-8")):
        assert KEY not in text
