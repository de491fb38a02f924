"""prefpred.serve parts on their own: the micro-batcher, Bradley-Terry ranking, metrics text, request -> Pair."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from prefpred.serve.batcher import BatcherClosed, MicroBatcher
from prefpred.serve.metrics import Metrics
from prefpred.serve.ranking import bradley_terry, ranks, win_matrix
from prefpred.serve.schemas import Limits, PreferenceRequest, format_loc, preference_pairs, to_pair
from prefpred.types import Pair, Turn


class _Recorder:
    """A stand-in model: row i is a deterministic function of pair i's prompt; records every call."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None):
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, pairs):
        import time

        self.calls.append([p.id for p in pairs])
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and any(p.id == self.fail_on for p in pairs):
            raise ValueError("bad pair")
        time.sleep(self.delay)
        x = np.asarray([float(p.turns[0].prompt) for p in pairs])
        return np.stack([x, 2 * x, 3 * x], axis=1)


def _pair(i: int, tag: str = "") -> Pair:
    return Pair(id=f"{tag}{i}", turns=(Turn(str(i), "a", "b"),))


async def _run(batcher: MicroBatcher, requests: list[list[Pair]], stagger: float = 0.0):
    await batcher.start()
    try:
        async def one(k, pairs):
            await asyncio.sleep(stagger * k)
            return await batcher.submit(pairs)

        return await asyncio.wait_for(asyncio.gather(*(one(k, r) for k, r in enumerate(requests)),
                                                     return_exceptions=True), 60)
    finally:
        await batcher.stop()


def test_each_request_gets_its_own_rows_in_order_and_requests_are_merged():
    model = _Recorder(delay=0.01)
    requests = [[_pair(10 * k + j, f"r{k}-") for j in range(k % 3 + 1)] for k in range(20)]
    out = asyncio.run(_run(MicroBatcher(model, max_batch_size=16, max_wait_ms=20), requests))
    for req, got in zip(requests, out, strict=True):
        x = np.asarray([float(p.turns[0].prompt) for p in req])
        np.testing.assert_array_equal(got, np.stack([x, 2 * x, 3 * x], axis=1))
    assert len(model.calls) < len(requests) and max(len(c) for c in model.calls) <= 16
    assert sorted(i for c in model.calls for i in c) == sorted(p.id for r in requests for p in r)
    assert model.threads == {"prefpred-model_0"}  # off the event loop, one worker thread


def test_disabled_batching_scores_every_request_alone():
    model = _Recorder()
    requests = [[_pair(k)] for k in range(8)]
    asyncio.run(_run(MicroBatcher(model, max_batch_size=16, max_wait_ms=50, enabled=False), requests))
    assert sorted(model.calls) == sorted([[str(k)] for k in range(8)])


def test_a_request_larger_than_the_batch_is_scored_alone_and_whole():
    model = _Recorder()
    big = [_pair(k, "big") for k in range(10)]
    out = asyncio.run(_run(MicroBatcher(model, max_batch_size=4, max_wait_ms=5), [[_pair(1)], big, [_pair(2)]]))
    assert [p.id for p in big] in model.calls and out[1].shape == (10, 3)
    assert all(len(c) <= 4 or c == [p.id for p in big] for c in model.calls)


def test_a_failing_request_fails_alone_and_the_worker_survives():
    model = _Recorder(delay=0.005, fail_on="7")
    requests = [[_pair(k)] for k in range(10)]
    out = asyncio.run(_run(MicroBatcher(model, max_batch_size=32, max_wait_ms=30), requests))
    assert isinstance(out[7], ValueError)
    assert all(isinstance(o, np.ndarray) and o[0, 0] == k for k, o in enumerate(out) if k != 7)
    assert any(len(c) > 1 and "7" in c for c in model.calls)  # it was batched, then isolated


def test_wrong_shape_from_the_model_is_an_error_not_a_hang():
    async def main():
        b = MicroBatcher(lambda pairs: np.zeros((len(pairs), 2)), max_wait_ms=0)
        await b.start()
        try:
            with pytest.raises(RuntimeError, match="shape"):
                await asyncio.wait_for(b.submit([_pair(1)]), 60)
        finally:
            await b.stop()

    asyncio.run(main())


def test_submit_before_start_and_after_stop_is_refused():
    async def main():
        b = MicroBatcher(_Recorder())
        with pytest.raises(BatcherClosed):
            await b.submit([_pair(1)])
        await b.start()
        assert (await b.submit([_pair(3)]))[0, 0] == 3
        await b.stop()
        with pytest.raises(BatcherClosed):
            await b.submit([_pair(1)])

    asyncio.run(main())


def test_stop_finishes_queued_work():
    async def main():
        model = _Recorder()
        b = MicroBatcher(model, max_wait_ms=300)
        await b.start()
        b.announce()  # another request on its way: the first one waits for it
        task = asyncio.ensure_future(b.submit([_pair(5)]))
        await asyncio.sleep(0.02)
        assert b.queue_depth == 1
        await b.stop()
        return await task

    assert asyncio.run(main())[0, 0] == 5


