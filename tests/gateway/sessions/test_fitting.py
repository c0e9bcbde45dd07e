"""Context fitting: budgets, what is kept, where cuts land (pure, real tokenizer)."""

from __future__ import annotations

import pytest

from gateway.sessions.fitting import Budget, fit, measure, message_tokens, tokens_at_most
from gateway.tokens import count_tokens

SYSTEM = [{"role": "system", "content": "You are terse."}]


def cost(message) -> int:
    return message_tokens(message, per_message_tokens=4)


def conversation(pairs: int, words: int = 30) -> list[dict[str, str]]:
    turns: list[dict[str, str]] = []
    for i in range(pairs):
        turns.append({"role": "user", "content": f"question {i} " + "word " * words})
        turns.append({"role": "assistant", "content": f"answer {i} " + "word " * words})
    turns.append({"role": "user", "content": "the newest question"})
    return turns


def budget(window: int, completion: int = 64, margin: float = 0.1) -> Budget:
    return Budget(
        context_window=window, completion_tokens=completion, safety_margin=margin,
        per_message_tokens=4,
    )  # fmt: skip


def test_budget_arithmetic() -> None:
    # floor(1000 * 0.9) - 100 - 3 reply-priming tokens
    assert budget(1000, completion=100).prompt_tokens == 797


def test_a_conversation_that_fits_is_untouched() -> None:
    turns = conversation(2)
    fitted = fit(SYSTEM, turns, budget(8192), cost=cost)
    assert fitted.dropped == 0 and fitted.fits
    assert fitted.messages == [*SYSTEM, *turns]


def test_oldest_turns_go_first_system_and_newest_stay() -> None:
    turns = conversation(10)
    b = budget(512)
    fitted = fit(SYSTEM, turns, b, cost=cost)
    assert fitted.fits and fitted.dropped > 0
    assert fitted.messages[0] == SYSTEM[0]
    assert fitted.messages[-1] == turns[-1]
    assert fitted.messages[1:] == turns[fitted.dropped :]
    assert fitted.messages[1]["role"] == "user"  # a cut never orphans an answer
    assert fitted.prompt_tokens <= b.prompt_tokens
    assert fitted.prompt_tokens == sum(cost(m) for m in fitted.messages)
    # Fewest drops: keeping one more pair would not have fitted.
    assert sum(cost(m) for m in [*SYSTEM, *turns[fitted.dropped - 2 :]]) > b.prompt_tokens


def test_the_estimate_covers_the_text_with_margin() -> None:
    turns = conversation(10)
    b = budget(512)
    fitted = fit(SYSTEM, turns, b, cost=cost)
    text_tokens = sum(count_tokens(str(m["content"])) for m in fitted.messages)
    assert text_tokens + 4 * len(fitted.messages) == fitted.prompt_tokens
    assert fitted.prompt_tokens + b.completion_tokens < 512 * 0.9


def test_bigger_completion_budget_drops_more() -> None:
    turns = conversation(10)
    small = fit(SYSTEM, turns, budget(1024, completion=64), cost=cost)
    large = fit(SYSTEM, turns, budget(1024, completion=512), cost=cost)
    assert large.dropped > small.dropped


def test_when_nothing_fits_the_newest_user_turn_is_sent_anyway() -> None:
    turns = [*conversation(3)[:-1], {"role": "user", "content": "long " * 600}]
    fitted = fit(SYSTEM, turns, budget(256), cost=cost)
    assert not fitted.fits
    assert fitted.messages == [*SYSTEM, turns[-1]]
    assert fitted.dropped == len(turns) - 1


def test_a_cut_keeps_an_assistant_tool_call_with_its_result() -> None:
    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turns = [
        *conversation(6)[:-1],
        {"role": "user", "content": "call the tool"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    fitted = fit(SYSTEM, turns, budget(256), cost=cost)
    assert fitted.dropped > 0 and fitted.fits
    assert fitted.messages[1]["role"] == "user"
    assert fitted.messages[-3:] == turns[-3:]  # the call, its result and what asked for it
    # Squeezed harder, the cut still lands on the user turn, never between call and result.
    tight = fit(SYSTEM, turns, budget(256, completion=150), cost=cost)
    assert tight.messages[1:] == turns[-3:]


def test_a_single_turn_is_never_dropped() -> None:
    turns = [{"role": "user", "content": "long " * 600}]
    fitted = fit([], turns, budget(256), cost=cost)
    assert fitted.messages == turns and fitted.dropped == 0 and not fitted.fits


def test_the_byte_bound_is_never_below_the_token_count() -> None:
    samples = ["plain words", "ünïcödé ✓ 🚀🚀", "x" * 500, "def f(x):\n    return x ** 2\n"]
    for text in samples:
        message = {"role": "user", "content": text}
        assert tokens_at_most(message, per_message_tokens=4) >= cost(message)


def test_a_short_conversation_fits_without_running_the_tokenizer() -> None:
    counted: list[object] = []

    def counting(message) -> int:
        counted.append(message)
        return cost(message)

    fitted = fit(SYSTEM, conversation(2), budget(8192), cost=counting)
    assert fitted.fits and fitted.dropped == 0
    assert counted == []


@pytest.mark.parametrize(
    ("words", "window", "fits", "counted"),
    [
        (10, 8192, True, False),  # the byte bound proves it: no tokenizer
        (500, 512, False, True),  # over the budget: counted exactly, nothing left out
        (300, 1024, True, True),  # over the byte bound, within the budget once counted
    ],
)
def test_measure_counts_only_when_the_bound_does_not_fit(words, window, fits, counted) -> None:
    seen: list[object] = []

    def counting(message) -> int:
        seen.append(message)
        return cost(message)

    messages = [*SYSTEM, {"role": "user", "content": "word " * words}]
    b = budget(window)
    tokens, fit_ = measure(messages, b, cost=counting)
    assert fit_ is fits and bool(seen) is counted
    if counted:
        assert tokens == sum(cost(m) for m in messages)
    else:
        assert tokens == sum(tokens_at_most(m, per_message_tokens=4) for m in messages)


@pytest.mark.parametrize(
    ("window", "margin", "prompt", "room"),
    [
        (1000, 0.1, 800, 97),  # floor(900) - 3 reply-priming tokens - 800
        (1000, 0.0, 800, 197),
        (2048, 0.1, 1843, 0),  # never below zero
        (2048, 0.1, 1700, 140),
    ],
)
def test_answer_room(window, margin, prompt, room) -> None:
    assert budget(window, margin=margin).answer_room(prompt) == room
