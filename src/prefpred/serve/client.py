"""A small Python client of ``prefpred serve`` (httpx): one connection pool, errors as :class:`ServeError`.

    from prefpred.serve.client import PrefpredClient

    with PrefpredClient("http://127.0.0.1:8000", token=os.environ.get("PREFPRED_SERVE_TOKEN")) as client:
        client.preference("What is 2 + 2?", "4", "5")            # {"id": None, "p_a": ..., "winner": "a"}
        client.preference_batch([{"prompt": ..., "response_a": ..., "response_b": ...}, ...])
        client.rank("Name a prime.", ["7", "Nine.", "2"])        # {"results": [...], "best": 0, ...}

Texts are strings, or lists of strings with one item per conversation turn. Every method raises
:class:`ServeError` (status, error code, field, message) for a 4xx/5xx answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

Text = str | Sequence[str]


class ServeError(RuntimeError):
    """A refused request: the HTTP status and the server's error body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        self.status, self.code, self.message, self.field = status, code, message, field
        super().__init__(f"HTTP {status} {code}: {message}")


def _text(value: Text) -> str | list[str]:
    return value if isinstance(value, str) else list(value)


class PrefpredClient:
    """Calls the endpoints of a ``prefpred serve`` server at ``base_url``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, token: str | None = None,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrefpredClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code >= 400:
            try:
                err = response.json()
            except ValueError:
                err = {}
            err = err if isinstance(err, dict) else {}
            raise ServeError(response.status_code, str(err.get("error", "error")),
                             str(err.get("message", response.text[:200])), err.get("field"))
        return response.text if path == "/metrics" else response.json()

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def model_info(self) -> dict[str, Any]:
        return self._call("GET", "/v1/model")

    def metrics(self) -> str:
        return self._call("GET", "/metrics")

    def preference(self, prompt: Text, response_a: Text, response_b: Text, *, id: str | None = None
                   ) -> dict[str, Any]:
        """``{"id", "p_a", "p_b", "p_tie", "winner"}`` for one pair."""
        body = {"prompt": _text(prompt), "response_a": _text(response_a), "response_b": _text(response_b)}
        if id is not None:
            body["id"] = id
        return self._call("POST", "/v1/preference", body)

    def preference_batch(self, pairs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One result per pair (mappings with ``prompt``, ``response_a``, ``response_b``, optional ``id``)."""
        body = {"pairs": [{k: (_text(v) if k != "id" else v) for k, v in p.items()} for p in pairs]}
        return self._call("POST", "/v1/preference", body)["results"]

    def rank(self, prompt: Text, responses: Sequence[Text], *, ids: Sequence[str] | None = None
             ) -> dict[str, Any]:
        """Bradley-Terry ``score`` and ``rank`` (1 = best) per candidate, ``best`` and ``order``."""
        body: dict[str, Any] = {"prompt": _text(prompt), "responses": [_text(r) for r in responses]}
        if ids is not None:
            body["ids"] = list(ids)
        return self._call("POST", "/v1/rank", body)
