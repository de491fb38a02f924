"""Teacher labelling against a real local HTTP server speaking the OpenAI chat-completions protocol."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from openai_server import FakeOpenAIServer, content_hash
from prefpred.cli import app
from prefpred.data import load_pairs, write_pairs_jsonl
from prefpred.synth.cache import AnswerCache
from prefpred.synth.client import ClientConfig
from prefpred.synth.label import label_pairs
from prefpred.synth.schema import answer_schema, build_messages
from prefpred.testing import planted_pairs

KEY = "sk-test-0123456789abcdefSECRET"


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def fast_cfg(url: str, **kw) -> ClientConfig:
    base = dict(base_url=url, concurrency=4, timeout=5.0, backoff_base=0.01, backoff_max=0.05)
    base.update(kw)
    return ClientConfig(**base)


def user_hash(pair) -> str:
    return content_hash(build_messages(pair)[-1]["content"])


def test_label_writes_loadable_soft_labels_and_resumes_from_cache(server, tmp_path):
    pairs = planted_pairs(16, seed=5)
    out = tmp_path / "labels.jsonl"
    rep = label_pairs(pairs, fast_cfg(server.url), teacher="judge-7b", out=out, api_key=KEY, progress=False)
    assert rep.labelled == 16 and rep.failed == 0 and rep.flip_rate == 0.0
    n_requests = sum(server.counts.values())
    assert rep.stats.done == n_requests == len({user_hash(s) for p in pairs for s in (p, p.swapped())})
    # every request asked for structured output with the answer schema
    assert all(f["type"] == "json_schema" and f["json_schema"]["schema"] == answer_schema()
               for f in server.formats_seen)
    loaded = load_pairs(out)
    assert [p.id for p in loaded] == [p.id for p in pairs]
    for orig, got in zip(pairs, loaded, strict=True):
        assert got.turns == orig.turns and got.source == "teacher:judge-7b"
        assert sum(got.label) == pytest.approx(1.0) and min(got.label) >= 0
        assert got.meta["flip"] is False and len(got.meta["verdicts"]) == 2 and got.meta["human_label"]
    rec = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert {"criteria", "score_a", "score_b", "confidences"} <= set(rec)
    # a second run finds everything in the cache and sends nothing
    again = label_pairs(pairs, fast_cfg(server.url), teacher="judge-7b", out=out, api_key=KEY, progress=False, force=True)
    assert sum(server.counts.values()) == n_requests
    assert again.stats.from_cache == n_requests and again.stats.sent == 0 and again.labelled == 16
    # another teacher is another cache key
    label_pairs(pairs[:2], fast_cfg(server.url), teacher="judge-70b", out=tmp_path / "o.jsonl",
                cache_path=tmp_path / "labels.jsonl.cache.jsonl", api_key=KEY, progress=False)
    assert sum(server.counts.values()) == n_requests + 4


def test_position_bias_shows_as_flips(tmp_path):
    pairs = planted_pairs(30, seed=2)
    with FakeOpenAIServer(position_bias=True) as srv:
        rep = label_pairs(pairs, fast_cfg(srv.url), teacher="t", out=tmp_path / "l.jsonl", api_key=KEY,
                          progress=False)
    recs = [json.loads(ln) for ln in (tmp_path / "l.jsonl").read_text(encoding="utf-8").splitlines()]
    flipped = [r for r in recs if r["flip"]]
    assert rep.flips == len(flipped) > 0 and rep.flip_rate == pytest.approx(len(flipped) / 30)
    assert all(r["verdicts"] in (["A", "B"], ["B", "A"]) for r in flipped)
    assert all(max(r["label"]) < 0.5 for r in flipped)


def test_retries_on_429_500_and_timeouts(server, tmp_path):
    pairs = planted_pairs(4, seed=3)
    server.control(fail_next=3, fail_status=429)
    rep = label_pairs(pairs, fast_cfg(server.url), teacher="t", out=tmp_path / "a.jsonl", api_key=KEY,
                      progress=False)
    assert rep.labelled == 4 and rep.stats.retried == 3 and server.statuses[429] == 3
    server.control(fail_next=2, fail_status=503, slow_next=1, slow_delay=4.0)
    rep = label_pairs(pairs, fast_cfg(server.url, timeout=2.0), teacher="t2", out=tmp_path / "b.jsonl",
                      api_key=KEY, progress=False)
    assert rep.labelled == 4 and rep.stats.retried == 3 and server.statuses[503] == 2
    assert rep.stats.sent == rep.stats.done + 3


def test_exhausted_retries_are_recorded_then_retried_on_rerun(server, tmp_path):
    pairs = planted_pairs(3, seed=4)
    out = tmp_path / "l.jsonl"
    server.control(fail_next=1000, fail_status=500)
    rep = label_pairs(pairs, fast_cfg(server.url, max_retries=2, max_consecutive_failures=0), teacher="t", out=out,
                      api_key=KEY,
                      progress=False)
    assert rep.labelled == 0 and rep.failed == 3 and rep.stats.retried == 2 * rep.stats.failed
    recs = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    assert all(r["failed"] and "label" not in r and "HTTP 500" in r["error"] for r in recs)
    assert [p.label for p in load_pairs(out)] == [None] * 3
    server.control(fail_next=0)
    rep = label_pairs(pairs, fast_cfg(server.url), teacher="t", out=out, api_key=KEY, progress=False, force=True)
    assert rep.labelled == 3 and rep.stats.from_cache == 0


def test_a_rejected_request_is_final_until_retry_failed(server, tmp_path):
    pairs = planted_pairs(3, seed=12)
    out = tmp_path / "l.jsonl"
    server.control(fail_next=1, fail_status=400)
    rep = label_pairs(pairs, fast_cfg(server.url, concurrency=1, json_mode="json_schema"), teacher="t", out=out,
                      api_key=KEY,
                      progress=False)
    assert rep.failed == 1 and rep.stats.retried == 0 and server.statuses[400] == 1
    failed = [r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines()) if r.get("failed")]
    assert len(failed) == 1 and "rejected: HTTP 400" in failed[0]["error"]
    before = sum(server.counts.values())
    assert label_pairs(pairs, fast_cfg(server.url), teacher="t", out=out, api_key=KEY, progress=False, force=True).failed == 1
    assert sum(server.counts.values()) == before
    rep = label_pairs(pairs, fast_cfg(server.url), teacher="t", out=out, api_key=KEY, retry_failed=True,
                      progress=False, force=True)
    assert rep.failed == 0 and sum(server.counts.values()) == before + 1


def test_malformed_output_is_retried_then_recorded_with_raw_text(server, tmp_path):
    pairs = planted_pairs(5, seed=6)
    out = tmp_path / "l.jsonl"
    k = next(i for i, p in enumerate(pairs) if p.text_a() != p.text_b())
    bad = pairs[k].turns[0].prompt
    server.control(malformed_next=1)  # one broken answer, then fine: a re-ask fixes it
    rep = label_pairs(pairs, fast_cfg(server.url), teacher="other", out=tmp_path / "o.jsonl", api_key=KEY,
                      progress=False)
    assert rep.labelled == 5 and rep.stats.format_retries == 1 and rep.stats.failed == 0
    server.counts.clear()
    server.control(malformed_if=bad)
    rep = label_pairs(pairs, fast_cfg(server.url, format_retries=2), teacher="t", out=out, api_key=KEY,
                      progress=False)
    assert rep.labelled == 4 and rep.failed == 1
    assert rep.stats.format_retries == 2 * 2  # both orders of the bad pair: 3 attempts each
    assert server.counts[user_hash(pairs[k])] == 3 and server.counts[user_hash(pairs[k].swapped())] == 3
    recs = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    failed = recs[pairs[k].id]
    assert failed["failed"] is True and "label" not in failed and "not valid JSON" in failed["error"]
    assert len(failed["raw"]["ab"]) == 3 and failed["raw"]["ab"][0].startswith('{"scores"')
    cache = AnswerCache(tmp_path / "l.jsonl.cache.jsonl")
    assert sum(r["status"] == "malformed" for r in cache.records.values()) == 2
    cache.close()
    # a malformed answer is finished: a plain rerun asks nothing; --retry-failed asks again
    before = sum(server.counts.values())
    rep = label_pairs(pairs, fast_cfg(server.url), teacher="t", out=out, api_key=KEY, progress=False, force=True)
    assert sum(server.counts.values()) == before and rep.failed == 1
    server.control(malformed_if=None)
    rep = label_pairs(pairs, fast_cfg(server.url), teacher="t", out=out, api_key=KEY, retry_failed=True,
                      progress=False, force=True)
    assert rep.failed == 0 and rep.labelled == 5 and sum(server.counts.values()) == before + 2


def test_concurrency_and_rate_limit_are_bounded(tmp_path):
    pairs = planted_pairs(10, seed=8, multi_turn_rate=0)
    with FakeOpenAIServer(delay=0.05) as srv:
        label_pairs(pairs, fast_cfg(srv.url, concurrency=3), teacher="t", out=tmp_path / "a.jsonl", api_key=KEY,
                    progress=False)
        assert 2 <= srv.max_inflight <= 3
    pairs = planted_pairs(3, seed=9, multi_turn_rate=0)
    with FakeOpenAIServer() as srv:
        start = time.monotonic()
        rep = label_pairs(pairs, fast_cfg(srv.url, concurrency=8, rpm=600), teacher="t", out=tmp_path / "b.jsonl",
                          api_key=KEY, progress=False)
        elapsed = time.monotonic() - start
    assert rep.stats.sent == 6 and elapsed >= 5 * 0.1 * 0.9  # 600/min = one request per 0.1 s


def test_cli_label_uses_the_env_key_and_never_writes_it(tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_pairs_jsonl(planted_pairs(6, seed=11), data)
    out = tmp_path / "labels.jsonl"
    runner = CliRunner()
    args = ["synth", "label", "--data", str(data), "--model", "judge", "--out", str(out), "--no-progress", "--force",
            "--api-key-env", "MY_TEACHER_KEY", "--backoff-base", "0.01", "--price-in", "2", "--price-out", "8"]
    with FakeOpenAIServer(require_key=KEY) as srv:
        res = runner.invoke(app, [*args, "--base-url", srv.url], env={"MY_TEACHER_KEY": KEY})
        assert res.exit_code == 0, res.output
        assert srv.keys_seen == {KEY}
        assert "6/6 pairs labelled" in res.output and "position-flip rate" in res.output
        assert "estimated cost" in res.output
        wrong = runner.invoke(app, [*args, "--base-url", srv.url, "--out", str(tmp_path / "w.jsonl"),
                                    "--cache", str(tmp_path / "w.cache")], env={"MY_TEACHER_KEY": KEY + "x"})
        assert wrong.exit_code == 2 and "HTTP 401" in wrong.output and KEY not in wrong.output
        js = runner.invoke(app, [*args, "--base-url", srv.url, "--json"], env={"MY_TEACHER_KEY": KEY})
    summary = json.loads(js.stdout)
    assert summary["labelled"] == 6 and summary["requests"]["sent"] == 0 and summary["requests"]["from_cache"] > 0
    for f in tmp_path.iterdir():
        assert KEY not in f.read_text(encoding="utf-8"), f
    for text in (res.output, js.output):
        assert KEY not in text
