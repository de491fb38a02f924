"""Request and response bodies of ``prefpred serve`` (pydantic), their limits, and the request -> Pair mapping.

Shapes (every text is a string, or a list of strings with one item per conversation turn):

* ``POST /v1/preference``: one pair ``{"id"?, "prompt", "response_a", "response_b"}`` or a batch
  ``{"pairs": [pair, ...]}``; the answer is ``{"id", "p_a", "p_b", "p_tie", "winner"}`` or ``{"results": [...]}``.
* ``POST /v1/rank``: ``{"prompt", "responses": [text, ...], "ids"?}``; the answer scores and ranks every candidate.

Two kinds of refusal, both naming the offending field (``pairs[3].response_a``): a body that does not fit the
schema (wrong type, unknown key, an empty or blank text, half of a pair) is a 422; a body that fits but exceeds a
limit of this server (:class:`Limits`: pairs per request, candidates, turns, characters per text) is a 413.
:func:`check_preference` / :func:`check_rank` do the checks the schema cannot; the body size limit is checked
before parsing, by the app's middleware. Blank texts are refused (a turn inside a list may be empty, as in the
Arena data, but not every turn).

:func:`to_pair` builds :class:`~prefpred.types.Pair` records the way the prefpred JSONL reader does (texts
cleaned by :func:`prefpred.data.clean_text`, ragged turn lists padded with ``""``), so a pair sent here scores
exactly as the same pair read from a file by ``prefpred predict``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from prefpred.data import clean_text
from prefpred.types import Pair, Turn


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may hold; exceeding any of these is a 413 naming the field."""

    max_body_bytes: int = 8 * 1024 * 1024
    """Request body size (checked before parsing)."""
    max_pairs: int = 256
    """Pairs in one ``/v1/preference`` request."""
    max_candidates: int = 16
    """Candidates in one ``/v1/rank`` request (every ordered pair is judged: N x (N - 1) pairs)."""
    max_turns: int = 32
    """Turns in one text given as a list."""
    max_chars: int = 100_000
    """Characters in one text (one turn)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"limit {f.name} must be >= 1, got {getattr(self, f.name)}")
        if self.max_candidates < 2:
            raise ValueError("limit max_candidates must be >= 2")


class ApiError(Exception):
    """A refused request: HTTP ``status``, a short ``code``, the field to blame (or ``None``) and why."""

    status = 400
    code = "bad_request"

    def __init__(self, field: str | None, message: str, *, status: int | None = None, code: str | None = None):
        self.field = field
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        super().__init__(f"{field}: {message}" if field else message)


class InvalidRequest(ApiError):
    """A body the schema accepts but that does not make sense (a missing field of one form, ...): 422."""

    status = 422
    code = "invalid_request"


class LimitExceeded(ApiError):
    """A request that fits the schema but exceeds a :class:`Limits` value: 413."""

    status = 413
    code = "limit_exceeded"


# --------------------------------------------------------------------------------------------- texts
def _not_blank(value: str | list[str]) -> str | list[str]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("text is empty or blank")
        return value
    if not value:
        raise ValueError("list of turns is empty")
    if not any(item.strip() for item in value):
        raise ValueError("every turn is empty or blank")
    return value


Text = Annotated[str | list[str], AfterValidator(_not_blank),
                 Field(description="A text, or a list of texts with one item per conversation turn.")]


def _turns(value: str | list[str]) -> list[str]:
    return [clean_text(value)] if isinstance(value, str) else [clean_text(v) for v in value]


def to_pair(pair_id: str, prompt: str | list[str], response_a: str | list[str],
            response_b: str | list[str]) -> Pair:
    """A :class:`Pair` as the prefpred JSONL reader builds it (ragged turn lists padded with empty turns)."""
    prompts, resp_a, resp_b = _turns(prompt), _turns(response_a), _turns(response_b)
    n = max(len(prompts), len(resp_a), len(resp_b))
    prompts, resp_a, resp_b = ([*x, *[""] * (n - len(x))] for x in (prompts, resp_a, resp_b))
    return Pair(id=pair_id, turns=tuple(Turn(p, a, b) for p, a, b in zip(prompts, resp_a, resp_b, strict=True)),
                source="serve")


def _check_text(value: str | list[str], field: str, limits: Limits) -> None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(value, str) and len(items) > limits.max_turns:
        raise LimitExceeded(field, f"{len(items)} turns, more than the limit of {limits.max_turns}")
    for k, item in enumerate(items):
        if len(item) > limits.max_chars:
            where = field if isinstance(value, str) else f"{field}[{k}]"
            raise LimitExceeded(where, f"{len(item)} characters, more than the limit of {limits.max_chars}")


# --------------------------------------------------------------------------------------------- preference
_STRICT = ConfigDict(extra="forbid", strict=True)


class PairIn(BaseModel):
    """One comparison: a prompt and two responses (each a text or one text per turn)."""

    model_config = _STRICT

    id: str | None = Field(None, max_length=256, description="Echoed back with the result.")
    prompt: Text
    response_a: Text
    response_b: Text


class PreferenceRequest(BaseModel):
    """One pair (``prompt``, ``response_a``, ``response_b``, optional ``id``), or several under ``pairs``."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"id": "q1", "prompt": "What is 2 + 2?", "response_a": "4", "response_b": "5"},
        {"pairs": [{"prompt": "Say hi", "response_a": "Hi!", "response_b": "Hello there."}]},
    ]})

    pairs: list[PairIn] | None = Field(None, min_length=1, description="A batch of pairs, scored in order.")
    id: str | None = Field(None, max_length=256)
    prompt: Text | None = None
    response_a: Text | None = None
    response_b: Text | None = None

    def check_form(self) -> None:
        """Raise :class:`InvalidRequest` unless the body is exactly one of the two forms."""
        flat = {"id": self.id, "prompt": self.prompt, "response_a": self.response_a, "response_b": self.response_b}
        if self.pairs is not None:
            extra = [k for k, v in flat.items() if v is not None]
            if extra:
                raise InvalidRequest(extra[0], "give either 'pairs' or one pair's fields, not both")
            return
        for name in ("prompt", "response_a", "response_b"):
            if flat[name] is None:
                raise InvalidRequest(name, "field required (send prompt, response_a and response_b, "
                                           "or a list of pairs under 'pairs')")

    @property
    def is_batch(self) -> bool:
        return self.pairs is not None

    def items(self) -> list[PairIn]:
        """The pairs of this request, in order (a single pair is a batch of one)."""
        if self.pairs is not None:
            return list(self.pairs)
        # already validated as this request's fields: no second validation
        return [PairIn.model_construct(id=self.id, prompt=self.prompt, response_a=self.response_a,
                                       response_b=self.response_b)]


