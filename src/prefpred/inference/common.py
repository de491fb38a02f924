"""Leaf helpers shared by the inference back-ends and the dispatcher (imports nothing else of prefpred's
inference package, so every back-end can use it without a cycle)."""

from __future__ import annotations

import numpy as np

from prefpred.types import swap_proba


def combine_swapped(direct: np.ndarray, swapped: np.ndarray | None) -> np.ndarray:
    """Average the (A,B) probabilities with the (B,A) ones after exchanging their A/B columns."""
    if swapped is None:
        return direct
    out = (direct + swap_proba(swapped)) / 2.0
    return out / out.sum(axis=1, keepdims=True)


def resolve_num_processes(n: int | str) -> int:
    """``"auto"`` -> one per visible CUDA GPU (1 without GPUs); integers unchanged."""
    if n == "auto":
        import torch

        return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    return int(n)
