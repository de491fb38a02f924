"""Training examples: pairs (plus their A/B swaps) turned into padded batches with soft targets and weights.

Tokenization and padding are the inference engine's own (:class:`prefpred.inference.batching.Encoder` and
:func:`~prefpred.inference.batching.collate`), so a model is trained on exactly the token ids it is later
scored on:

* ``label-token``: the rendered prompt (ending with the generation prompt) is the whole input, left-padded
  with explicit position ids; the logits at the last position predict the answer token, so the loss sits on
  the answer token only;
* ``classifier``: the rendered pair, right-padded; the head reads the last (decoder) or first (encoder) token.

Every batch carries ``targets`` (``B x 3`` soft labels over a, b, tie) and ``sample_weight`` (``Pair.weight``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prefpred.types import DataError, Pair


class PairDataset:
    """Map-style dataset over labelled pairs; with ``swap_augment`` index ``n + i`` is pair ``i`` swapped."""

    def __init__(self, pairs: Sequence[Pair], swap_augment: bool = False):
        pairs = list(pairs)
        missing = [p.id for p in pairs if p.label is None]
        if missing:
            raise DataError(f"{len(missing)} training/validation pair(s) have no label (e.g. id {missing[0]!r})")
        self.pairs = pairs
        self.swap_augment = swap_augment

    def __len__(self) -> int:
        return len(self.pairs) * (2 if self.swap_augment else 1)

    def __getitem__(self, i: int) -> Pair:
        n = len(self.pairs)
        if i < 0 or i >= len(self):
            raise IndexError(i)
        return self.pairs[i] if i < n else self.pairs[i - n].swapped()


class PairCollator:
    """Collate a list of pairs into model inputs plus ``targets`` and ``sample_weight`` tensors."""

    def __init__(self, tokenizer, style, head: str, max_length: int):
        from prefpred.inference.batching import Encoder

        self.head = head
        self.encoder = Encoder(tokenizer, style, head, max_length)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def __call__(self, pairs: Sequence[Pair]) -> dict:
        import torch

        from prefpred.inference.batching import collate

        ids, _ = self.encoder.encode(list(pairs))
        batch = collate(ids, np.arange(len(ids)), pad_id=self.pad_id, left=self.head == "label-token")
        out = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.position_ids is not None:
            out["position_ids"] = batch.position_ids
        out["targets"] = torch.tensor([list(p.label) for p in pairs], dtype=torch.float32)
        out["sample_weight"] = torch.tensor([float(p.weight) for p in pairs], dtype=torch.float32)
        return out
