"""Prompt styles: how a pair is rendered into text for an LLM judge or a classification head.

(Constants shared with other modules live at the top; the style registry follows.)
"""

from __future__ import annotations

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

Your answer (just the number, no explanation):"""
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
