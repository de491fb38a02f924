"""A small, deterministic OpenAI-compatible chat-completions server for tests (loopback only).

It speaks ``POST /v1/chat/completions``:

* a request whose user message holds ``<assistant_a>``/``<assistant_b>`` tags is a *judgement*: the server
  prefers the longer, better-structured response (the signal planted by :func:`prefpred.testing.planted_pairs`)
  and answers JSON that follows the schema: bare when the request's ``response_format`` type is one it
  ``honours`` (default ``json_schema`` and ``json_object``), else wrapped in prose and a Markdown fence, as a
  model without constrained decoding does; a type it ``rejects`` gets HTTP 422 (llama.cpp rejects
  ``json_schema``);
* a ``seed-digits`` prompt is a *label-token judgement*: one token, the likeliest of ``0``/``1``/``2`` under
  :func:`digit_logprobs`, with ``top_logprobs`` when the request asks for them (the knob ``logprobs=False``
  answers without them, as ``transformers serve`` does);
* any other request is a *generation*: the answer's length and markdown grow with the digit in the model name
  (``cand-3`` writes better answers than ``cand-0``), deterministic per (model, prompt).

Knobs (constructor keywords, :meth:`FakeOpenAIServer.control`, or ``POST /control`` with a JSON object):
``fail_next`` + ``fail_status`` (the next N requests get that status, 429 with ``Retry-After: 0``), ``delay``
(seconds before every answer), ``slow_next`` + ``slow_delay`` (silent for that long before the headers),
``trickle_next`` + ``trickle_delay`` (headers at once, then the body one byte per ``trickle_delay`` seconds),
``bad_body_next`` + ``bad_body`` (HTTP 200 whose body is that text: invalid JSON or the wrong shape),
``malformed_next`` (the next N judgements are broken JSON), ``malformed_if`` (judgements whose text contains this
string are always broken), ``confidence_next`` + ``confidence_text`` (the next N judgements carry that literal as
confidence, e.g. ``NaN``), ``echo_key`` (answers quote the caller's bearer token), ``honours``/``rejects`` (response-format types) +
``reject_status`` (422; llama-cpp-python 0.3 answers 500), ``logprobs``, ``top_k_cap`` (most ``top_logprobs`` entries returned),
``position_bias`` (near-equal pairs get ``A`` instead of ``tie``), ``require_key`` (401 unless the bearer token
matches). ``GET /stats`` returns the request count per user-message hash. Run it by hand with
``python tests/openai_server.py --port 8000``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CRITERION_KEYS = ("relevance", "accuracy", "completeness", "clarity", "conciseness", "helpfulness", "harmlessness",
                  "instruction_following", "depth", "formatting")
_TAG_A = re.compile(r"<assistant_a>\n(.*?)\n</assistant_a>", re.S)
_TAG_B = re.compile(r"<assistant_b>\n(.*?)\n</assistant_b>", re.S)
_WORDS = "data value model answer reason step method result detail point example summary note".split()

_SEED_A = re.compile(r"Assistant A's response:\n(.*?)\n\nAssistant B's response:\n(.*?)\n\nWhich response", re.S)
DIGITS = ("0", "1", "2")
FILLER_TOKENS = ("The", " The", "\n", "Assistant", " ", "3", "A", "B")

DEFAULTS: dict[str, Any] = {"fail_next": 0, "fail_status": 500, "delay": 0.0, "slow_next": 0, "slow_delay": 0.0,
                            "trickle_next": 0, "trickle_delay": 0.2, "bad_body_next": 0, "bad_body": "{",
                            "malformed_next": 0, "malformed_if": None, "confidence_next": 0,
                            "confidence_text": "NaN", "echo_key": False, "honours": ["json_schema", "json_object"],
                            "rejects": [], "reject_status": 422, "logprobs": True, "top_k_cap": 20, "position_bias": False,
                            "require_key": None, "tie_band": 0.15}


def content_hash(text: str) -> str:
    """Key under which requests are counted: sha256 of the last user message."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def quality(text: str) -> float:
    """Length plus markdown structure: what the planted signal rewards."""
    words = len(text.split())
    structure = sum(1 for ln in text.splitlines() if ln.startswith(("## ", "- "))) + text.count("**") // 2
    return words + 8.0 * structure


