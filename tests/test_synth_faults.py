"""Hostile servers and answers: every fault of a teacher server ends as a counted, recorded failure or one line,
never a traceback, a hang past the deadline, a NaN label, a leaked key or a clobbered file.

All against the real loopback HTTP server of ``tests/openai_server.py``.
"""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from openai_server import FakeOpenAIServer
from prefpred.cli import app
from prefpred.config import DataConfig
from prefpred.data import load_extra, load_pairs, write_pairs_jsonl
from prefpred.synth.cache import AnswerCache
from prefpred.synth.client import CircuitOpen, ClientConfig
from prefpred.synth.label import judge_key, label_pairs, pair_record
from prefpred.synth.schema import CRITERION_KEYS, MalformedAnswer, parse_answer
from prefpred.testing import planted_pairs
from prefpred.types import DataError

KEY = "sk-fault-test-0123456789abcdefXYZ"


def cfg(url: str, **kw) -> ClientConfig:
    base = dict(base_url=url, concurrency=2, timeout=5.0, backoff_base=0.01, backoff_max=0.02)
    base.update(kw)
    return ClientConfig(**base)


def records(path) -> list[dict]:
    """The labels file read as strict JSON (NaN/Infinity would raise)."""

    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return [json.loads(ln, parse_constant=refuse) for ln in path.read_text(encoding="utf-8").splitlines()]


def one_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


# ------------------------------------------------------------------------------------------ unreadable 200s
@pytest.mark.parametrize("body", [
    '{"id": "x", "choices": [',                       # not JSON
    '{"object": "chat.completion", "choices": "no"}',  # wrong shape
    '{"choices": [{"index": 0}]}',                    # no message
    '[1, 2, 3]',                                      # not an object
    '<html>502 Bad Gateway</html>',                    # a proxy's page
])
def test_a_200_that_is_not_a_completion_is_retried_then_recorded(tmp_path, body):
    pairs = planted_pairs(2, seed=40)
    with FakeOpenAIServer(bad_body_next=1, bad_body=body) as srv:  # one bad answer: the retry fixes it
        rep = label_pairs(pairs, cfg(srv.url), teacher="t", out=tmp_path / "a.jsonl", api_key=KEY, progress=False)
        assert rep.labelled == 2 and rep.stats.retried == 1 and rep.stats.failed == 0
        srv.control(bad_body_next=1000)
        rep = label_pairs(pairs, cfg(srv.url, max_retries=1, max_consecutive_failures=0), teacher="t2",
                          out=tmp_path / "b.jsonl", api_key=KEY, progress=False)
    assert rep.labelled == 0 and rep.failed == 2 and rep.stats.retried == 4
    for rec in records(tmp_path / "b.jsonl"):
        assert rec["failed"] and "label" not in rec and "unreadable answer" in rec["error"]
        assert all(raw == [body, body] for raw in rec["raw"].values())


# ------------------------------------------------------------------------------------------ deadlines
def test_a_trickling_server_is_cut_at_the_overall_deadline(tmp_path):
    pairs = planted_pairs(1, seed=41, multi_turn_rate=0)
    # every read gets a byte within 0.01 s, so a per-read timeout never fires; the whole body takes ~10 s
    with FakeOpenAIServer(trickle_next=1000, trickle_delay=0.01) as srv:
        start = time.monotonic()
        rep = label_pairs(pairs, cfg(srv.url, timeout=1.0, max_retries=0, max_consecutive_failures=0), teacher="t",
                          out=tmp_path / "l.jsonl", api_key=KEY, progress=False)
        elapsed = time.monotonic() - start
    assert rep.failed == 1 and rep.labelled == 0
    assert elapsed < 5.0
    (rec,) = records(tmp_path / "l.jsonl")
    assert "within the 1 s deadline" in rec["error"]


