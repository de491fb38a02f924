"""Distillation: teacher soft labels from the local server carry the planted signal and train a better-than-prior
CPU model; ``--extra-data``-style loading weights them and leaves failed pairs out."""

from __future__ import annotations

import numpy as np
import pytest

from openai_server import FakeOpenAIServer
from prefpred.config import DataConfig
from prefpred.data import load_extra, load_pairs
from prefpred.metrics import log_loss, prior_proba
from prefpred.synth.client import ClientConfig
from prefpred.synth.label import label_pairs
from prefpred.testing import planted_pairs
from prefpred.types import hard_labels, label_matrix


@pytest.fixture(scope="module")
def teacher_labels(tmp_path_factory):
    """200 planted pairs labelled by the fake teacher (one pair's answers always malformed)."""
    pairs = planted_pairs(200, seed=31)
    out = tmp_path_factory.mktemp("distill") / "labels.jsonl"
    broken = next(p for p in pairs if p.text_a() != p.text_b())
    with FakeOpenAIServer(malformed_if=broken.turns[0].prompt) as srv:
        cfg = ClientConfig(base_url=srv.url, concurrency=8, timeout=10.0, backoff_base=0.01, format_retries=1)
        report = label_pairs(pairs, cfg, teacher="teacher-1", out=out, api_key="EMPTY", progress=False)
    return pairs, out, report, broken


def test_teacher_labels_follow_the_planted_signal(teacher_labels):
    pairs, out, report, broken = teacher_labels
    assert report.labelled == 199 and report.failed == 1
    loaded = load_pairs(out)
    assert len(loaded) == 200 and [p.id for p in loaded if p.label is None] == [broken.id]
    soft = [p for p in loaded if p.label is not None]
    assert sum(1 for p in soft if not p.is_hard) > len(soft) // 4  # genuinely soft labels
    truth = {p.id: p for p in pairs}
    teacher = hard_labels(soft)
    human = hard_labels([truth[p.id] for p in soft])
    majority = np.bincount(human, minlength=3).max() / len(human)
    assert (teacher == human).mean() > majority + 0.15


def test_extra_data_is_weighted_and_skips_failed_pairs(teacher_labels):
    _, out, _, broken = teacher_labels
    extra = load_extra(DataConfig(extra_path=str(out), extra_weight=0.3))
    assert len(extra) == 199 and broken.id not in {p.id for p in extra}
    assert all(p.weight == pytest.approx(0.3) and p.source == "teacher:teacher-1" for p in extra)


def test_soft_label_training_beats_the_prior(teacher_labels):
    from prefpred.models import cpu
    _, out, _, _ = teacher_labels
    train = [p for p in load_pairs(out) if p.label is not None]
    held_out = planted_pairs(150, seed=32)
    small = cpu.CPUModelConfig(n_estimators=150, learning_rate=0.05, min_child_samples=20, n_jobs=1)
    model = cpu.CPUPreferenceModel(config=small, seed=0).fit(train)
    proba = model.predict_proba(held_out)
    y = label_matrix(held_out)
    baseline = log_loss(y, prior_proba(label_matrix(train), len(held_out)))
    assert log_loss(y, proba) < baseline