def judge(user: str, *, tie_band: float, position_bias: bool) -> dict[str, Any]:
    qa = quality("\n".join(_TAG_A.findall(user)))
    qb = quality("\n".join(_TAG_B.findall(user)))
    margin = (qa - qb) / max(qa, qb, 1.0)
    if abs(margin) < tie_band:
        verdict = "A" if position_bias else "tie"
    else:
        verdict = "A" if margin > 0 else "B"
    sa = max(1, min(10, round(1 + 9 * qa / max(qa + qb, 1.0))))
    sb = max(1, min(10, round(1 + 9 * qb / max(qa + qb, 1.0))))
    return {"scores": {k: {"A": sa, "B": sb} for k in CRITERION_KEYS}, "verdict": verdict,
            "confidence": round(min(1.0, 0.4 + abs(margin)), 3)}


def digit_logprobs(user: str) -> dict[str, float]:
    """Log-probabilities of the first answer token of a ``seed-digits`` prompt: ``0`` (A better), ``1`` (B
    better), ``2`` (tie) from the two responses' :func:`quality`, with a position bias towards ``0`` (so swap
    averaging matters), and a few filler tokens below them; normalized over all listed tokens."""
    m = _SEED_A.search(user)
    qa, qb = (quality(m.group(1)), quality(m.group(2))) if m else (1.0, 1.0)
    margin = (qa - qb) / max(qa, qb, 1.0)
    logits = {"0": 2.0 * margin + 0.7, "1": -2.0 * margin, "2": 0.3 - 2.0 * abs(margin)}
    logits.update({t: -3.0 - 0.5 * i for i, t in enumerate(FILLER_TOKENS)})
    logits["The"] = 0.0  # a non-label token that can outrank a label word
    norm = math.log(sum(math.exp(v) for v in logits.values()))
    return {t: v - norm for t, v in logits.items()}


def generate(model: str, prompt: str) -> str:
    digits = re.findall(r"\d", model)
    q = int(digits[-1]) % 4 if digits else 1
    rng = random.Random(content_hash(model + "\x00" + prompt))
    sentences = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 9))).capitalize() + "."
                 for _ in range(1 + 2 * q)]
    if q >= 2:
        return "## Answer\n" + "\n".join(f"- **{rng.choice(_WORDS)}** {s}" for s in sentences)
    return " ".join(sentences)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # a killed client is expected
            super().handle_error(request, client_address)


