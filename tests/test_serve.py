"""prefpred serve against a real uvicorn server on 127.0.0.1, serving a CPU-model run trained here."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from prefpred.cli import app as cli_app
from prefpred.config import DataConfig
from prefpred.data import load_pairs, write_arena_csv, write_pairs_jsonl
from prefpred.pipeline import RunConfig, run_job
from prefpred.runs import COMPLETE_MARKER, load_predictor
from prefpred.serve.app import ServeSettings, create_app
from prefpred.serve.client import PrefpredClient, ServeError
from prefpred.serve.models import load_judge, run_model_info
from prefpred.serve.ranking import bradley_terry, win_matrix
from prefpred.serve.schemas import Limits
from prefpred.serve.server import BackgroundServer
from prefpred.splits import SplitConfig
from prefpred.submission import read_predictions
from prefpred.testing import planted_pairs
from prefpred.types import DataError, Pair, Turn

TOKEN = "tok-3b7d9e1f"
LIMITS = Limits(max_body_bytes=64_000, max_pairs=8, max_candidates=5, max_turns=4, max_chars=2000)
runner = CliRunner()


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve")
    data = write_pairs_jsonl(planted_pairs(120, seed=3), d / "train.jsonl")
    model = dataclasses.replace(RunConfig().model, n_estimators=30, embeddings=False, n_jobs=1)
    cfg = RunConfig(name="r", out_dir=str(d / "runs"), seed=1, data=DataConfig(path=str(data)),
                    split=SplitConfig(n_folds=2, holdout_fraction=0.2), model=model)
    return run_job(cfg)


@pytest.fixture(scope="module")
def predictor(run_dir):
    return load_predictor(run_dir)


def _server(predictor, run_dir, **settings) -> BackgroundServer:
    app = create_app(predictor, info=run_model_info(run_dir), settings=ServeSettings(**settings))
    # log_config=None: uvicorn leaves logging alone, so its access log reaches pytest's caplog
    return BackgroundServer(app, log_level="info", log_config=None, startup_timeout_s=30).start()


@pytest.fixture(scope="module")
def server(predictor, run_dir):
    srv = _server(predictor, run_dir, token=TOKEN, limits=LIMITS, max_wait_ms=10)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c


def _texts(pair: Pair, as_list: bool) -> dict:
    if len(pair.turns) == 1 and not as_list:
        t = pair.turns[0]
        return {"prompt": t.prompt, "response_a": t.response_a, "response_b": t.response_b}
    return {"prompt": [t.prompt for t in pair.turns], "response_a": [t.response_a for t in pair.turns],
            "response_b": [t.response_b for t in pair.turns]}


def _app(srv: BackgroundServer):
    return srv.server.config.app


def _proba(results: list[dict]) -> np.ndarray:
    return np.asarray([[r["p_a"], r["p_b"], r["p_tie"]] for r in results])


# ------------------------------------------------------------------------------------------------ results
def test_results_equal_load_predictor_and_predict_cli(http, predictor, run_dir, tmp_path):
    pairs = [dataclasses.replace(p, id=f"t{i}", label=None)
             for i, p in enumerate(planted_pairs(12, seed=7, multi_turn_rate=0.5))]
    singles = [http.post("/v1/preference", json={"id": p.id, **_texts(p, as_list=i % 2 == 1)})
               for i, p in enumerate(pairs[:4])]
    batch = http.post("/v1/preference", json={"pairs": [{"id": p.id, **_texts(p, True)} for p in pairs[4:]]})
    assert all(r.status_code == 200 for r in singles) and batch.status_code == 200, batch.text
    results = [r.json() for r in singles] + batch.json()["results"]
    assert [r["id"] for r in results] == [p.id for p in pairs]
    got = _proba(results)
    np.testing.assert_allclose(got, predictor.predict_proba(pairs), rtol=0, atol=1e-12)
    assert [r["winner"] for r in results] == [("a", "b", "tie")[k] for k in got.argmax(axis=1)]

    test_csv = write_arena_csv(pairs, tmp_path / "test.csv", labels=False)
    out = tmp_path / "sub.csv"
    result = runner.invoke(cli_app, ["predict", "--run", str(run_dir), "--data", str(test_csv), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ids, cli_proba = read_predictions(out)
    assert ids == [p.id for p in pairs]
    np.testing.assert_allclose(got, cli_proba, rtol=0, atol=2e-6)  # the submission has 6 decimals


def test_ragged_turns_are_padded_like_the_jsonl_reader(http, predictor, tmp_path):
    record = {"id": "r1", "prompt": ["first question?", "and then?"], "response_a": ["## Answer\n- **a** one two"],
              "response_b": ["short", "a second reply with several words"]}
    path = tmp_path / "ragged.jsonl"
    path.write_text(json.dumps(record) + "\n")
    expected = predictor.predict_proba(load_pairs(path))
    r = http.post("/v1/preference", json=record)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(_proba([r.json()]), expected, rtol=0, atol=1e-12)


def test_concurrent_requests_each_get_their_own_answer_and_are_batched(server, predictor):
    pairs = [dataclasses.replace(p, id=f"c{i}") for i, p in enumerate(planted_pairs(40, seed=11))]
    expected = predictor.predict_proba(pairs)
    hist = _app(server).state.metrics.batch_requests
    calls_before, requests_before = hist.n, hist.total

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"},
                                     timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/preference", json={"id": p.id, **_texts(p, False)})
                                          for p in pairs))

    responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    by_id = {r.json()["id"]: r.json() for r in responses}
    np.testing.assert_allclose(_proba([by_id[p.id] for p in pairs]), expected, rtol=0, atol=1e-12)
    calls, scored = hist.n - calls_before, hist.total - requests_before
    assert scored == len(pairs) and calls < len(pairs), (calls, scored)  # several requests per model call


def test_rank_scores_are_bradley_terry_of_the_pairwise_probabilities(http, predictor):
    rng_pairs = planted_pairs(6, seed=2)
    prompt = rng_pairs[0].turns[0].prompt
    responses = ["I'm sorry, but I can't help with that.", rng_pairs[1].turns[0].response_a,
                 "## Answer\n- **first** point one two three.\n- **second** more detail here.\nA summary line.",
                 rng_pairs[2].turns[0].response_b]
    r = http.post("/v1/rank", json={"prompt": prompt, "responses": responses, "ids": ["w", "x", "y", "z"]})
    assert r.status_code == 200, r.text
    body = r.json()
    n = len(responses)
    order = [(i, j) for i in range(n) for j in range(n) if i != j]
    proba = predictor.predict_proba([Pair(id=f"{i}-{j}", turns=(Turn(prompt, responses[i], responses[j]),))
                                     for i, j in order])
    expected = bradley_terry(win_matrix(n, order, proba))
    scores = np.asarray([c["score"] for c in body["results"]])
    np.testing.assert_allclose(scores, expected, atol=1e-9)
    assert [c["id"] for c in body["results"]] == ["w", "x", "y", "z"]
    assert sorted(c["rank"] for c in body["results"]) == [1, 2, 3, 4]
    assert body["order"] == list(np.argsort(-scores, kind="stable")) and body["best"] == body["order"][0]
    assert body["results"][body["best"]]["rank"] == 1

    bad = http.post("/v1/rank", json={"prompt": prompt, "responses": responses, "ids": ["w"]})
    assert bad.status_code == 422 and bad.json()["field"] == "ids"
    one = http.post("/v1/rank", json={"prompt": prompt, "responses": ["only one"]})
    assert one.status_code == 422 and one.json()["field"] == "responses"


def test_model_info_health_and_client_helper(server, run_dir):
    with PrefpredClient(server.url, token=TOKEN) as client:
        assert client.health()["status"] == "ok"
        info = client.model_info()
        headline = json.loads((run_dir / "metrics.json").read_text())["headline"]
        assert info["kind"] == "cpu" and info["config"]["model"]["n_estimators"] == 30
        assert info["metrics"]["oof_log_loss"] == pytest.approx(headline["oof_log_loss"])
        assert info["limits"]["max_pairs"] == LIMITS.max_pairs and info["calibrated"] is True
        one = client.preference("Hi?", "Hello!", "## Hello\n- **hi** there", id="q")
        assert one["id"] == "q" and sum(one[k] for k in ("p_a", "p_b", "p_tie")) == pytest.approx(1)
        many = client.preference_batch([{"prompt": "a?", "response_a": "b", "response_b": "c", "id": "1"},
                                        {"prompt": ["a?"], "response_a": ["b"], "response_b": ["c"]}])
        assert [m["id"] for m in many] == ["1", None] and _proba(many[:1]).tolist() == _proba(many[1:]).tolist()
        ranked = client.rank("Name a prime.", ["7", "Nine."])
        assert sorted(c["rank"] for c in ranked["results"]) == [1, 2]
        with pytest.raises(ServeError) as err:
            client.preference_batch([{"prompt": "a", "response_a": "b", "response_b": "c"}] * 9)
        assert err.value.status == 413 and err.value.field == "pairs"
    with PrefpredClient(server.url) as anonymous, pytest.raises(ServeError) as err:
        anonymous.model_info()
    assert err.value.status == 401


# ------------------------------------------------------------------------------------------------ safety
def test_bearer_token_required_and_never_logged(server, http, caplog):
    caplog.set_level(logging.DEBUG)
    marker = "MARKER-TEXT-81c2"
    for path in ("/v1/model", "/metrics"):
        assert httpx.get(server.url + path).status_code == 401
    r = httpx.post(server.url + "/v1/preference", json={"prompt": marker, "response_a": "a", "response_b": "b"},
                   headers={"Authorization": "Bearer wrong-token-5e"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"] == "unauthorized" and r.json()["field"] == "authorization"
    assert httpx.get(server.url + "/health").status_code == 200  # liveness needs no token
    # nor does the API description: a browser on /docs fetches the spec without the token
    assert httpx.get(server.url + "/docs").status_code == 200
    assert httpx.get(server.url + "/openapi.json").json()["info"]["title"] == "prefpred"
    ok = http.post("/v1/preference", json={"prompt": marker, "response_a": "a", "response_b": "b"})
    assert ok.status_code == 200
    time.sleep(0.1)
    assert "POST /v1/preference" in caplog.text  # the access log was captured...
    assert marker not in caplog.text and TOKEN not in caplog.text and "wrong-token-5e" not in caplog.text


LONG = "x" * 2001


@pytest.mark.parametrize("path,body,field", [
    ("/v1/preference", {"pairs": [{"prompt": "p", "response_a": "a", "response_b": "b"}] * 9}, "pairs"),
    ("/v1/preference", {"prompt": "p", "response_a": LONG, "response_b": "b"}, "response_a"),
    ("/v1/preference", {"pairs": [{"prompt": "p", "response_a": "a", "response_b": "b"},
                                  {"prompt": "p", "response_a": "a", "response_b": ["b", "c", LONG]}]},
     "pairs[1].response_b[2]"),
    ("/v1/preference", {"prompt": ["p"] * 5, "response_a": "a", "response_b": "b"}, "prompt"),
    ("/v1/rank", {"prompt": "p", "responses": ["a", "b", "c", "d", "e", "f"]}, "responses"),
    ("/v1/rank", {"prompt": "p", "responses": ["a", "b", LONG]}, "responses[2]"),
    ("/v1/preference", {"prompt": "p", "response_a": "y" * 70_000, "response_b": "b"}, "body"),
])
def test_limits_are_413_naming_the_field(http, path, body, field):
    r = http.post(path, json=body)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "limit_exceeded" and r.json()["field"] == field


def test_chunked_body_over_the_limit_is_413(http):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(80):
            yield b"z" * 1000
        yield b'", "response_a": "a", "response_b": "b"}'

    r = http.post("/v1/preference", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"


BASE = {"prompt": "p", "response_a": "a", "response_b": "b"}


@pytest.mark.parametrize("raw,status,field", [
    (b"{not json", 422, "body"),
    (b"[1, 2]", 422, "body"),
    (b'"text"', 422, "body"),
    (b'{"prompt": NaN, "response_a": "a", "response_b": "b"}', 422, "prompt"),
    (b'{"prompt": null, "response_a": "a", "response_b": "b"}', 422, "prompt"),
    (json.dumps({**BASE, "prompt": 3}).encode(), 422, "prompt"),
    (json.dumps({**BASE, "id": 7}).encode(), 422, "id"),
    (json.dumps({**BASE, "response_a": ""}).encode(), 422, "response_a"),
    (json.dumps({**BASE, "response_b": "  \n"}).encode(), 422, "response_b"),
    (json.dumps({**BASE, "response_b": ["", " "]}).encode(), 422, "response_b"),
    (json.dumps({**BASE, "response_b": []}).encode(), 422, "response_b"),
    (json.dumps({**BASE, "response_b": ["ok", 3]}).encode(), 422, "response_b[1]"),
    (json.dumps({**BASE, "extra": 1}).encode(), 422, "extra"),
    (json.dumps({"prompt": "p", "response_a": "a"}).encode(), 422, "response_b"),
    (json.dumps({"pairs": [BASE], "prompt": "p"}).encode(), 422, "prompt"),
    (json.dumps({"pairs": []}).encode(), 422, "pairs"),
    (json.dumps({"pairs": [BASE, {**BASE, "prompt": ""}]}).encode(), 422, "pairs[1].prompt"),
    (b"\xff\xfe\x00garbage", 422, "body"),
    (b'{"prompt": "\xff\xfe", "response_a": "a", "response_b": "b"}', 400, None),
])
def test_bad_input_is_4xx_naming_the_field(http, raw, status, field):
    r = http.post("/v1/preference", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["message"]
    if field is not None:
        assert r.json()["field"] == field, r.json()
    assert http.post("/v1/preference", json=BASE).status_code == 200  # still serving


def test_odd_but_valid_texts_score(http):
    odd = ["\ud800 lone surrogate", "nul \x00 byte", "emoji \U0001f600" * 50, "\u202e right-to-left",
           "a" * 1990, "\n\n\t", "<script>alert(1)</script>"]
    body = {"pairs": [{"prompt": "q " + t, "response_a": t, "response_b": "ok"} for t in odd if t.strip()]}
    r = http.post("/v1/preference", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    p = _proba(r.json()["results"])
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1)
    wrong_type = http.post("/v1/preference", content=json.dumps(BASE), headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 422 and "Content-Type" in wrong_type.json()["message"]
    assert http.get("/nope").status_code == 404 and http.get("/v1/preference").status_code == 405


class _Flaky:
    """The real model, except for marked prompts: NaN rows, a crash, a user error (the model boundary)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[int] = []

    def predict_proba(self, pairs):
        self.calls.append(len(pairs))
        prompts = [p.turns[0].prompt for p in pairs]
        if any("BOOM" in q for q in prompts):
            raise RuntimeError("model crashed")
        if any("USER" in q for q in prompts):
            raise DataError("this model cannot read that", column="prompt")
        out = self.inner.predict_proba(pairs)
        out[[("NAN" in q) for q in prompts]] = np.nan
        return out