def check_preference(request: PreferenceRequest, limits: Limits) -> None:
    """Raise :class:`InvalidRequest` (422) for a mixed or partial body, :class:`LimitExceeded` (413) naming the
    first field over a limit."""
    request.check_form()
    items = request.items()
    if len(items) > limits.max_pairs:
        raise LimitExceeded("pairs", f"{len(items)} pairs, more than the limit of {limits.max_pairs}")
    for i, item in enumerate(items):
        prefix = f"pairs[{i}]." if request.is_batch else ""
        for name in ("prompt", "response_a", "response_b"):
            _check_text(getattr(item, name), prefix + name, limits)


def preference_pairs(request: PreferenceRequest) -> list[Pair]:
    """The request's pairs as :class:`Pair` records (id: the given one, else the position)."""
    return [to_pair(item.id if item.id is not None else str(i), item.prompt, item.response_a, item.response_b)
            for i, item in enumerate(request.items())]


class PreferenceOut(BaseModel):
    """Probabilities that a person prefers response A, response B, or calls it a tie (they sum to 1)."""

    id: str | None
    p_a: float
    p_b: float
    p_tie: float
    winner: str = Field(description="The most probable outcome: a, b or tie.")


class PreferenceBatchOut(BaseModel):
    results: list[PreferenceOut] = Field(description="One result per pair, in request order.")


# --------------------------------------------------------------------------------------------- rank
class RankRequest(BaseModel):
    """A prompt and N candidate responses; every ordered pair of candidates is judged."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"prompt": "Name a prime number.", "responses": ["7", "Nine.", "2 is the smallest prime."]},
    ]})

    prompt: Text
    responses: list[Text] = Field(min_length=2, description="Candidate responses (at least 2).")
    ids: list[Annotated[str, Field(max_length=256)]] | None = Field(
        None, description="One id per candidate, echoed back (default: the candidate's position).")



def check_rank(request: RankRequest, limits: Limits) -> None:
    """Raise :class:`InvalidRequest` (422) when ``ids`` does not match ``responses``, :class:`LimitExceeded` (413)
    naming the first field over a limit."""
    n = len(request.responses)
    if request.ids is not None and len(request.ids) != n:
        raise InvalidRequest("ids", f"{len(request.ids)} ids for {n} responses")
    if n > limits.max_candidates:
        raise LimitExceeded("responses", f"{n} candidates, more than the limit of {limits.max_candidates}")
    _check_text(request.prompt, "prompt", limits)
    for i, response in enumerate(request.responses):
        _check_text(response, f"responses[{i}]", limits)


def rank_pairs(request: RankRequest) -> tuple[list[Pair], list[tuple[int, int]]]:
    """Every ordered pair ``(i, j)``, ``i != j``, as a :class:`Pair` with candidate i as A and j as B."""
    order = [(i, j) for i in range(len(request.responses)) for j in range(len(request.responses)) if i != j]
    pairs = [to_pair(f"{i}-{j}", request.prompt, request.responses[i], request.responses[j]) for i, j in order]
    return pairs, order


class RankedCandidate(BaseModel):
    index: int = Field(description="Position of the candidate in the request.")
    id: str
    score: float = Field(description="Bradley-Terry log-strength (mean 0): P(i beats j) = sigmoid(s_i - s_j).")
    rank: int = Field(description="1 = the candidate people would prefer most.")
    win_rate: float = Field(description="Mean of P(win) + P(tie) / 2 over every comparison it was in.")


class RankOut(BaseModel):
    results: list[RankedCandidate] = Field(description="One entry per candidate, in request order.")
    best: int = Field(description="Index of the top-ranked candidate.")
    order: list[int] = Field(description="Candidate indices, best first.")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: what went wrong, and which field when one is to blame."""

    error: str = Field(description="Short code: invalid_request, limit_exceeded, unauthorized, not_found, ...")
    message: str
    field: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="Every schema error (field, message).")


def format_loc(loc: Sequence[Any]) -> str:
    """``("body", "pairs", 3, "response_a")`` -> ``pairs[3].response_a`` (``body`` for the body itself)."""
    out = ""
    parts = list(loc[1:]) if loc and loc[0] == "body" else list(loc)
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"str", "list[str]"}:
            continue  # the branch of the str | list[str] union pydantic tried
        else:
            out += f".{part}" if out else str(part)
    return out or "body"
