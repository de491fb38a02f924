"""Server metrics in the Prometheus text exposition format (version 0.0.4), hand-written: no dependency.

What ``GET /metrics`` shows (all names start with ``prefpred_``):

* ``requests_total{endpoint,method,status}`` and ``request_errors_total{endpoint,status}`` (status >= 400),
* ``request_duration_seconds{endpoint}``: a latency histogram,
* ``batch_size`` (pairs per model call), ``batch_requests`` (requests per model call) and
  ``model_duration_seconds`` histograms, ``pairs_scored_total``,
* ``queue_depth`` (pairs waiting for the model), ``requests_in_flight``, and ``model_info{kind,source}`` = 1.

``endpoint`` is one of the app's route paths or ``other``, so label cardinality stays bounded whatever paths
clients send. Every update takes one lock: safe from the event loop and from worker threads.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    """Cumulative-bucket histogram of one series (not thread-safe alone: :class:`Metrics` holds the lock)."""

    def __init__(self, buckets: Sequence[float]):
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: Sequence[tuple[str, str]] = ()) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append(f"{name}_bucket{_labels([*labels, ('le', _num(bound))])} {running}")
        out.append(f"{name}_sum{_labels(labels)} {_num(self.total)}")
        out.append(f"{name}_count{_labels(labels)} {self.n}")
        return out


class Metrics:
    """The server's counters, gauges and histograms; :meth:`render` writes the exposition text."""

    def __init__(self, *, kind: str = "", source: str = ""):
        self._lock = threading.Lock()
        self.kind, self.source = kind, source
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_requests = Histogram(BATCH_BUCKETS)
        self.model_duration = Histogram(LATENCY_BUCKETS)
        self.pairs_scored = 0
        self.in_flight = 0
        self.queue_depth: Callable[[], int] = lambda: 0

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request_finished(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[(endpoint, method, int(status))] += 1
            self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch_scored(self, pairs: int, requests: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(pairs)
            self.batch_requests.observe(requests)
            self.model_duration.observe(seconds)
            self.pairs_scored += pairs

    def render(self) -> str:
        """The Prometheus text format of every metric (one ``# HELP`` and ``# TYPE`` line each)."""
        with self._lock:
            out: list[str] = []

            def head(name: str, kind: str, text: str) -> None:
                out.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}"])

            head("prefpred_requests_total", "counter", "HTTP requests answered, by endpoint, method and status.")
            for (endpoint, method, status), n in sorted(self.requests.items()):
                labels = [("endpoint", endpoint), ("method", method), ("status", str(status))]
                out.append(f"prefpred_requests_total{_labels(labels)} {n}")
            head("prefpred_request_errors_total", "counter", "HTTP requests answered with status >= 400.")
            errors: Counter[tuple[str, int]] = Counter()
            for (endpoint, _, status), n in self.requests.items():
                if status >= 400:
                    errors[(endpoint, status)] += n
            for (endpoint, status), n in sorted(errors.items()):
                out.append(f"prefpred_request_errors_total{_labels([('endpoint', endpoint), ('status', str(status))])}"
                           f" {n}")
            head("prefpred_request_duration_seconds", "histogram", "Time from request start to response end.")
            for endpoint, hist in sorted(self.latency.items()):
                out.extend(hist.lines("prefpred_request_duration_seconds", [("endpoint", endpoint)]))
            head("prefpred_batch_size", "histogram", "Pairs per model call.")
            out.extend(self.batch_size.lines("prefpred_batch_size"))
            head("prefpred_batch_requests", "histogram", "Requests scored together per model call.")
            out.extend(self.batch_requests.lines("prefpred_batch_requests"))
            head("prefpred_model_duration_seconds", "histogram", "Seconds per model call.")
            out.extend(self.model_duration.lines("prefpred_model_duration_seconds"))
            head("prefpred_pairs_scored_total", "counter", "Pairs scored by the model.")
            out.append(f"prefpred_pairs_scored_total {self.pairs_scored}")
            head("prefpred_queue_depth", "gauge", "Pairs waiting for the model.")
            out.append(f"prefpred_queue_depth {self.queue_depth()}")
            head("prefpred_requests_in_flight", "gauge", "HTTP requests being handled.")
            out.append(f"prefpred_requests_in_flight {self.in_flight}")
            head("prefpred_model_info", "gauge", "The model being served (always 1).")
            out.append(f"prefpred_model_info{_labels([('kind', self.kind), ('source', self.source)])} 1")
            return "\n".join(out) + "\n"