def test_failing_or_nan_model_fails_only_that_request(predictor, run_dir, caplog):
    flaky = _Flaky(predictor)
    srv = _server(flaky, run_dir, max_wait_ms=50, log_texts=True)
    try:
        async def main():
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
                bodies = [{**BASE, "id": f"n{i}"} for i in range(5)] + [{**BASE, "prompt": "BOOM"}]
                bodies += [{"pairs": [BASE, BASE, {**BASE, "prompt": "NAN"}]}, {**BASE, "prompt": "USER"}]
                return await asyncio.gather(*(c.post("/v1/preference", json=b) for b in bodies))

        caplog.set_level(logging.INFO)
        responses = asyncio.run(main())
        assert [r.status_code for r in responses] == [200] * 5 + [500, 422, 422]
        assert responses[5].json()["error"] == "model_error"
        assert responses[6].json()["field"] == "pairs[2]" and "non-finite" in responses[6].json()["message"]
        assert "cannot read that" in responses[7].json()["message"]
        assert max(flaky.calls) > 1  # requests were batched together and the failed batch split up
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"
        assert httpx.post(srv.url + "/v1/preference", json=BASE).status_code == 200
        assert "BOOM" in caplog.text  # log_texts=True logs texts (the default server must not)
    finally:
        srv.stop()


