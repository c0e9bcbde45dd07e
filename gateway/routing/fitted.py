"""Routing on what will be sent: which fitted view of a conversation :func:`decide` judges.

With a session the gateway owns the context: each tier is sent the conversation fitted
into its own window (:mod:`gateway.sessions.fitting`), so after a few long turns a small
window gets only the newest turns. Routing judges what will be sent, not what is stored:

1. Each tier's view is a suffix of the same conversation (fitting leaves out the oldest
   turns), so the view that left out the most turns is the part of the conversation that
   every tier will be sent. That view (the tightest budget: in practice the edge's; the
   first of ``views`` on a tie, the edge) goes through the rules and the classifier, once.
   ``prompt_tokens_over``, ``messages_over`` and the score all read it.
2. The conversation's whole size stays a signal, not the prompt: the rule condition
   ``history_tokens_over`` reads the tokens of the conversation before fitting (the stored
   turns and the new ones, estimated as the classifier estimates a prompt).
3. When the judged view left turns out, the reason says so:
   ``score 0.08 <= 0.55: ... (judged as fitted for edge: 6 older turns left out)``.
   ``x-gateway-context-dropped`` still says what the answering tier was not sent.

Why not judge each tier's own view? The tier is what the decision picks, and the view it
would judge depends on the tier. Judging the cloud's (larger) view would route a long chat
by its history: "thanks!" after a long document would go to the cloud as ``long-prompt``
although the edge would be sent a few dozen tokens. Judging the common part instead asks
the question that matters: is what the smallest window gets hard enough to need a larger
model? When it is, the larger tier is sent more context, never less.

Without a session (no views) the client owns its context: the messages are all of it.
Pure, no I/O; the views are fitted by the caller, and one classification is all it adds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from gateway.policy.model import Policy
from gateway.routing.classifier import Classifier
from gateway.routing.decide import Decision, RoutingRequest, decide
from gateway.routing.features import estimate_tokens
from hybrid_common.protocol import ChatMessage, Tier, message_text


class FittedView(Protocol):
    """What one tier would be sent of the conversation."""

    @property
    def tier(self) -> Tier: ...

    @property
    def messages(self) -> Sequence[ChatMessage]: ...

    @property
    def dropped(self) -> int:
        """Turns left out, the oldest first."""
        ...


def judged_view(views: Sequence[FittedView]) -> FittedView | None:
    """The view that left out the most turns (the first of them on a tie); None for none."""
    judged: FittedView | None = None
    for view in views:
        if judged is None or view.dropped > judged.dropped:
            judged = view
    return judged


def decide_fitted(
    policy: Policy,
    classifier: Classifier,
    request: RoutingRequest,
    views: Sequence[FittedView] = (),
) -> Decision:
    """:func:`decide` on the part of the conversation every tier will be sent.

    ``request.messages`` is the whole conversation; ``views`` what each tier that has nodes
    would be sent (empty without a session: the messages are judged as they are).
    """
    view = judged_view(views)
    if view is None or view.dropped == 0:
        return decide(policy, classifier, request)
    history = conversation_tokens(request.messages) if _reads_history(policy) else None
    fitted = dataclasses.replace(request, messages=view.messages, history_tokens=history)
    decision = decide(policy, classifier, fitted)
    if decision.reason_kind != "score" and not decision.reason_kind.startswith("rule:"):
        return decision  # a pin or a capability chose the tier, not what was judged
    turns = "turn" if view.dropped == 1 else "turns"
    note = f" (judged as fitted for {view.tier}: {view.dropped} older {turns} left out)"
    return dataclasses.replace(decision, reason=decision.reason + note)


def conversation_tokens(messages: Sequence[ChatMessage]) -> int:
    """Estimated tokens of all message texts, as :attr:`Complexity.prompt_tokens` counts
    a prompt (bounded cost: sampled above ``EXACT_TOKEN_CHARS``)."""
    return estimate_tokens("\n".join(message_text(m) for m in messages))[0]


def _reads_history(policy: Policy) -> bool:
    return any(rule.history_tokens_over is not None for rule in policy.routing.rules)


__all__ = ["FittedView", "conversation_tokens", "decide_fitted", "judged_view"]
