"""Prompt styles: how a pair is rendered into text for an LLM judge or a classification head.

A :class:`PromptStyle` turns a :class:`~prefpred.types.Pair` into model input text; styles live in a named
registry (:func:`get_style`, :func:`list_styles`, :func:`register_style`):

* ``seed-digits``: the study's prompt, verbatim (:data:`SEED_DIGITS_TEMPLATE`); answers ``0`` = A better,
  ``1`` = B better, ``2`` = equally good;
* ``criteria-10``: judge A and B on the ten :data:`CRITERIA`, then a one-digit verdict (same digits);
* ``classifier``: a compact multi-turn layout with no instruction, for sequence-classification heads.

Every style renders through the tokenizer's chat template when it has one. With a token budget
(``render(..., max_tokens=N)``) multi-turn conversations keep their last turns and prompt, response A and
response B each keep a proportional share with a floor (:func:`truncate_pair`); a pair is never dropped.
:meth:`PromptStyle.shared_prefix` is the text every rendering starts with (for the engine's prefix KV cache).

(Constants shared with other modules live at the top; the style registry follows. Token counting and
truncation live in :mod:`prefpred.truncation`, re-exported here.)
"""

from __future__ import annotations

import logging
import re
import weakref
from dataclasses import dataclass
from typing import Any

from prefpred.truncation import (  # noqa: F401 - truncate_pair and the token helpers are part of this API
    _encode_parts,
    _truncate_encoded,
    content_tokens,
    count_tokens,
    has_chat_template,
    n_special_tokens,
    truncate_pair,
)
from prefpred.types import ConfigError, Pair, Turn

logger = logging.getLogger(__name__)

SEED_DIGITS_TEMPLATE = """You are evaluating two AI assistant responses to a human query. Your task is to determine which response would be preferred by a human.

Human query: {prompt}

Assistant A's response:
{response_a}

Assistant B's response:
{response_b}

Which response would a human prefer? 

IMPORTANT: You must respond with ONLY a single digit from these options:
1 = Assistant B is better
2 = They are equally good
0 = Assistant A is better

Your answer (just the number, no explanation):"""  # noqa: W291  (verbatim, trailing space kept)
"""The study's prompt, verbatim (note the trailing space after ``prefer?``)."""

CRITERIA: tuple[str, ...] = (
    "relevance",
    "accuracy",
    "completeness",
    "clarity",
    "conciseness",
    "helpfulness",
    "harmlessness",
    "instruction following",
    "depth",
    "formatting",
)
"""The ten named criteria of the ``criteria-10`` style (also used by teacher labelling in ``prefpred.synth``)."""

DIGIT_LABEL_WORDS: tuple[str, str, str] = ("0", "1", "2")
"""The study's answer strings, in :data:`~prefpred.types.LABELS` order: ``0`` = A better, ``1`` = B better,
``2`` = equally good."""

_CRITERIA_LIST = "\n".join(f"{i}. {c[0].upper()}{c[1:]}" for i, c in enumerate(CRITERIA, 1))

CRITERIA_10_TEMPLATE = (
    "You are an impartial judge. Compare two AI assistant responses to the same conversation with a human "
    "and decide which one the human would prefer.\n\n"
    "Judge Assistant A and Assistant B on each of these ten criteria:\n"
    f"{_CRITERIA_LIST}\n\n"
    "{conversation}\n\n"
    "Weigh the ten criteria for both responses, then give your verdict.\n\n"
    "Respond with ONLY a single digit:\n"
    "0 = Assistant A is better\n"
    "1 = Assistant B is better\n"
    "2 = They are equally good\n\n"
    "Verdict (just the digit):"
)
"""The ``criteria-10`` prompt: the ten :data:`CRITERIA`, the conversation, then a one-digit verdict."""

CRITERIA_10_TURN = "[User]\n{prompt}\n\n[Assistant A]\n{response_a}\n\n[Assistant B]\n{response_b}"