class _Slow:
    """The real model, taking ``delay`` seconds longer (the model boundary); ``started`` is set on each call."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay, self.started = inner, delay, threading.Event()

    def predict_proba(self, pairs):
        self.started.set()
        time.sleep(self.delay)
        return self.inner.predict_proba(pairs)


def test_graceful_shutdown_lets_in_flight_requests_finish(predictor, run_dir):
    slow = _Slow(predictor, 1.5)
    srv = _server(slow, run_dir)
    out: dict = {}

    def call():
        out["r"] = httpx.post(srv.url + "/v1/preference", json=BASE, timeout=60)

    t = threading.Thread(target=call)
    t.start()
    assert slow.started.wait(30)  # the model is scoring the request now
    srv.stop()
    t.join(30)
    assert out["r"].status_code == 200 and np.isfinite(_proba([out["r"].json()])).all()
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=5)


# ------------------------------------------------------------------------------------------------ metrics
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? '
                     r'(-?[0-9.e+-]+|\+Inf|NaN)$')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A strict reader of the text format: every sample belongs to a family declared by # TYPE before it."""
    types: dict[str, str] = {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram"} and name not in types
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no # TYPE"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples.setdefault(name, []).append((labels, float(m.group(3))))
    return samples


def test_metrics_parse_and_count(http):
    before = parse_prometheus(http.get("/metrics").text)
    for _ in range(3):
        assert http.post("/v1/preference", json=BASE).status_code == 200
    assert http.post("/v1/preference", json={"prompt": 1}).status_code == 422
    r = http.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = parse_prometheus(r.text)

    def value(samples, name, **labels):
        return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))

    ok = dict(endpoint="/v1/preference", status="200")
    assert value(after, "prefpred_requests_total", **ok) - value(before, "prefpred_requests_total", **ok) == 3
    bad = dict(endpoint="/v1/preference", status="422")
    assert value(after, "prefpred_request_errors_total", **bad) - value(before, "prefpred_request_errors_total",
                                                                      **bad) == 1
    assert value(after, "prefpred_pairs_scored_total") - value(before, "prefpred_pairs_scored_total") == 3
    for hist in ("prefpred_request_duration_seconds", "prefpred_batch_size", "prefpred_model_duration_seconds"):
        series: dict[tuple, list[tuple[float, float]]] = {}
        for lab, v in after[f"{hist}_bucket"]:
            key = tuple(sorted((k, x) for k, x in lab.items() if k != "le"))
            series.setdefault(key, []).append((float(lab["le"].replace("+Inf", "inf")), v))
        for key, buckets in series.items():
            counts = [v for _, v in sorted(buckets)]
            assert counts == sorted(counts) and buckets[-1][0] == float("inf")
            total = [v for lab, v in after[f"{hist}_count"] if tuple(sorted(lab.items())) == key]
            assert total == [counts[-1]]
    assert value(after, "prefpred_queue_depth") == 0
    assert value(after, "prefpred_model_info", kind="cpu") == 1


