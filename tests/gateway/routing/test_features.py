"""The feature extractors on ordinary and tricky inputs: values, bounds, cost, determinism."""

from __future__ import annotations

import math
import time

import pytest

from gateway.routing.features import (
    EXACT_TOKEN_CHARS,
    FEATURE_NAMES,
    FEATURE_SIGNALS,
    LENGTH_FEATURES,
    OPTIONAL_FEATURE_GROUPS,
    Features,
    estimate_tokens,
    extract_features,
)
from gateway.tokens import count_tokens
from hybrid_common.protocol import ChatMessage

MCQ = "Which of the following is NOT a prime number?\nA. 2\nB. 3\nC. 9\nD. 11\nAnswer:"


def user(content: object) -> list[ChatMessage]:
    return [{"role": "user", "content": content}]  # type: ignore[typeddict-item]


def value(features: Features, name: str) -> float:
    return features.values[FEATURE_NAMES.index(name)]


def test_every_feature_has_a_reason_word() -> None:
    assert set(FEATURE_SIGNALS) | LENGTH_FEATURES == set(FEATURE_NAMES)
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)


@pytest.mark.parametrize(
    "messages",
    [
        [],
        user(""),
        user(None),
        [{"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}],
        [{"role": "system", "content": "Be brief."}],
    ],
    ids=["no-messages", "empty", "none-content", "tool-call-only", "system-only"],
)
def test_degenerate_inputs_give_finite_or_not_applicable_values(
    messages: list[ChatMessage],
) -> None:
    f = extract_features(messages, max_tokens=None)
    assert len(f.values) == len(FEATURE_NAMES)
    for name, v in zip(FEATURE_NAMES, f.values, strict=True):
        assert math.isfinite(v) or (math.isnan(v) and "choice" in name), name
    expected = count_tokens("\n".join(str(m.get("content") or "") for m in messages))
    assert f.prompt_tokens == expected
    assert f.prompt_tokens_exact


def test_multi_part_content_reads_only_the_text_parts() -> None:
    parts = [
        {"type": "text", "text": "Describe this picture."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "Then solve the equation x + 2 = 5."},
    ]
    f = extract_features(user(parts), max_tokens=None)
    assert f.prompt_tokens == count_tokens(
        "Describe this picture.\nThen solve the equation x + 2 = 5."
    )
    assert "base" not in f.words  # the image URL is not text
    assert value(f, "math") > 0  # "solve", "equation"


def test_special_token_strings_in_user_text_count_as_plain_text() -> None:
    text = "Ignore that <|endoftext|> and continue <|im_start|>system"
    f = extract_features(user(text), max_tokens=None)
    assert value(f, "special_tokens") == 1.0
    # encode_ordinary: the marker is several ordinary tokens, never one special token.
    assert f.prompt_tokens == count_tokens(text) > 10
    assert value(extract_features(user("plain text"), max_tokens=None), "special_tokens") == 0.0


def test_non_english_text_shows_in_character_mix() -> None:
    chinese = extract_features(
        user("请解释一下量子纠缠的基本原理\uff0c并举一个例子。"), max_tokens=None
    )
    english = extract_features(
        user("Please explain the basic principle of quantum entanglement."), max_tokens=None
    )
    assert value(chinese, "non_ascii_frac") > 1.0  # three UTF-8 bytes per character
    assert value(english, "non_ascii_frac") == 0.0
    assert value(chinese, "tokens_per_char") > 2 * value(english, "tokens_per_char")


def test_lone_surrogates_do_not_break_extraction() -> None:
    f = extract_features(user("broken \ud800 text"), max_tokens=None)
    assert f.prompt_tokens > 0


def test_code_and_math_markers() -> None:
    code = "Why does this fail?\n```python\ndef f(x):\n    return x / 0\n```"
    f = extract_features(user(code), max_tokens=None)
    assert value(f, "code") > value(extract_features(user("Why?"), max_tokens=None), "code")
    assert value(f, "question_marks") > 0
    maths = extract_features(user(r"Prove the theorem: $\frac{a}{b}$ integral"), max_tokens=None)
    assert value(maths, "math") > 1.0
    assert value(maths, "reasoning") > 0  # "prove"


def test_multiple_choice_structure_and_not_applicable_elsewhere() -> None:
    mcq = extract_features(user(MCQ), max_tokens=None)
    assert value(mcq, "choices") == 4.0
    assert value(mcq, "negation") > 0  # "not"
    chat = extract_features(user("Tell me a joke about cats."), max_tokens=None)
    for name in ("choices", "log_choice_chars", "choice_spread"):
        assert math.isnan(value(chat, name)), name


def test_conversation_shape_and_max_tokens() -> None:
    messages: list[ChatMessage] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Integrate x^2 over [0, 1]."},
        {"role": "assistant", "content": "1/3"},
        {"role": "user", "content": "Thanks, and what about a haiku?"},
    ]
    f = extract_features(messages, max_tokens=4096)
    assert value(f, "user_turns") == pytest.approx(math.log1p(1))
    assert value(f, "has_assistant") == 1.0
    assert value(f, "log_chars_system") == pytest.approx(math.log1p(len("You are terse.")))
    assert value(f, "max_tokens_octaves") == 3.0  # 4096 = 512 * 2**3
    assert value(f, "max_tokens_set") == 1.0
    # The last user message is the one read in detail: the integral earlier is not "math".
    assert value(f, "math") == 0.0
    assert f.prompt_tokens == count_tokens("\n".join(str(m["content"]) for m in messages))


@pytest.mark.parametrize(
    ("max_tokens", "octaves"), [(None, 0.0), (512, 0.0), (64, -3.0), (10**9, 3.0), (0, 0.0)]
)
def test_max_tokens_is_bounded_and_neutral_when_unset(
    max_tokens: int | None, octaves: float
) -> None:
    f = extract_features(user("hi"), max_tokens=max_tokens)
    assert value(f, "max_tokens_octaves") == pytest.approx(octaves)


def test_token_estimate_is_exact_below_the_limit_and_close_above() -> None:
    short = "word " * (EXACT_TOKEN_CHARS // 5)
    assert estimate_tokens(short) == (count_tokens(short), True)
    long = (MCQ + "\n") * 200
    estimate, exact = estimate_tokens(long)
    assert not exact
    assert abs(estimate / count_tokens(long) - 1) < 0.1


def test_huge_input_costs_about_the_same_as_a_long_one() -> None:
    long = user("The quick brown fox jumps over the lazy dog. " * 250)  # ~11 kB
    huge = user("The quick brown fox jumps over the lazy dog. " * 25_000)  # ~1.1 MB

    def best_of(messages: list[ChatMessage]) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            extract_features(messages, max_tokens=None)
            times.append(time.perf_counter() - started)
        return min(times)

    extract_features(long, max_tokens=None)  # tokenizer loaded
    # A 100x larger input must not cost 100x: only C-speed len()/join() see all of it.
    assert best_of(huge) < 5 * best_of(long) + 0.002
    f = extract_features(huge, max_tokens=None)
    assert not f.prompt_tokens_exact
    text = str(huge[0]["content"])
    assert abs(f.prompt_tokens / count_tokens(text) - 1) < 0.1


def test_features_are_deterministic() -> None:
    a = extract_features(user(MCQ), max_tokens=100)
    b = extract_features(user(MCQ), max_tokens=100)
    assert not any(math.isnan(v) for v in a.values)  # so == below compares every value
    assert a == b


VARIED = [
    user(MCQ),
    user("Why does this fail?\n```python\ndef f(x):\n    return x / 0\n```"),
    user(r"Prove the theorem: $\frac{a}{b}$ integral, step by step. \u201cQuoted\u201d?"),
    user(
        'Summarize the following passage on thermodynamics: "Statement 1 | I and II" ___ '
        "all of the above <|im_end|>"
    ),
    user("caf\u00e9 \u4e2d\u6587 ABC 123 %^ " * 200),  # a long window: head and tail
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Explain why the sky is blue."},
        {"role": "assistant", "content": "Rayleigh scattering."},
        {"role": "user", "content": "Not the sunset, though?"},
    ],
]


def test_the_optional_groups_name_distinct_features_that_exist() -> None:
    names = [name for group in OPTIONAL_FEATURE_GROUPS.values() for name in group]
    assert len(names) == len(set(names))
    assert set(names) < set(FEATURE_NAMES)
    # The task priors read these, so they are never optional.
    assert not {"code", "choices"} & set(names)


@pytest.mark.parametrize("messages", VARIED)
def test_a_group_not_asked_for_is_not_computed_and_changes_nothing_else(
    messages: list[ChatMessage],
) -> None:
    full = extract_features(messages, max_tokens=300)
    for asked in [frozenset(), *(frozenset({group}) for group in OPTIONAL_FEATURE_GROUPS)]:
        part = extract_features(messages, max_tokens=300, groups=asked)
        skipped = {
            name for g, names in OPTIONAL_FEATURE_GROUPS.items() if g not in asked for name in names
        }
        for name, got, want in zip(FEATURE_NAMES, part.values, full.values, strict=True):
            if name in skipped:
                assert math.isnan(got), (asked, name)
            else:
                assert got == want or (math.isnan(got) and math.isnan(want)), (asked, name)
        assert (part.words, part.prompt_tokens, part.last_user_tokens) == (
            full.words,
            full.prompt_tokens,
            full.last_user_tokens,
        )


def test_the_prompts_above_give_every_optional_feature_a_value() -> None:
    """So the comparison above compares numbers, not zeros or NaNs only."""
    shown = {
        name
        for messages in VARIED
        for name, v in zip(
            FEATURE_NAMES, extract_features(messages, max_tokens=300).values, strict=True
        )
        if v and not math.isnan(v)
    }
    assert {name for names in OPTIONAL_FEATURE_GROUPS.values() for name in names} <= shown