CLASSIFIER_TURN = "<prompt>: {prompt}\n<response_a>: {response_a}\n<response_b>: {response_b}"
"""One turn of the compact ``classifier`` layout (no instruction; read by a classification head)."""

_FIELDS = ("prompt", "response_a", "response_b")
_TEMPLATE_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class PromptStyle:
    """A named way to render a :class:`~prefpred.types.Pair` into model input text.

    Two layouts are supported:

    * **field templates** (``template`` holds ``{prompt}``, ``{response_a}``, ``{response_b}``): a multi-turn
      pair fills each field with its turns joined by a blank line, each turn prefixed ``[Turn i] ``
      (``"[Turn 1] first\\n\\n[Turn 2] second"``); a one-turn pair fills the fields with the text as is;
    * **conversation templates** (``template`` holds ``{conversation}``): every turn is written with
      ``turn_template`` and the turns are joined with ``turn_separator``; with several turns each one is
      preceded by ``turn_header`` (``"### Turn 1\\n"``).

    The filled text becomes the user message of the tokenizer's chat template (with the generation prompt)
    when the tokenizer has one; the result is then ready for ``tokenizer(text, add_special_tokens=False)``
    (the template writes BOS itself where the model needs it). Without a chat template (base models,
    encoders such as MiniLM) the filled text is returned as is, and the consumer adds the tokenizer's own
    special tokens (``add_special_tokens=True``: BOS, or ``[CLS] ... [SEP]``); truncation reserves room for them.

    Attributes:
        name: Registry name (``seed-digits``, ``criteria-10``, ``classifier``).
        version: Bumped whenever the rendered text changes (part of cache keys).
        label_words: Answer strings for ``a``, ``b``, ``tie`` (each must be one token).
        template: The user-message template.
        turn_template: Per-turn template of conversation templates.
        turn_separator: Text between turns of conversation templates.
        turn_header: Header before each turn of a multi-turn conversation (``{i}`` = 1-based turn number).
        description: One line for ``--help`` texts and listings.
    """

    name: str
    version: str
    label_words: tuple[str, str, str]
    template: str
    turn_template: str | None = None
    turn_separator: str = "\n\n"
    turn_header: str = "### Turn {i}\n"
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.label_words) != 3 or len(set(self.label_words)) != 3:
            raise ConfigError(f"prompt style {self.name!r}: need three distinct label words (a, b, tie)")
        if self.uses_conversation:
            if not self.turn_template:
                raise ConfigError(f"prompt style {self.name!r}: a {{conversation}} template needs turn_template")
        elif not all("{" + f + "}" in self.template for f in _FIELDS):
            raise ConfigError(f"prompt style {self.name!r}: the template needs {{conversation}} or all of "
                              "{prompt}, {response_a}, {response_b}")

    # ---------------------------------------------------------------------------------------- rendering
    @property
    def uses_conversation(self) -> bool:
        return "{conversation}" in self.template

    def fill(self, pair: Pair) -> str:
        """The filled user message (no chat template, no truncation)."""
        turns = pair.turns or (Turn("", "", ""),)
        if self.uses_conversation:
            assert self.turn_template is not None  # checked in __post_init__
            multi = len(turns) > 1
            blocks = []
            for i, t in enumerate(turns, 1):
                block = self.turn_template.format(prompt=t.prompt, response_a=t.response_a, response_b=t.response_b)
                blocks.append((self.turn_header.format(i=i) if multi else "") + block)
            return self.template.format(conversation=self.turn_separator.join(blocks))
        values = {}
        for f in _FIELDS:
            texts = [getattr(t, f) for t in turns]
            values[f] = texts[0] if len(texts) == 1 else "\n\n".join(
                f"[Turn {i}] {x}" for i, x in enumerate(texts, 1))
        return self.template.format(**values)

    def wrap(self, content: str, tokenizer: Any = None, *, add_generation_prompt: bool = True) -> str:
        """Put a filled user message through the tokenizer's chat template (plain text when it has none)."""
        if has_chat_template(tokenizer):
            # enable_thinking=False: templates with a reasoning mode (Qwen3) answer directly; others ignore it
            text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                 add_generation_prompt=add_generation_prompt,
                                                 enable_thinking=False)
            if not isinstance(text, str):  # pragma: no cover - defensive: some versions return a list
                text = text[0]
            return text
        return content

    def render(self, pair: Pair, tokenizer: Any = None, max_tokens: int | None = None, *,
               add_generation_prompt: bool = True) -> str:
        """Full model input text for ``pair``.

        With ``max_tokens`` and a tokenizer the whole text is at most ``max_tokens`` tokens: the pair is cut
        with :func:`truncate_pair` (last turns kept; prompt, response A and response B each keep a proportional
        share with a floor) until it fits. A pair is never dropped; :class:`~prefpred.types.ConfigError` when
        ``max_tokens`` cannot even hold the template.
        """
        text = self.wrap(self.fill(pair), tokenizer, add_generation_prompt=add_generation_prompt)
        if max_tokens is None or tokenizer is None:
            return text
        limit = max_tokens
        # plain text: the consumer adds the tokenizer's special tokens (BOS, [CLS]/[SEP]); keep room for them
        max_tokens = max_tokens - (0 if has_chat_template(tokenizer) else n_special_tokens(tokenizer))
        counted = len(text) <= 6 * max_tokens  # probably fits (~4 characters per token): check that first
        if counted and count_tokens(tokenizer, text) <= max_tokens:
            return text
        overhead = self.template_tokens(tokenizer, add_generation_prompt=add_generation_prompt)
        enc = _encode_parts(pair, tokenizer)  # the (possibly long) pair text is tokenized once
        content = sum(enc.lengths)
        if not counted and content + overhead <= max_tokens and count_tokens(tokenizer, text) <= max_tokens:
            return text
        # the content budget starts at what the empty template leaves; turn markers and BPE merges at the
        # seams can overshoot, so shrink it by the excess until the whole text fits
        budget = min(max_tokens - overhead, content)
        for _ in range(50):
            if budget < 3:
                break
            cut = _truncate_encoded(pair, tokenizer, enc, budget, 32)
            text = self.wrap(self.fill(cut), tokenizer, add_generation_prompt=add_generation_prompt)
            n = count_tokens(tokenizer, text)
            if n <= max_tokens:
                return text
            budget = min(budget, content_tokens(cut, tokenizer)) - max(1, n - max_tokens)
        raise ConfigError(
            f"max length {limit} is too small for prompt style {self.name!r}: the template alone takes "
            f"{overhead} tokens (use a larger --max-length)"
        )

    def template_tokens(self, tokenizer: Any, *, add_generation_prompt: bool = True) -> int:
        """Tokens of the rendering of an empty one-turn pair: the fixed cost of the style (cached)."""
        key = (self.name, self.version, self.template, add_generation_prompt)
        try:
            cache = _TEMPLATE_TOKENS.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable
            cache = {}
        if key not in cache:
            empty = Pair(id="empty", turns=(Turn("", "", ""),))
            cache[key] = count_tokens(tokenizer, self.wrap(self.fill(empty), tokenizer,
                                                           add_generation_prompt=add_generation_prompt))
        return cache[key]

    def shared_prefix(self, tokenizer: Any = None) -> str:
        """The leading text of :meth:`render` that is identical for every pair.

        It covers the chat-template header and the instructions before the first pair text, cut back to the
        last line break so that, for byte-level BPE tokenizers, tokenizing the prefix and the remainder
        separately gives the same tokens as tokenizing the whole text.
        """
        probes = (
            Pair(id="probe-1", turns=(Turn("\x01", "\x02", "\x03"),)),
            Pair(id="probe-2", turns=(Turn("\x04", "\x05", "\x06"), Turn("\x07", "\x08", "\x0e"))),
        )
        a, b = (self.render(p, tokenizer) for p in probes)
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        common = a[:n]
        return common[:common.rfind("\n") + 1]

    def label_token_ids(self, tokenizer: Any) -> list[int]:
        """The next-token id of each label word (``a``, ``b``, ``tie`` order).

        After a chat template's generation prompt the word itself is used; in plain rendering (no chat
        template) a leading-space variant (``" 0"``) is preferred when it is a single token, since that is
        what a base model emits after ``...:``. :class:`~prefpred.types.ConfigError` if a word is not one token.
        """
        plain = not has_chat_template(tokenizer)
        ids = []
        for word in self.label_words:
            candidates = [" " + word, word] if plain and not self.template.endswith((" ", "\n")) else [word]
            found = None
            for cand in candidates:
                enc = tokenizer(cand, add_special_tokens=False)["input_ids"]
                if len(enc) == 1:
                    found = int(enc[0])
                    break
            if found is None:
                vocab_id = tokenizer.convert_tokens_to_ids(word)
                if isinstance(vocab_id, int) and vocab_id != tokenizer.unk_token_id and vocab_id >= 0:
                    found = vocab_id
            if found is None:
                enc = tokenizer(word, add_special_tokens=False)["input_ids"]
                raise ConfigError(
                    f"prompt style {self.name!r}: label word {word!r} is not a single token for this tokenizer "
                    f"({len(enc)} tokens: {enc}); choose another style"
                )
            ids.append(found)
        if len(set(ids)) != 3:
            raise ConfigError(f"prompt style {self.name!r}: label words {self.label_words} share a token id {ids}")
        return ids

    def parse_answer(self, text: str) -> int | None:
        """Index (0=a, 1=b, 2=tie) of the label word a generated ``text`` answers with, or ``None``.

        An answer that starts with a label word (after whitespace) is that label (``"1"``, ``"1<junk>"``);
        otherwise the first label word standing alone (not inside a number or word) counts
        (``"Answer: 2."``); ``"The answer is 10"`` does not parse.
        """
        words = sorted(self.label_words, key=len, reverse=True)
        stripped = text.lstrip()
        for w in words:
            if stripped.startswith(w):
                return self.label_words.index(w)
        pattern = r"(?<![0-9A-Za-z])(" + "|".join(re.escape(w) for w in words) + r")(?![0-9A-Za-z])"
        m = re.search(pattern, text)
        return None if m is None else self.label_words.index(m.group(1))