def test_a_silent_server_trips_the_circuit_breaker_with_one_line(tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_pairs_jsonl(planted_pairs(3, seed=42), data)
    out = tmp_path / "labels.jsonl"
    with FakeOpenAIServer(delay=3.0) as srv:
        start = time.monotonic()
        res = CliRunner().invoke(app, [
            "synth", "label", "--data", str(data), "--base-url", srv.url, "--model", "t", "--out", str(out),
            "--no-progress", "--timeout", "0.3", "--max-retries", "10", "--backoff-base", "0.01",
            "--concurrency", "1", "--max-consecutive-failures", "3"], env={"OPENAI_API_KEY": KEY})
        elapsed = time.monotonic() - start
    assert res.exit_code == 2, res.output
    line = one_line(res.output)
    assert "stopped: 3 requests in a row" in line and "deadline" in line and KEY not in line
    assert elapsed < 8.0  # without the breaker: 6 requests x 11 attempts x 0.3 s
    assert not out.exists()


def test_the_breaker_counts_only_consecutive_failures(tmp_path):
    pairs = planted_pairs(4, seed=43)
    with FakeOpenAIServer() as srv:
        srv.control(fail_next=3, fail_status=503)  # 3 failures, then answers: below a limit of 4
        rep = label_pairs(pairs, cfg(srv.url, concurrency=1, max_consecutive_failures=4), teacher="t",
                          out=tmp_path / "a.jsonl", api_key=KEY, progress=False)
        assert rep.labelled == 4 and rep.stats.retried == 3
        srv.control(fail_next=1000, fail_status=500)
        with pytest.raises(CircuitOpen, match="4 requests in a row"):
            label_pairs(pairs, cfg(srv.url, concurrency=1, max_consecutive_failures=4), teacher="t2",
                        out=tmp_path / "b.jsonl", api_key=KEY, progress=False)
        assert srv.statuses[500] == 4


# ------------------------------------------------------------------------------------------ answers
@pytest.mark.parametrize("confidence", ["NaN", "Infinity", "-Infinity", "1.5", "-0.2"])
def test_non_finite_or_out_of_range_confidence_is_a_recorded_failure(tmp_path, confidence):
    pairs = planted_pairs(4, seed=44)
    out = tmp_path / "l.jsonl"
    with FakeOpenAIServer(confidence_next=1, confidence_text=confidence) as srv:
        rep = label_pairs(pairs, cfg(srv.url, concurrency=1, format_retries=0), teacher="t", out=out,
                          api_key=KEY, progress=False)
    assert rep.labelled == 3 and rep.failed == 1 and rep.stats.failed == 1
    recs = records(out)  # strict JSON: no NaN anywhere
    (bad,) = [r for r in recs if r.get("failed")]
    assert "label" not in bad and "confidence" in json.dumps(bad["raw"])
    assert all(abs(sum(r["label"]) - 1) < 1e-9 for r in recs if not r.get("failed"))
    extra = load_extra(DataConfig(extra_path=str(out)))
    assert len(extra) == rep.labelled  # what is reported as labelled is what training gets


def test_extra_data_with_a_nan_label_is_refused_not_dropped(tmp_path):
    path = tmp_path / "labels.jsonl"
    row = {"id": "x", "prompt": ["p"], "response_a": ["a"], "response_b": ["b"], "label": [0.5, 0.5, 0.0]}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "y"}).replace("0.0]", "NaN]") + "\n")
    with pytest.raises(DataError, match=r"row 2.*label"):
        load_extra(DataConfig(extra_path=str(path)))


def test_a_nan_answer_already_in_an_old_cache_is_not_turned_into_a_label(tmp_path):
    (pair,) = planted_pairs(1, seed=45)
    answer = {"scores": {k: {"A": 6, "B": 4} for k in CRITERION_KEYS}, "verdict": "A", "confidence": 0.7}
    with AnswerCache(tmp_path / "c.jsonl") as cache:
        cache.append({"key": judge_key("t", pair), "status": "ok", "answer": {**answer, "confidence": float("nan")}})
        cache.append({"key": judge_key("t", pair.swapped()), "status": "ok", "answer": answer})
        rec = pair_record(pair, "t", cache)
    assert rec["failed"] is True and "label" not in rec and "cached answer is invalid" in rec["error"]


