"""Fitting a conversation into a tier's context window. Pure, no I/O.

The budget for the prompt is the window less a safety margin (tiktoken's ``cl100k_base``
is not the model's tokenizer: counts differ by a few percent either way), less the
completion budget (the request's ``max_tokens``, or a reserve), less the few tokens a chat
template spends to open the reply. Every message also costs a fixed overhead for its role
markers. The system prompt and the newest turn are always kept; the oldest turns go first,
and a cut only ever lands before a ``user`` turn, so what remains starts the way chat
templates expect (never with an orphaned assistant reply or tool result).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.tokens import count_tokens
from hybrid_common.protocol import ChatMessage, message_text

REPLY_PRIMING_TOKENS = 3
"""Tokens a chat template adds to open the assistant's reply."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    context_window: int
    completion_tokens: int
    safety_margin: float
    """Share of the window left unused for tokenizer differences (0.1 = 10 %)."""
    per_message_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return self.usable_tokens - self.completion_tokens - REPLY_PRIMING_TOKENS

    @property
    def usable_tokens(self) -> int:
        """The window less the safety margin."""
        return math.floor(self.context_window * (1.0 - self.safety_margin))

    def answer_room(self, prompt_tokens: int) -> int:
        """Tokens the usable window leaves for an answer to a prompt of ``prompt_tokens``."""
        return max(0, self.usable_tokens - REPLY_PRIMING_TOKENS - prompt_tokens)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fitted:
    messages: list[ChatMessage]
    dropped: int
    """Turns removed from the front of the conversation."""
    prompt_tokens: int
    """Estimated prompt tokens of ``messages`` (an upper bound when it fit without counting)."""
    fits: bool
    """False when even the system prompt and the newest turn exceed the budget: the
    request is sent anyway and the node decides (it may answer context_length_exceeded,
    which moves a routed request to a tier with a larger window)."""


def message_tokens(message: ChatMessage, *, per_message_tokens: int) -> int:
    """Estimated tokens of one message: its text, tool calls and name, plus the overhead."""
    tokens = per_message_tokens + count_tokens(message_text(message))
    if message.get("tool_calls"):
        tokens += count_tokens(json.dumps(message["tool_calls"], separators=(",", ":")))
    if message.get("name"):
        tokens += 1
    return tokens


def tokens_at_most(message: ChatMessage, *, per_message_tokens: int) -> int:
    """A cheap upper bound of :func:`message_tokens`: a token covers at least one byte."""
    tokens = per_message_tokens + len(message_text(message).encode())
    if message.get("tool_calls"):
        tokens += len(json.dumps(message["tool_calls"], separators=(",", ":")).encode())
    if message.get("name"):
        tokens += 1
    return tokens


def measure(
    messages: Sequence[ChatMessage], budget: Budget, *, cost: Callable[[ChatMessage], int]
) -> tuple[int, bool]:
    """Estimated prompt tokens of ``messages`` (the byte bound when it proves they fit) and
    whether they fit ``budget``; nothing is left out."""
    bound = sum(tokens_at_most(m, per_message_tokens=budget.per_message_tokens) for m in messages)
    if bound <= budget.prompt_tokens:
        return bound, True
    total = sum(cost(m) for m in messages)
    return total, total <= budget.prompt_tokens


def fit(
    system: Sequence[ChatMessage],
    turns: Sequence[ChatMessage],
    budget: Budget,
    *,
    cost: Callable[[ChatMessage], int],
) -> Fitted:
    """Drop the fewest oldest turns so that system + turns fit ``budget``."""
    # Most conversations are far below the window: the byte bound proves it without
    # running the tokenizer over the whole history on every request.
    bound = sum(tokens_at_most(m, per_message_tokens=budget.per_message_tokens) for m in system)
    bound += sum(tokens_at_most(m, per_message_tokens=budget.per_message_tokens) for m in turns)
    if bound <= budget.prompt_tokens:
        return Fitted(messages=[*system, *turns], dropped=0, prompt_tokens=bound, fits=True)
    fixed = sum(cost(m) for m in system)
    costs = [cost(m) for m in turns]
    total = fixed + sum(costs)
    limit = budget.prompt_tokens
    if total <= limit or len(turns) <= 1:
        return Fitted(
            messages=[*system, *turns], dropped=0, prompt_tokens=total, fits=total <= limit
        )
    # suffix[i] = tokens of turns[i:]
    suffix = [0] * (len(turns) + 1)
    for index in range(len(turns) - 1, -1, -1):
        suffix[index] = suffix[index + 1] + costs[index]
    cuts = [i for i in range(1, len(turns)) if turns[i].get("role") == "user"]
    if not cuts:
        # No user turn to start from: cutting would orphan a reply or a tool result.
        return Fitted(messages=[*system, *turns], dropped=0, prompt_tokens=total, fits=False)
    for cut in cuts:
        if fixed + suffix[cut] <= limit:
            return _cut(system, turns, cut, fixed + suffix[cut], fits=True)
    cut = cuts[-1]  # the newest user turn and what follows it: the least that makes sense
    return _cut(system, turns, cut, fixed + suffix[cut], fits=False)


def _cut(
    system: Sequence[ChatMessage],
    turns: Sequence[ChatMessage],
    cut: int,
    tokens: int,
    *,
    fits: bool,
) -> Fitted:
    return Fitted(messages=[*system, *turns[cut:]], dropped=cut, prompt_tokens=tokens, fits=fits)
