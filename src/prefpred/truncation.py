"""Token budgets for rendered pairs: count tokens, and cut a pair to a budget without ever dropping it.

:func:`truncate_pair` keeps the newest turns whole while they fit; a turn that must be cut gives its prompt,
response A and response B each a proportional share with a floor (:func:`_shares`), each part keeping its
beginning (cut at a token boundary, with offsets when the tokenizer is fast). Used by
:meth:`prefpred.prompts.PromptStyle.render`.

Limits: token counts are of each text alone (``add_special_tokens=False``); BPE merges at the seams of the
rendered template can add a few tokens, which ``render`` absorbs by shrinking the budget and retrying.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from prefpred.types import Pair, Turn

_FIELDS = ("prompt", "response_a", "response_b")


def count_tokens(tokenizer: Any, text: str) -> int:
    """Number of tokens of ``text`` (no special tokens added)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def content_tokens(pair: Pair, tokenizer: Any) -> int:
    """Total tokens of a pair's prompts and responses (what :func:`truncate_pair` budgets)."""
    texts = [getattr(t, f) for t in pair.turns for f in _FIELDS]
    if not texts:
        return 0
    return sum(len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"])


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` has a chat template (styles then render through it)."""
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def n_special_tokens(tokenizer: Any) -> int:
    """How many special tokens ``tokenizer`` adds around one sequence (BOS: 1; BERT's [CLS] [SEP]: 2)."""
    probe = "hello"
    return max(0, len(tokenizer(probe, add_special_tokens=True)["input_ids"])
               - len(tokenizer(probe, add_special_tokens=False)["input_ids"]))


def _cut(tokenizer: Any, text: str, k: int, offsets: Sequence[tuple[int, int]] | None, ids: Sequence[int]) -> str:
    """The head of ``text`` holding at most ``k`` tokens."""
    if k <= 0:
        return ""
    if k >= len(ids):
        return text
    while k > 0:
        out = text[:offsets[k - 1][1]] if offsets is not None else tokenizer.decode(list(ids[:k]))
        if count_tokens(tokenizer, out) <= k:
            return out
        k -= 1
    return ""


def _shares(lengths: Sequence[int], budget: int, floor: int) -> list[int]:
    """Token shares for parts of ``lengths`` within ``budget``: a floor each, the rest in proportion."""
    if sum(lengths) <= budget:
        return list(lengths)
    floor = min(floor, budget // len(lengths))
    alloc = [min(n, floor) for n in lengths]
    rest = budget - sum(alloc)
    excess = [n - a for n, a in zip(lengths, alloc, strict=True)]
    total = sum(excess)
    extra = [rest * e // total for e in excess]
    left = rest - sum(extra)
    for i in sorted(range(len(lengths)), key=lambda j: -(rest * excess[j] % total)):
        if left <= 0:
            break
        if extra[i] < excess[i]:
            extra[i] += 1
            left -= 1
    return [a + e for a, e in zip(alloc, extra, strict=True)]


@dataclass
class _Encoded:
    """A pair's texts (prompt, response A, response B per turn) tokenized once."""

    texts: list[str]
    ids: list[list[int]]
    offsets: list[Any]
    lengths: list[int]


def _encode_parts(pair: Pair, tokenizer: Any) -> _Encoded:
    texts = [getattr(t, f) for t in pair.turns for f in _FIELDS]
    if not texts:
        return _Encoded([], [], [], [])
    fast = bool(getattr(tokenizer, "is_fast", False))
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=fast)
    ids = [list(x) for x in enc["input_ids"]]
    offsets = list(enc["offset_mapping"]) if fast else [None] * len(texts)
    return _Encoded(texts, ids, offsets, [len(x) for x in ids])


def truncate_pair(pair: Pair, tokenizer: Any, max_tokens: int, *, floor: int = 32) -> Pair:
    """Cut ``pair`` so that its texts (all prompts and responses kept) hold at most ``max_tokens`` tokens.

    The last turns are kept whole while they fit, newest first; the next older turn is kept cut down when at
    least ``3 * floor`` tokens remain (older turns are dropped). A turn that is cut gives its prompt, response
    A and response B each a proportional share of the budget, at least ``floor`` tokens each (a part shorter
    than that is kept whole); each part keeps its beginning. The last turn is always kept, so a pair is never
    dropped. The result records ``meta["truncated"]`` and ``meta["dropped_turns"]``.
    """
    return _truncate_encoded(pair, tokenizer, _encode_parts(pair, tokenizer), max_tokens, floor)


def _truncate_encoded(pair: Pair, tokenizer: Any, enc: _Encoded, max_tokens: int, floor: int) -> Pair:
    if max_tokens < 0:
        raise ValueError("max_tokens must be >= 0")
    turns = pair.turns
    lengths = enc.lengths
    if not turns or sum(lengths) <= max_tokens:
        return pair

    def cut_turn(ti: int, budget: int) -> Turn:
        idx = range(3 * ti, 3 * ti + 3)
        shares = _shares([lengths[i] for i in idx], budget, floor)
        return Turn(*(_cut(tokenizer, enc.texts[i], s, enc.offsets[i], enc.ids[i])
                      for i, s in zip(idx, shares, strict=True)))

    kept: list[Turn] = []
    remaining = max_tokens
    for ti in range(len(turns) - 1, -1, -1):
        cost = sum(lengths[3 * ti:3 * ti + 3])
        if cost <= remaining:
            kept.insert(0, turns[ti])
            remaining -= cost
            continue
        if not kept or remaining >= 3 * floor:
            kept.insert(0, cut_turn(ti, remaining))
        break
    meta = {**pair.meta, "truncated": True, "dropped_turns": len(turns) - len(kept)}
    return replace(pair, turns=tuple(kept), meta=meta)
