"""The teacher's prompt style (``criteria-10-json``), its answer schema, validation and soft-label aggregation.

The teacher scores Assistant A and Assistant B from 1 to 10 on each of the ten :data:`~prefpred.prompts.CRITERIA`,
then gives a verdict (``"A"``, ``"B"`` or ``"tie"``) and a confidence in [0, 1], as one JSON object that follows
:func:`answer_schema`. Every pair is judged twice, the second time with A and B exchanged.

How an answer becomes probabilities (:func:`verdict_distribution`): a verdict ``v`` given with confidence ``c``
puts ``1/3 + 2/3 * c`` on ``v`` and splits the rest evenly between the two other classes, so confidence 0 means
"no idea" (uniform) and confidence 1 a one-hot label. The answer of the swapped order is mirrored back into the
original frame (its ``A`` is the original ``B``) and the two distributions are averaged (:func:`aggregate`). A
*position flip* is a pair whose two verdicts disagree after mirroring; a flipped pair therefore gets a soft,
uncertain label rather than either verdict.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Any

from prefpred.prompts import CRITERIA
from prefpred.types import LABELS, Pair

STYLE_NAME = "criteria-10-json"
STYLE_VERSION = "criteria-10-json/1"
"""Bumped whenever the rendered messages or the schema change; part of every cache key."""

VERDICTS: tuple[str, str, str] = ("A", "B", "tie")
"""Verdict strings in :data:`~prefpred.types.LABELS` order."""

CRITERION_KEYS: tuple[str, ...] = tuple(c.replace(" ", "_") for c in CRITERIA)
"""JSON property names of the criteria (``instruction following`` -> ``instruction_following``)."""

SCHEMA_NAME = "pairwise_judgement"


class MalformedAnswer(ValueError):
    """The teacher's text is not a JSON object that follows :func:`answer_schema`."""


