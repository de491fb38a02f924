"""Data-parallel scoring: 2 CPU worker processes give the same probabilities, in input order, as 1 process."""

from __future__ import annotations

import numpy as np

from prefpred.inference import InferenceConfig, score_pairs, score_pairs_parallel
from prefpred.inference.parallel import DirLoader
from prefpred.prompts import get_style
from prefpred.testing import planted_pairs, tiny_causal_lm, tiny_tokenizer


def test_two_processes_equal_one_process(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, hidden=32)
    style = get_style("seed-digits")
    pairs = planted_pairs(9, seed=11)  # odd: the shards differ in size
    one = score_pairs(pairs, model, tok, style, config=InferenceConfig(progress=False))

    # an in-memory model with num_processes=2: saved to a temporary folder, one spawned worker per "device"
    stats: dict = {}
    two = score_pairs(pairs, model, tok, style, config=InferenceConfig(num_processes=2, progress=False),
                      stats=stats)
    assert two.shape == (9, 3)
    assert np.abs(two - one).max() < 1e-5
    assert stats["processes"] == 2 and stats["pairs"] == 9 and stats["sequences"] == 18

    # a saved model directory loaded by a picklable loader, style given by name, in process (n=1)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loader = DirLoader(str(tmp_path / "m"), "label-token", "float32")
    same = score_pairs_parallel(pairs[::-1], loader, "seed-digits", num_processes=1,
                                config=InferenceConfig(progress=False))
    assert np.abs(same[::-1] - one).max() < 1e-5
