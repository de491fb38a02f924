"""``prefpred serve``: a preference model as an HTTP service (FastAPI + uvicorn).

* :mod:`~prefpred.serve.schemas`: request/response bodies, :class:`~prefpred.serve.schemas.Limits`, request -> Pair;
* :mod:`~prefpred.serve.batcher`: dynamic micro-batching in front of the model's worker thread;
* :mod:`~prefpred.serve.ranking`: Bradley-Terry scores for ``/v1/rank``;
* :mod:`~prefpred.serve.metrics`: Prometheus text format;
* :mod:`~prefpred.serve.app`: the app factory :func:`~prefpred.serve.app.create_app`;
* :mod:`~prefpred.serve.server`: uvicorn in the foreground or a background thread;
* :mod:`~prefpred.serve.client`: a small httpx client.

Limits: one process, one model thread (the model is never called concurrently; a GPU model batches through
the micro-batcher, a CPU model uses its own threads inside a call); no TLS (put a proxy in front when binding
beyond 127.0.0.1); the token is one shared secret, not per-user auth.
"""