def answer_schema() -> dict[str, Any]:
    """The JSON schema of one judgement (sent as ``response_format`` and used to validate every answer).

    Properties come in generation order: the scores first, so that the verdict follows the per-criterion
    assessment under guided decoding. Every property is required and no other is allowed (strict mode).
    """
    score = {"type": "integer", "minimum": 1, "maximum": 10}
    side = {"type": "object", "properties": {"A": score, "B": score}, "required": ["A", "B"],
            "additionalProperties": False}
    return {
        "type": "object",
        "properties": {
            "scores": {"type": "object", "properties": {k: side for k in CRITERION_KEYS},
                       "required": list(CRITERION_KEYS), "additionalProperties": False},
            "verdict": {"type": "string", "enum": list(VERDICTS)},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["scores", "verdict", "confidence"],
        "additionalProperties": False,
    }


JSON_MODES: tuple[str, ...] = ("json_schema", "json_object", "none")
"""Dialects of structured output, most to least specific (``auto`` tries them in this order)."""


def response_format(mode: str = "json_schema", schema: dict[str, Any] | None = None,
                    name: str = SCHEMA_NAME) -> dict[str, Any] | None:
    """The ``response_format`` argument of a chat-completions request in dialect ``mode``.

    * ``json_schema``: OpenAI structured outputs (OpenAI, vLLM, SGLang, TGI):
      ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``;
    * ``json_object``: llama.cpp's dialect, ``{"type": "json_object", "schema": {...}}`` (its server rejects
      ``json_schema`` with HTTP 422 but enforces this one by grammar);
    * ``none``: no ``response_format`` (``None``); the prompt alone asks for JSON.
    """
    schema = answer_schema() if schema is None else schema
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    if mode == "none":
        return None
    raise ValueError(f"unknown JSON mode {mode!r} (known: {', '.join(JSON_MODES)})")


SYSTEM_PROMPT = (
    "You are an impartial judge of AI assistants. You compare two assistants' responses to the same "
    "conversation and decide which one the human user would prefer. The order in which the responses are "
    "shown must not influence you. Answer with a single JSON object and nothing else."
)

_CRITERIA_LIST = "\n".join(f"- {k}: {c}" for k, c in zip(CRITERION_KEYS, CRITERIA, strict=True))

USER_TEMPLATE = (
    "Judge Assistant A and Assistant B on each of these ten criteria, scoring each response from 1 (very poor) "
    "to 10 (excellent):\n{criteria}\n\n"
    "{conversation}\n\n"
    "Then give your verdict: \"A\" if the human would prefer Assistant A, \"B\" if Assistant B, \"tie\" if "
    "neither is preferred; and your confidence in the verdict, from 0 (a guess) to 1 (certain).\n"
    "Reply with JSON of the form {{\"scores\": {{\"relevance\": {{\"A\": 7, \"B\": 5}}, ...all ten criteria...}}, "
    "\"verdict\": \"A\", \"confidence\": 0.8}}."
)


def render_conversation(pair: Pair) -> str:
    """The pair's turns, each response inside ``<assistant_a>``/``<assistant_b>`` tags."""
    blocks = []
    for i, t in enumerate(pair.turns, 1):
        blocks.append(f"<turn index=\"{i}\">\n<user>\n{t.prompt}\n</user>\n<assistant_a>\n{t.response_a}\n"
                      f"</assistant_a>\n<assistant_b>\n{t.response_b}\n</assistant_b>\n</turn>")
    return "<conversation>\n" + "\n".join(blocks) + "\n</conversation>"


def build_messages(pair: Pair) -> list[dict[str, str]]:
    """Chat messages asking the teacher to judge ``pair`` as shown (A first)."""
    user = USER_TEMPLATE.format(criteria=_CRITERIA_LIST, conversation=render_conversation(pair))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def pair_hash(pair: Pair) -> str:
    """Hash of the pair's texts in the order shown (the swapped pair has another hash)."""
    payload = json.dumps([[t.prompt, t.response_a, t.response_b] for t in pair.turns], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _no_constant(name: str) -> Any:
    raise MalformedAnswer(f"not valid JSON ({name} is not a JSON number)")


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses ``NaN``/``Infinity``/``-Infinity`` (Python accepts them; JSON does not)."""
    return json.loads(text, parse_constant=_no_constant)


def _json_candidates(text: str) -> list[Any]:
    """Every JSON object embedded in ``text`` (outermost ones, left to right): the whole text when it is one,
    else each ``{...}`` that decodes, so an answer wrapped in prose or a Markdown fence is still found."""
    try:
        return [loads_strict(text)]
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder(parse_constant=_no_constant)
    found, pos = [], text.find("{")
    while pos >= 0:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            pos = text.find("{", pos + 1)
            continue
        found.append(obj)
        pos = text.find("{", end)
    return found


def check_answer(obj: Any) -> dict[str, Any]:
    """Validate a decoded answer against :func:`answer_schema` (plus finiteness); :class:`MalformedAnswer`."""
    from jsonschema.exceptions import best_match

    e = best_match(_validator().iter_errors(obj))
    if e is not None:
        where = "/".join(str(p) for p in e.absolute_path) or "answer"
        raise MalformedAnswer(f"does not follow the schema at {where}: {e.message}")
    numbers = [obj["confidence"], *(v for side in obj["scores"].values() for v in side.values())]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
        raise MalformedAnswer("does not follow the schema: a number is not finite")
    return obj


def parse_answer(text: str | None) -> dict[str, Any]:
    """Parse and validate a teacher answer; :class:`MalformedAnswer` with the reason otherwise.

    The answer may be wrapped in prose or a Markdown code fence (servers that ignore ``response_format``, small
    models): the first embedded JSON object that follows the schema is taken. ``NaN``/``Infinity`` are not
    JSON and are refused, so a label is never built from a non-finite confidence.
    """
    if text is None or not text.strip():
        raise MalformedAnswer("empty answer")
    candidates = _json_candidates(text)
    if not candidates:
        try:
            loads_strict(text)
        except json.JSONDecodeError as e:
            raise MalformedAnswer(f"not valid JSON ({e.msg} at char {e.pos})") from None
    first_error: MalformedAnswer | None = None
    for obj in candidates:
        try:
            return check_answer(obj)
        except MalformedAnswer as e:
            first_error = first_error or e
    assert first_error is not None
    raise first_error


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = answer_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def verdict_distribution(verdict: str, confidence: float) -> tuple[float, float, float]:
    """Probabilities over (a, b, tie) of one judgement; see the module docstring."""
    top = 1.0 / 3.0 + 2.0 / 3.0 * float(confidence)
    rest = (1.0 - top) / 2.0
    out = [rest, rest, rest]
    out[VERDICTS.index(verdict)] = top
    return (out[0], out[1], out[2])


def mirror_verdict(verdict: str) -> str:
    """The verdict of the swapped order expressed in the original frame."""
    return {"A": "B", "B": "A", "tie": "tie"}[verdict]


def aggregate(ab: dict[str, Any], ba: dict[str, Any]) -> dict[str, Any]:
    """Combine the judgement of the pair as shown (``ab``) and of the swapped pair (``ba``).

    Returns ``label`` ([p_a, p_b, p_tie], summing to 1), the two verdicts and confidences in the original frame,
    ``flip`` (the verdicts disagree after mirroring), per-criterion scores averaged over both orders
    (``criteria``: name -> [score_a, score_b]) and their means ``score_a``/``score_b``.
    """
    v_ab, v_ba = ab["verdict"], mirror_verdict(ba["verdict"])
    d_ab = verdict_distribution(v_ab, ab["confidence"])
    d_ba = verdict_distribution(v_ba, ba["confidence"])
    label = [(x + y) / 2.0 for x, y in zip(d_ab, d_ba, strict=True)]
    total = sum(label)
    label = [x / total for x in label]
    criteria = {}
    for key in CRITERION_KEYS:
        s1, s2 = ab["scores"][key], ba["scores"][key]
        criteria[key] = [(s1["A"] + s2["B"]) / 2.0, (s1["B"] + s2["A"]) / 2.0]
    n = len(CRITERION_KEYS)
    return {
        "label": label,
        "verdicts": [v_ab, v_ba],
        "confidences": [float(ab["confidence"]), float(ba["confidence"])],
        "flip": v_ab != v_ba,
        "criteria": criteria,
        "score_a": sum(v[0] for v in criteria.values()) / n,
        "score_b": sum(v[1] for v in criteria.values()) / n,
    }


def label_name(verdict: str) -> str:
    """``"A"`` -> ``"a"``, ``"B"`` -> ``"b"``, ``"tie"`` -> ``"tie"``."""
    return LABELS[VERDICTS.index(verdict)]