# ------------------------------------------------------------------------------------------- registry
_STYLES: dict[str, PromptStyle] = {}


def register_style(style: PromptStyle) -> None:
    """Add (or replace) a style in the registry under ``style.name``."""
    _STYLES[style.name] = style


def get_style(name: str | PromptStyle) -> PromptStyle:
    """The registered style called ``name`` (a :class:`PromptStyle` is returned as is)."""
    if isinstance(name, PromptStyle):
        return name
    try:
        return _STYLES[name]
    except KeyError:
        raise ConfigError(f"unknown prompt style {name!r} (known: {', '.join(list_styles())})") from None


def list_styles() -> list[str]:
    """Names of the registered styles, sorted."""
    return sorted(_STYLES)


register_style(PromptStyle(
    name="seed-digits", version="1", label_words=DIGIT_LABEL_WORDS, template=SEED_DIGITS_TEMPLATE,
    description="the study's prompt, verbatim: answer 0 = A better, 1 = B better, 2 = equally good",
))
register_style(PromptStyle(
    name="criteria-10", version="1", label_words=DIGIT_LABEL_WORDS, template=CRITERIA_10_TEMPLATE,
    turn_template=CRITERIA_10_TURN, turn_separator="\n\n", turn_header="### Turn {i}\n",
    description="judge A and B on ten named criteria, then a one-digit verdict (0 = A, 1 = B, 2 = tie)",
))
register_style(PromptStyle(
    name="classifier", version="1", label_words=DIGIT_LABEL_WORDS, template="{conversation}",
    turn_template=CLASSIFIER_TURN, turn_separator="\n\n", turn_header="",
    description="compact multi-turn layout with no instruction, for classification heads",
))