class FakeOpenAIServer:
    """The server in a background thread, on 127.0.0.1 and a free port."""

    def __init__(self, **knobs: Any):
        self.knobs = dict(DEFAULTS)
        self.control(**knobs)
        self.counts: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.keys_seen: set[str] = set()
        self.formats_seen: list[Any] = []
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0) -> FakeOpenAIServer:
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = _QuietServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def control(self, **knobs: Any) -> None:
        unknown = set(knobs) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown knobs {sorted(unknown)}")
        self.knobs.update(knobs)

    # ------------------------------------------------------------------------------------ answering
    def _take(self, name: str) -> bool:
        with self.lock:
            if self.knobs[name] > 0:
                self.knobs[name] -= 1
                return True
            return False

    def answer(self, body: dict[str, Any], auth: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        messages = body.get("messages") or []
        user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), None)
        if not isinstance(user, str) or "model" not in body:  # e.g. a request cut short by a killed client
            return 400, _error("a request needs 'model' and a user message", "invalid_request"), {}
        model = str(body["model"])
        token = auth[len("Bearer "):] if auth and auth.startswith("Bearer ") else None
        with self.lock:
            self.counts[content_hash(user)] += 1
            if token:
                self.keys_seen.add(token)
            self.formats_seen.append(body.get("response_format"))
            knobs = dict(self.knobs)
        if knobs["require_key"] is not None and token != knobs["require_key"]:
            return 401, _error("Incorrect API key provided", "invalid_api_key"), {}
        if self._take("fail_next"):
            status = int(knobs["fail_status"])
            headers = {"Retry-After": "0"} if status == 429 else {}
            return status, _error(f"simulated HTTP {status}", "simulated"), headers
        if knobs["delay"]:
            time.sleep(knobs["delay"])
        if self._take("slow_next"):
            time.sleep(knobs["slow_delay"])
        fmt = body.get("response_format")
        fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
        if fmt_type is not None and fmt_type in knobs["rejects"]:
            msg = "1 validation error: ('body', 'response_format', 'type'): Input should be 'text' or 'json_object'"
            return int(knobs["reject_status"]), _error(msg, "validation"), {}
        logprobs = None
        if body.get("logprobs") or _SEED_A.search(user):
            lps = digit_logprobs(user)
            best = max(lps, key=lps.get)
            text = best
            if knobs["logprobs"] and body.get("logprobs"):
                k = min(int(body.get("top_logprobs") or 0), int(knobs["top_k_cap"]))
                top = sorted(lps.items(), key=lambda kv: -kv[1])[:k]
                logprobs = {"content": [{"token": best, "logprob": lps[best], "bytes": list(best.encode()),
                                         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                                          for t, v in top]}]}
        elif _TAG_A.search(user):
            broken = self._take("malformed_next") or (knobs["malformed_if"] is not None
                                                      and knobs["malformed_if"] in user)
            if knobs["echo_key"]:
                text = f"I was called with the key {token} and I will not judge."
            elif broken:
                text = '{"scores": {"relevance": {"A": 7, "B": '
            else:
                text = json.dumps(judge(user, tie_band=knobs["tie_band"], position_bias=knobs["position_bias"]))
                if self._take("confidence_next"):
                    text = re.sub(r'"confidence": [0-9.]+', '"confidence": ' + knobs["confidence_text"], text)
                if fmt_type not in knobs["honours"]:
                    text = f"Sure! Here is my judgement of the two assistants:\n```json\n{text}\n```\nHope it helps."
        else:
            text = generate(model, user)
            if knobs["echo_key"]:
                text += f" (asked with key {token})"
        usage = {"prompt_tokens": len(user.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return 200, {
            "id": "chatcmpl-" + content_hash(user + text)[:16], "object": "chat.completion", "created": int(time.time()),
            "model": model, "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": logprobs}],
        }, {}


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeOpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, *, raw: bytes | None = None,
              trickle: float = 0.0) -> None:
        data = raw if raw is not None else json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if trickle <= 0:
                self.wfile.write(data)
                return
            self.wfile.flush()
            for i in range(len(data)):  # one byte at a time: every read succeeds, the whole never arrives in time
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(trickle)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self) -> None:  # noqa: N802
        state = self.server_state
        if self.path.rstrip("/") == "/stats":
            with state.lock:
                self._send(200, {"counts": dict(state.counts), "statuses": dict(state.statuses)})
        elif self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": []})
        else:
            self._send(404, _error("not found", "not_found"))

    def do_POST(self) -> None:  # noqa: N802
        state = self.server_state
        try:
            body = self._body()
        except json.JSONDecodeError:
            self._send(400, _error("body is not JSON", "bad_json"))
            return
        if self.path.rstrip("/") == "/control":
            try:
                state.control(**body)
            except ValueError as e:
                self._send(400, _error(str(e), "bad_knob"))
                return
            self._send(200, {"knobs": state.knobs})
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, _error("not found", "not_found"))
            return
        with state.lock:
            state.inflight += 1
            state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            status, payload, headers = state.answer(body, self.headers.get("Authorization"))
        finally:
            with state.lock:
                state.inflight -= 1
        with state.lock:
            state.statuses[status] += 1
        raw = state.knobs["bad_body"].encode("utf-8") if status == 200 and state._take("bad_body_next") else None
        trickle = float(state.knobs["trickle_delay"]) if status == 200 and state._take("trickle_next") else 0.0
        self._send(status, payload, headers, raw=raw, trickle=trickle)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--delay", type=float, default=0.0)
    args = ap.parse_args()
    server = FakeOpenAIServer(delay=args.delay).start(args.port)
    print(f"serving on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