# ------------------------------------------------------------------------------------------------ fuzz
def _from_schema(schema: dict, spec: dict, depth: int = 0) -> st.SearchStrategy:
    """Values that follow ``schema`` (mostly), and arbitrary JSON now and then to break the types."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _from_schema(spec["components"]["schemas"][name], spec, depth)
    anything = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                                        inner, max_size=3),
                            max_leaves=6)
    if "anyOf" in schema:
        good = st.one_of([_from_schema(s, spec, depth + 1) for s in schema["anyOf"]])
    elif schema.get("type") == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fields = {k: _from_schema(v, spec, depth + 1) for k, v in props.items()}

        @st.composite
        def obj(draw):
            keys = [k for k in props if k in required or draw(st.integers(0, 3)) > 0]
            out = {k: draw(fields[k]) for k in keys}
            if draw(st.integers(0, 9)) == 0:
                out[draw(st.text(max_size=6))] = draw(anything)
            return out

        good = obj()
    elif schema.get("type") == "array":
        items = _from_schema(schema.get("items", {}), spec, depth + 1)
        good = st.lists(items, min_size=max(0, schema.get("minItems", 0) - 1), max_size=4 if depth < 3 else 2)
    elif schema.get("type") == "string":
        size = min(schema.get("maxLength", 60), 60)
        good = st.from_regex(rf"\A\w[\w .?]{{0,{size - 1}}}\Z") | st.text(max_size=size)
    elif schema.get("type") == "null":
        good = st.none()
    else:
        good = anything
    if depth == 0 and schema.get("examples"):  # the spec's own examples, then variations of the schema
        good = st.sampled_from(schema["examples"]) | good
    return st.one_of(*[good] * 9, anything) if depth > 0 else good


@pytest.fixture(scope="module")
def spec(http):
    r = http.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def _fuzz_strategy(spec):
    bodies = []
    for path, item in spec["paths"].items():
        post = item.get("post")
        if post and "requestBody" in post:
            schema = post["requestBody"]["content"]["application/json"]["schema"]
            bodies.append(st.tuples(st.just(path), _from_schema(schema, spec)))
    assert {b for b in spec["paths"]} >= {"/v1/preference", "/v1/rank"}
    return st.one_of(bodies)


def test_fuzz_openapi_spec_finds_no_5xx(http, spec):
    seen: set[int] = set()

    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(_fuzz_strategy(spec))
    def check(case):
        path, body = case
        # json.dumps writes NaN/Infinity literals (httpx would refuse them): the server must cope with those too
        r = http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
        seen.add(r.status_code)
        assert r.status_code < 500, (path, body, r.text)
        assert r.headers["content-type"].startswith("application/json")
        if r.status_code == 200:
            results = r.json()["results"] if "results" in r.json() else [r.json()]
            assert all(np.isfinite(list(x.get("score", x.get("p_a")) for x in results)))
        else:
            assert r.json()["message"]

    check()
    assert 200 in seen and 422 in seen  # the fuzz reached both the model and the validation
    assert http.get("/health").status_code == 200


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_refuses_bad_setups_in_one_line(run_dir, tmp_path, monkeypatch):
    def serve(*args):
        return runner.invoke(cli_app, ["serve", *args])

    assert serve("--help").exit_code == 0
    r = serve()
    assert r.exit_code == 2 and "exactly one of --run" in r.output
    r = serve("--run", str(run_dir), "--model", "x")
    assert r.exit_code == 2
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text('{"kind": "cpu"}')
    r = serve("--run", str(broken))
    assert r.exit_code == 2 and "incomplete run" in r.output and COMPLETE_MARKER in r.output
    monkeypatch.delenv("PREFPRED_TEST_NO_TOKEN", raising=False)
    r = serve("--run", str(run_dir), "--token-env", "PREFPRED_TEST_NO_TOKEN")
    assert r.exit_code == 2 and "PREFPRED_TEST_NO_TOKEN" in r.output
    r = serve("--run", str(run_dir), "--max-pairs", "0")
    assert r.exit_code == 2 and "max_pairs" in r.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = serve("--run", str(run_dir), "--port", str(busy.getsockname()[1]))
        assert r.exit_code == 2 and "cannot listen on 127.0.0.1" in r.output
    assert "Traceback" not in r.output


@pytest.mark.slow
def test_cli_serves_and_ctrl_c_lets_the_in_flight_request_finish(run_dir):
    import os
    import signal
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "PREFPRED_SERVE_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "prefpred", "serve", "--run", str(run_dir), "--port", "0",
                             "--token-env", "PREFPRED_SERVE_TOKEN", "--max-wait-ms", "3000", "--no-access-log"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
        reader.start()
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = [m.group(0) for line in list(lines) if (m := re.search(r"http://127\.0\.0\.1:\d+", line))]
            url = found[0] if found else None
            time.sleep(0.05)
        assert url, "".join(lines)
        while not _healthy(url):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.05)
        # request 1 is half uploaded: it counts as arriving, so the batcher holds request 2 for it (max 3 s)
        body = json.dumps(BASE).encode()
        half = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        half.sendall(f"POST /v1/preference HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        out: dict = {}
        t = threading.Thread(target=lambda: out.update(r=httpx.post(
            url + "/v1/preference", json=BASE, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)))
        t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # both requests are in flight
        time.sleep(0.3)
        half.sendall(body[5:])
        answer = half.recv(65536)
        t.join(60)
        assert out["r"].status_code == 200, out["r"].text
        assert answer.startswith(b"HTTP/1.1 200"), answer
        half.close()
        assert proc.wait(60) == 0
        reader.join(10)
        text = "".join(lines)
        assert "Traceback" not in text and TOKEN not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_zero_shot_judge_is_served_without_a_run(tiny_qwen_dir):
    judge, info = load_judge(str(tiny_qwen_dir), max_length=512, device="cpu", dtype="float32")
    pairs = [dataclasses.replace(p, id=f"j{i}") for i, p in enumerate(planted_pairs(3, seed=4))]
    expected = judge.predict_proba(pairs)
    app = create_app(judge, info=info, settings=ServeSettings())
    with BackgroundServer(app) as srv, PrefpredClient(srv.url) as client:
        assert client.model_info()["kind"] == "zero-shot"
        got = client.preference_batch([{"id": p.id, **_texts(p, True)} for p in pairs])
    np.testing.assert_allclose(_proba(got), expected, rtol=0, atol=1e-9)
