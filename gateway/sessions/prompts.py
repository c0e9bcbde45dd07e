"""What each tier is sent for one request: its messages and its answer budget.

The rules (README "Answer budget", docs/sessions.md "Context fitting"):

- A tier's **reserve** is the request's ``max_tokens`` (else ``max_completion_tokens``)
  when the client sets one, else the tier's ``default_max_tokens``
  (:func:`~gateway.policy.answer_budget.default_max_tokens`).
- **With a session** the gateway owns the context: the conversation is fitted into the
  tier's window less the reserve (:func:`~gateway.sessions.fitting.fit`, oldest turns
  first). **Without one** the client owns it: the messages go as they are, only measured.
- When the client set no budget, the tier's default is sent as ``max_tokens``, so an answer
  stops there instead of running to the end of the window.
- When the prompt (the newest turn, if that is all that is left) leaves less **room** than
  the reserve (room = window * (1 - ``safety_margin``) - prompt - reply priming), the
  response says so: ``x-gateway-warning: answer-budget-below-reserve; room=111;
  reserve=512``. A default ``max_tokens`` is then not sent: the node answers in what is
  left of the window, counted by its own tokenizer (llama.cpp clamps to it, vLLM defaults
  to it), where a ``max_tokens`` above it would make vLLM refuse the request. A client's
  own ``max_tokens`` is always sent as it is.

Everything here is pure computation, cached per request: per-message token counts (so a
fallback to another tier, or a continuation, does not tokenize the history again) and each
tier's preparation of the request's own messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gateway.policy.answer_budget import default_max_tokens
from gateway.policy.model import Policy
from gateway.sessions.fitting import Budget, fit, measure, message_tokens
from gateway.sessions.history import split_system
from gateway.tokens import count_tokens
from hybrid_common.protocol import TIERS, ChatCompletionRequest, ChatMessage, Tier

WARNING_HEADER: Final = "x-gateway-warning"
BELOW_RESERVE: Final = "answer-budget-below-reserve"


@dataclass(frozen=True, slots=True, kw_only=True)
class TierPrompt:
    """One tier's share of a request."""

    tier: Tier
    messages: list[ChatMessage]
    dropped: int
    """Turns left out (the oldest); always 0 without a session."""
    prompt_tokens: int
    """Estimated tokens of ``messages`` (an upper bound when they fit by their byte count)."""
    reserve: int
    """The answer budget: the client's ``max_tokens``, else the tier's default."""
    room: int | None
    """Tokens the window leaves for the answer when that is less than ``reserve``; None
    when the reserve fits."""
    max_tokens: int | None
    """The ``max_tokens`` the gateway sets; None: the body's own (or none) is sent."""

    def warning(self) -> str | None:
        """The ``x-gateway-warning`` value, when the answer has less room than its reserve."""
        if self.room is None:
            return None
        return f"{BELOW_RESERVE}; room={self.room}; reserve={self.reserve}"


class TierPrompts:
    """Prepares one request's body for each tier it may be sent to."""

    def __init__(self, *, policy: Policy, body: ChatCompletionRequest, fit_context: bool) -> None:
        self.policy = policy
        """The request's policy snapshot: windows, defaults, margins."""
        self.body = body
        """The request as the gateway holds it (with a session: the merged conversation)."""
        self.fit_context = fit_context
        """True with a session: the conversation is fitted per tier."""
        self.client_budget = body.get("max_tokens") or body.get("max_completion_tokens")
        self._prepared: dict[Tier, TierPrompt] = {}
        self._costs: dict[int, tuple[ChatMessage, int]] = {}

    def prompt(self, tier: Tier) -> TierPrompt:
        """``tier``'s share of the request's own messages (computed once)."""
        prepared = self._prepared.get(tier)
        if prepared is None:
            prepared = self._prepare(tier, self.body.get("messages", []))
            self._prepared[tier] = prepared
        return prepared

    def views(self) -> list[TierPrompt]:
        """The share of every tier that has nodes, edge first, for routing
        (:mod:`gateway.routing.fitted`); empty without a session, where every tier is sent
        the same messages."""
        if not self.fit_context:
            return []
        return [self.prompt(tier) for tier in TIERS if self.policy.tiers[tier].nodes]

    def body_for(self, tier: Tier, body: ChatCompletionRequest) -> ChatCompletionRequest:
        """``body`` (the request's, or a continuation of it) as ``tier`` is sent it."""
        messages = body.get("messages", [])
        original = self.body.get("messages", [])
        continued = messages is not original  # the original messages, then a partial answer
        prepared = self._prepare(tier, messages) if continued else self.prompt(tier)
        out: ChatCompletionRequest = {**body, "messages": prepared.messages}
        if prepared.max_tokens is not None:
            # A continuation gets what is left of the default budget, as a client's own
            # max_tokens is reduced by continuation_body: the answer as a whole stops there.
            written = _partial_tokens(messages, len(original)) if continued else 0
            out["max_tokens"] = max(1, prepared.max_tokens - written)
        return out

    def response_headers(self, tier: Tier) -> dict[str, str]:
        """Headers for the answer ``tier`` gave: the answer-budget warning, when due."""
        warning = self.prompt(tier).warning()
        return {WARNING_HEADER: warning} if warning is not None else {}

    def _prepare(self, tier: Tier, messages: Sequence[ChatMessage]) -> TierPrompt:
        spec = self.policy.sessions
        reserve = self.client_budget or default_max_tokens(self.policy, tier)
        budget = Budget(
            context_window=self.policy.tiers[tier].context_window,
            completion_tokens=reserve,
            safety_margin=spec.safety_margin,
            per_message_tokens=spec.per_message_tokens,
        )
        if self.fit_context:
            system, turns = split_system(messages)
            fitted = fit(system, turns, budget, cost=self._cost)
            kept, dropped, tokens, fits = (
                fitted.messages,
                fitted.dropped,
                fitted.prompt_tokens,
                fitted.fits,
            )
        else:
            kept, dropped = list(messages), 0
            tokens, fits = measure(messages, budget, cost=self._cost)
        return TierPrompt(
            tier=tier,
            messages=kept,
            dropped=dropped,
            prompt_tokens=tokens,
            reserve=reserve,
            # Fitting within the budget leaves the reserve by construction; only a prompt
            # that does not fit (whose tokens were then counted exactly) leaves less.
            room=None if fits else budget.answer_room(tokens),
            max_tokens=reserve if fits and self.client_budget is None else None,
        )

    def _cost(self, message: ChatMessage) -> int:
        # Keyed by identity: the same message objects are fitted for every tier.
        cached = self._costs.get(id(message))
        if cached is not None and cached[0] is message:
            return cached[1]
        tokens = message_tokens(message, per_message_tokens=self.policy.sessions.per_message_tokens)
        self._costs[id(message)] = (message, tokens)
        return tokens


def _partial_tokens(messages: Sequence[ChatMessage], start: int) -> int:
    """Tokens of the partial answer a continuation carries after the original messages
    (tiktoken's count, like every estimate here; 0 when there is none)."""
    if len(messages) <= start:
        return 0
    content = messages[start].get("content")
    return count_tokens(content) if isinstance(content, str) else 0


__all__ = ["BELOW_RESERVE", "WARNING_HEADER", "TierPrompt", "TierPrompts"]