def test_a_lone_request_never_waits_but_waits_for_announced_ones():
    async def main():
        model = _Recorder()
        b = MicroBatcher(model, max_wait_ms=2000)
        await b.start()
        try:
            loop = asyncio.get_running_loop()
            t = loop.time()
            await asyncio.wait_for(b.submit([_pair(1)]), 60)
            alone = loop.time() - t
            b.announce()
            b.announce()
            first = asyncio.ensure_future(b.submit([_pair(2)]))
            await asyncio.sleep(0.05)
            assert not first.done() and b.queue_depth == 1  # held for the announced ones
            second = asyncio.ensure_future(b.submit([_pair(3)], announced=True))
            b.withdraw()  # the other one was refused: nothing more is coming
            await asyncio.wait_for(asyncio.gather(first, second), 60)
            return alone, model.calls
        finally:
            await b.stop()

    alone, calls = asyncio.run(main())
    assert alone < 1.0  # far below max_wait
    assert calls == [["1"], ["2", "3"]]


# ------------------------------------------------------------------------------------------------ ranking
def test_bradley_terry_recovers_known_strengths():
    true = np.array([1.5, 0.0, -0.5, -1.0])
    true -= true.mean()
    p = np.exp(true)
    wins = 100 * p[:, None] / (p[:, None] + p[None, :])
    np.fill_diagonal(wins, 0)
    np.testing.assert_allclose(bradley_terry(wins, prior=0.0), true, atol=1e-6)
    assert ranks(bradley_terry(wins)).tolist() == [1, 2, 3, 4]


def test_bradley_terry_is_finite_when_one_candidate_wins_everything():
    wins = np.array([[0, 2, 2], [0, 0, 1], [0, 1, 0]], dtype=float)
    s = bradley_terry(wins)
    assert np.isfinite(s).all() and s[0] > s[1] == pytest.approx(s[2]) and s.mean() == pytest.approx(0)
    assert ranks(np.zeros(3)).tolist() == [1, 2, 3]  # equal scores keep input order


def test_win_matrix_counts_ties_as_half_wins():
    order = [(0, 1), (1, 0)]
    w = win_matrix(2, order, np.array([[0.6, 0.2, 0.2], [0.1, 0.5, 0.4]]))
    np.testing.assert_allclose(w, [[0, 0.7 + 0.7], [0.3 + 0.3, 0]])


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_text_escapes_labels_and_accumulates_buckets():
    m = Metrics(kind='we"ird\\kind\n', source="s")
    m.request_started()
    m.request_finished("/v1/x", "POST", 200, 0.003)
    m.batch_scored(pairs=5, requests=2, seconds=0.01)
    text = m.render()
    assert 'prefpred_model_info{kind="we\\"ird\\\\kind\\n",source="s"} 1' in text
    assert 'prefpred_request_duration_seconds_bucket{endpoint="/v1/x",le="0.0025"} 0' in text
    assert 'prefpred_request_duration_seconds_bucket{endpoint="/v1/x",le="0.005"} 1' in text
    assert 'prefpred_batch_size_bucket{le="4"} 0' in text and 'prefpred_batch_size_bucket{le="8"} 1' in text
    assert 'prefpred_batch_size_bucket{le="+Inf"} 1' in text and "prefpred_batch_size_sum 5" in text
    assert "prefpred_requests_in_flight 0" in text and text.count("# TYPE") == 10


# ------------------------------------------------------------------------------------------------ schemas
def test_request_to_pairs_text_and_turn_lists():
    single = PreferenceRequest.model_validate({"prompt": "q", "response_a": "a", "response_b": "b"})
    as_list = PreferenceRequest.model_validate({"prompt": ["q"], "response_a": ["a"], "response_b": ["b"]})
    assert preference_pairs(single)[0].turns == preference_pairs(as_list)[0].turns == (Turn("q", "a", "b"),)
    ragged = to_pair("x", ["q1", "q2"], ["a1"], "b1")
    assert ragged.turns == (Turn("q1", "a1", "b1"), Turn("q2", "", ""))
    assert to_pair("s", "bad \ud800", "a", "b").turns[0].prompt == "bad \ufffd"  # as clean_text does
    batch = PreferenceRequest.model_validate({"pairs": [{"prompt": "q", "response_a": "a", "response_b": "b"}] * 2})
    assert [p.id for p in preference_pairs(batch)] == ["0", "1"]


def test_format_loc_and_limits_validation():
    assert format_loc(("body", "pairs", 3, "response_a", "list[str]", 1)) == "pairs[3].response_a[1]"
    assert format_loc(("body",)) == "body"
    with pytest.raises(ValueError, match="max_pairs"):
        Limits(max_pairs=0)


def test_listening_socket_is_tcp_so_responses_are_not_delayed_by_nagle():
    import socket

    from prefpred.serve.server import bind_socket

    with bind_socket("127.0.0.1", 0) as sock:  # asyncio sets TCP_NODELAY on accepted sockets only for proto TCP
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0


def test_under_load_a_batch_waits_for_company_and_stops_waiting_when_load_ends():
    async def main():
        model = _Recorder(delay=0.05)
        b = MicroBatcher(model, max_wait_ms=300)
        await b.start()
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(asyncio.gather(*(b.submit([_pair(k)]) for k in range(3))), 60)
            assert max(len(c) for c in model.calls) > 1  # merged: the server is under load
            t = loop.time()
            await asyncio.wait_for(b.submit([_pair(7)]), 60)
            waited = loop.time() - t
            t = loop.time()
            await asyncio.wait_for(b.submit([_pair(8)]), 60)  # the last batch was alone: load is over
            return waited, loop.time() - t
        finally:
            await b.stop()

    waited, then = asyncio.run(main())
    assert waited >= 0.25 and then < waited
