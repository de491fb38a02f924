"""Tiny random local models for smoke tests of the fine-tuning pipeline (no download, a few seconds).

A config can name ``tiny:qwen2`` or ``tiny:llama`` as ``model.name_or_path`` (``configs/tiny-cpu.yaml`` does):
the first use writes a 2-layer random model and a tokenizer trained on the spot into a cache folder
(``$PREFPRED_CACHE`` or ``~/.cache/prefpred``) and later uses load it from there. The same folder serves
both heads: the causal LM for ``label-token``, and ``AutoModelForSequenceClassification`` (new ``score``
head) for ``classifier``.

The output layer is scaled up (x20) from the random init: with ``initializer_range=0.02`` and a normalised
final hidden state a random 32-wide model cannot move any logit by more than ~0.6, so a label-token head could
not learn anything; real LMs have logits spanning tens of nats.
"""

from __future__ import annotations

from pathlib import Path

TINY_PREFIX = "tiny:"
ARCHS = ("qwen2", "llama")


def write_tiny_model(directory: str | Path, arch: str = "qwen2", hidden: int = 32, layers: int = 2,
                     seed: int = 0, vocab_size: int = 1024) -> Path:
    """Write a tiny random causal LM + tokenizer (ChatML template) to ``directory``; returns it."""
    import torch

    from prefpred.prompts import CRITERIA_10_TEMPLATE, SEED_DIGITS_TEMPLATE
    from prefpred.testing import corpus, tiny_causal_lm, tiny_tokenizer
    from prefpred.utils import set_seed

    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r} ({', '.join(ARCHS)})")
    set_seed(seed)
    directory = Path(directory)
    tok = tiny_tokenizer(corpus(extra=[SEED_DIGITS_TEMPLATE, CRITERIA_10_TEMPLATE] * 3), vocab_size=vocab_size)
    model = tiny_causal_lm(tok, arch=arch, hidden=hidden, layers=layers, seed=seed)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


def resolve_tiny(name: str) -> str:
    """``tiny:<arch>`` -> a cached tiny model folder (written on first use); other names unchanged."""
    if not name.startswith(TINY_PREFIX):
        return name
    arch = name[len(TINY_PREFIX):] or "qwen2"
    from prefpred.utils import cache_root

    directory = cache_root() / f"tiny-{arch}"
    if not (directory / "config.json").is_file():
        import tempfile

        from prefpred.utils import follow_umask, preserved_rng

        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tiny-{arch}.", dir=directory.parent))
        with preserved_rng():  # the model is seeded on its own: a seeded run draws the same, cached or not
            write_tiny_model(tmp, arch)
        follow_umask(tmp)
        try:
            tmp.rename(directory)
        except OSError:  # another process won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return str(directory)