def test_parse_answer_finds_the_json_in_prose_and_refuses_nan():
    answer = {"scores": {k: {"A": 6, "B": 4} for k in CRITERION_KEYS}, "verdict": "B", "confidence": 0.25}
    text = json.dumps(answer)
    assert parse_answer(f"Sure! {{not json}} Here: ```json\n{text}\n``` hope it helps {{\"x\": 1}}") == answer
    assert parse_answer(f'{{"note": "first"}} then {text}') == answer  # the first object that follows the schema
    with pytest.raises(MalformedAnswer, match="NaN"):
        parse_answer(text.replace("0.25", "NaN"))
    with pytest.raises(MalformedAnswer, match="schema at verdict"):
        parse_answer("I think: " + text.replace('"verdict": "B"', '"verdict": "C"'))
    with pytest.raises(MalformedAnswer, match="not valid JSON"):
        parse_answer("I prefer the first one because it is longer.")


# ------------------------------------------------------------------------------------------ secrets
def test_the_key_quoted_in_an_answer_is_scrubbed_everywhere(tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_pairs_jsonl(planted_pairs(2, seed=46), data)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hi.\nSay bye.\n", encoding="utf-8")
    runner = CliRunner()
    with FakeOpenAIServer(echo_key=True) as srv:
        res = runner.invoke(app, ["synth", "label", "--data", str(data), "--base-url", srv.url, "--model", "t",
                                  "--out", str(tmp_path / "labels.jsonl"), "--no-progress", "--format-retries", "1"],
                            env={"OPENAI_API_KEY": KEY})
        assert res.exit_code == 0, res.output
        res2 = runner.invoke(app, ["synth", "pairs", "--prompts", str(prompts), "--base-url", srv.url, "--models",
                                   "cand-1,cand-2", "--teacher", "t", "--out", str(tmp_path / "synth.jsonl"),
                                   "--no-progress"], env={"OPENAI_API_KEY": KEY})
        assert res2.exit_code == 0, res2.output
        assert srv.keys_seen == {KEY}
    labels = records(tmp_path / "labels.jsonl")
    assert all(r["failed"] and "***" in json.dumps(r["raw"]) for r in labels)  # the raw answers were kept...
    synth = records(tmp_path / "synth.jsonl")
    assert all("(asked with key ***)" in r["response_a"][0] for r in synth)
    for f in tmp_path.iterdir():  # ...but the key is nowhere: labels, pairs, both caches
        assert KEY not in f.read_text(encoding="utf-8") and KEY[:12] not in f.read_text(encoding="utf-8"), f
    assert KEY not in res.output + res2.output


# ------------------------------------------------------------------------------------------ no clobbering
def test_label_and_pairs_refuse_to_overwrite_without_force_and_never_their_input(tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_pairs_jsonl(planted_pairs(2, seed=47), data)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hi.\n", encoding="utf-8")
    out = tmp_path / "labels.jsonl"
    out.write_text("precious\n", encoding="utf-8")
    data_before = data.read_bytes()
    runner = CliRunner()
    env = {"OPENAI_API_KEY": KEY}
    with FakeOpenAIServer() as srv:
        label = ["synth", "label", "--data", str(data), "--base-url", srv.url, "--model", "t", "--no-progress"]
        pairs = ["synth", "pairs", "--prompts", str(prompts), "--base-url", srv.url, "--models", "m-1,m-2",
                 "--teacher", "t", "--no-progress"]
        for args in (label, pairs):
            res = runner.invoke(app, [*args, "--out", str(out)], env=env)
            assert res.exit_code == 2 and "exists (use --force" in one_line(res.output)
            assert out.read_text(encoding="utf-8") == "precious\n"
        assert sum(srv.counts.values()) == 0  # refused before any request
        res = runner.invoke(app, [*label, "--out", str(data), "--force"], env=env)
        assert res.exit_code == 2 and "is the input file" in one_line(res.output)
        res = runner.invoke(app, [*pairs, "--out", str(prompts), "--force"], env=env)
        assert res.exit_code == 2 and "is the input file" in one_line(res.output)
        res = runner.invoke(app, [*label, "--out", str(tmp_path / "x.jsonl"), "--cache", str(data)], env=env)
        assert res.exit_code == 2 and "is the input file" in one_line(res.output)
        assert data.read_bytes() == data_before and prompts.read_text(encoding="utf-8") == "Say hi.\n"
        res = runner.invoke(app, [*label, "--out", str(out), "--force"], env=env)
        assert res.exit_code == 0, res.output
    assert [p.id for p in load_pairs(out)] == [p.id for p in load_pairs(data)]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written atomically, nothing left


# ------------------------------------------------------------------------------------------ JSON dialects
@pytest.mark.parametrize("status", [422, 500])  # llama.cpp's server / llama-cpp-python 0.3's
def test_auto_mode_falls_back_to_llama_cpp_json_object_and_remembers_it(tmp_path, status):
    pairs = planted_pairs(3, seed=48)
    with FakeOpenAIServer(rejects=["json_schema"], honours=["json_object"], reject_status=status) as srv:
        rep = label_pairs(pairs, cfg(srv.url, concurrency=1), teacher="t", out=tmp_path / "a.jsonl", api_key=KEY,
                          progress=False)
        types = [f["type"] if f else None for f in srv.formats_seen]
    assert rep.labelled == 3 and rep.failed == 0 and rep.stats.retried == 0
    assert types == ["json_schema"] + ["json_object"] * 6 and srv.statuses[status] == 1
    assert all(f["schema"]["required"] == ["scores", "verdict", "confidence"] for f in srv.formats_seen[1:])


@pytest.mark.parametrize(("mode", "sent"), [("json_object", "json_object"), ("none", None),
                                            ("json_schema", "json_schema")])
def test_an_explicit_json_mode_is_sent_as_is(tmp_path, mode, sent):
    pairs = planted_pairs(2, seed=49)
    with FakeOpenAIServer() as srv:
        rep = label_pairs(pairs, cfg(srv.url, json_mode=mode), teacher="t", out=tmp_path / "a.jsonl", api_key=KEY,
                          progress=False)
        types = {f["type"] if f else None for f in srv.formats_seen}
    assert types == {sent} and rep.labelled == 2  # with no format the JSON comes wrapped in prose: still found


def test_a_server_ignoring_response_format_and_a_server_refusing_every_dialect(tmp_path):
    pairs = planted_pairs(3, seed=50)
    with FakeOpenAIServer(honours=[]) as srv:  # transformers serve: accepts json_schema, answers in prose
        rep = label_pairs(pairs, cfg(srv.url), teacher="t", out=tmp_path / "a.jsonl", api_key=KEY, progress=False)
    assert rep.labelled == 3
    with FakeOpenAIServer(rejects=["json_schema", "json_object"]) as srv:
        srv.control(fail_next=3, fail_status=400)  # the first request is refused in every dialect: rejected...
        rep = label_pairs(pairs, cfg(srv.url, concurrency=1), teacher="t", out=tmp_path / "b.jsonl",
                          api_key=KEY, progress=False)
        types = [f["type"] if f else None for f in srv.formats_seen]
    assert rep.failed == 1 and rep.labelled == 2 and srv.statuses[400] == 3
    (bad,) = [r for r in records(tmp_path / "b.jsonl") if r.get("failed")]
    assert "ab: rejected: HTTP 400" in bad["error"]
    # ...without fixing the dialect; the next request finds the one the server takes (none) and keeps it
    assert types == ["json_schema", "json_object", None, "json_schema", "json_object"] + [None] * 5
