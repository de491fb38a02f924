"""Tiny offline test assets: planted-signal pairs, a tokenizer trained on the spot, tiny random models.

Nothing here downloads anything. Tests, benchmarks and users' own smoke tests build everything locally:

* :func:`planted_pairs` writes pairs whose label follows a learnable rule (longer, better-structured answers
  win; near-equal answers tie), so a model that learns anything beats the class prior;
* :func:`tiny_tokenizer` trains a small byte-level BPE tokenizer (Qwen2 style, with a chat template);
* :func:`tiny_causal_lm` / :func:`tiny_sequence_classifier` build 2-layer random Qwen2 or Llama models.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from prefpred.types import Pair, Turn, one_hot

_WORDS = (
    "the model answer explains data python code list table result value system user question because "
    "first second third example step reason method simple clear detail summary note point answer"
).split()

_TOPICS = (
    "sorting a list", "the capital of France", "a haiku about rain", "quantum computing", "a cover letter",
    "recursion in python", "the water cycle", "a birthday message", "prime numbers", "photosynthesis",
    "binary search", "the French revolution", "a chocolate cake recipe", "TCP handshakes", "black holes",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML template like Qwen2's, for the tiny tokenizer."""


def _response(rng: random.Random, quality: int) -> str:
    """A fake answer whose length and markdown grow with ``quality`` (0..3)."""
    n_sent = 1 + quality * 2 + rng.randint(0, 1)
    sentences = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 10))).capitalize() + "."
                 for _ in range(n_sent)]
    if quality >= 2:
        head = "## " + rng.choice(_WORDS).capitalize()
        bullets = "\n".join(f"- **{rng.choice(_WORDS)}** {s}" for s in sentences[:3])
        return "\n".join([head, bullets, *sentences[3:]])
    if quality == 0 and rng.random() < 0.5:
        return "I'm sorry, but I can't help with that."
    return " ".join(sentences)


def planted_pairs(n: int = 200, seed: int = 0, *, multi_turn_rate: float = 0.15,
                  source: str = "planted") -> list[Pair]:
    """``n`` labelled pairs with a planted, learnable signal.

    Each response gets a hidden quality 0..3 that sets its length and markdown. The better one wins; equal
    quality is a tie. 10% of labels are flipped at random so the task is not trivially separable.
    """
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        qa, qb = rng.randint(0, 3), rng.randint(0, 3)
        label = "a" if qa > qb else "b" if qb > qa else "tie"
        if rng.random() < 0.10:
            label = rng.choice(["a", "b", "tie"])
        n_turns = 2 if rng.random() < multi_turn_rate else 1
        turns = []
        for t in range(n_turns):
            topic = rng.choice(_TOPICS)
            prompt = f"Question {i}-{t}: tell me about {topic}, {rng.choice(_WORDS)} {rng.choice(_WORDS)}?"
            turns.append(Turn(prompt, _response(rng, qa), _response(rng, qb)))
        pairs.append(Pair(id=str(100000 + i), turns=tuple(turns), label=one_hot(label),
                          model_a=f"model-{qa}", model_b=f"model-{qb}", source=source))
    return pairs


def corpus(pairs: Sequence[Pair] | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Texts to train a tiny tokenizer on (pair texts, prompt-style words, digits)."""
    pairs = pairs if pairs is not None else planted_pairs(60, seed=1)
    texts = [t for p in pairs for turn in p.turns for t in (turn.prompt, turn.response_a, turn.response_b)]
    texts += list(extra)
    texts += ["0 1 2 A B tie Assistant A Assistant B Human query response better equally good verdict",
              "relevance accuracy completeness clarity conciseness helpfulness harmlessness depth formatting"]
    return texts


def tiny_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 512, *, chat_template: bool = True):
    """A Qwen2-style byte-level BPE tokenizer trained on ``texts`` in a second or two (no download)."""
    from transformers import Qwen2Tokenizer

    base = Qwen2Tokenizer()
    tok = base.train_new_from_iterator(list(texts if texts is not None else corpus()), vocab_size=vocab_size)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def _tiny_config(arch: str, tokenizer, hidden: int, layers: int, **extra):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False, **extra,
    )
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"unknown tiny architecture {arch!r} (qwen2, llama)")


def tiny_causal_lm(tokenizer, arch: str = "qwen2", hidden: int = 32, layers: int = 2, seed: int = 0):
    """A randomly initialised causal LM (2 layers, ``hidden`` wide) matching ``tokenizer``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_tiny_config(arch, tokenizer, hidden, layers)).eval()


def tiny_sequence_classifier(tokenizer, arch: str = "qwen2", hidden: int = 32, layers: int = 2,
                             num_labels: int = 3, seed: int = 0):
    """A randomly initialised sequence classifier (3 labels by default) matching ``tokenizer``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cfg = _tiny_config(arch, tokenizer, hidden, layers, num_labels=num_labels)
    return AutoModelForSequenceClassification.from_config(cfg).eval()
