"""Table tests of routing on what will be sent: which view is judged, history as a signal."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.policy.parse import parse_policy
from gateway.routing.classifier import HeuristicClassifier
from gateway.routing.decide import RoutingRequest, decide
from gateway.routing.features import estimate_tokens
from gateway.routing.fitted import conversation_tokens, decide_fitted, judged_view
from hybrid_common.protocol import ChatMessage, Tier

POLICY = parse_policy("""
version: 1
tiers:
  edge:
    nodes: [{url: "http://e:1", model: small, name: e1}]
  cloud:
    nodes: [{url: "http://c:1", model: big, name: c1}]
routing:
  cloud_above: 0.3
  classifier: {kind: heuristic}
  rules:
    - {when: {prompt_tokens_over: 50}, tier: cloud, reason: long-prompt}
    - {when: {history_tokens_over: 400, header: {x-app-plan: pro}}, tier: cloud, reason: pro}
    - {when: {messages_over: 6}, tier: cloud, reason: deep-chat}
""")


@dataclass(frozen=True, slots=True)
class View:
    tier: Tier
    messages: list[ChatMessage]
    dropped: int


def user(text: str) -> ChatMessage:
    return {"role": "user", "content": text}


def reply(text: str) -> ChatMessage:
    return {"role": "assistant", "content": text}


LONG = "word " * 120  # 120 tokens: over long-prompt (50)
HISTORY = [user(LONG), reply(LONG), user(LONG), reply(LONG)]  # 480 tokens: over pro (400)
THANKS = user("thanks!")
WHOLE = [*HISTORY, THANKS]
EDGE_VIEW = View("edge", [THANKS], 4)
CLOUD_VIEW = View("cloud", WHOLE, 0)


def route(views, messages=WHOLE, headers=None, model="auto"):
    request = RoutingRequest(messages=messages, headers=headers or {}, model=model)
    return decide_fitted(POLICY, HeuristicClassifier(), request, views)


@pytest.mark.parametrize(
    ("views", "messages", "headers", "tier", "reason_kind", "note"),
    [
        # No session: the messages are the prompt (the whole history counts).
        ((), WHOLE, {}, "cloud", "rule:long-prompt", None),
        # Nothing left out anywhere: the same as decide() on the messages.
        ((View("edge", WHOLE, 0), CLOUD_VIEW), WHOLE, {}, "cloud", "rule:long-prompt", None),
        # The edge is sent only "thanks!": that is what is judged.
        ((EDGE_VIEW, CLOUD_VIEW), WHOLE, {}, "edge", "score", "edge: 4 older turns"),
        # A newest turn that is long by itself is long as fitted, too.
        ((View("edge", [user(LONG)], 4), CLOUD_VIEW), WHOLE, {}, "cloud", "rule:long-prompt",
         "edge: 4 older turns"),
        # The view that left out the most is judged, whichever tier's it is.
        ((View("edge", WHOLE, 0), View("cloud", [THANKS], 4)), WHOLE, {}, "edge", "score",
         "cloud: 4 older turns"),
        # On a tie the first view (the edge's) is judged.
        ((View("edge", [THANKS], 2), View("cloud", [user(LONG)], 2)), WHOLE, {}, "edge",
         "score", "edge: 2 older turns"),
        # The whole conversation's size is a signal: history_tokens_over reads it.
        ((EDGE_VIEW, CLOUD_VIEW), WHOLE, {"x-app-plan": "pro"}, "cloud", "rule:pro",
         "edge: 4 older turns"),
        # messages_over counts what will be sent.
        ((), [THANKS] * 7, {}, "cloud", "rule:deep-chat", None),
        ((View("edge", [THANKS] * 3, 4), View("cloud", [THANKS] * 7, 0)), [THANKS] * 7, {},
         "edge", "score", "edge: 4 older turns"),
        # A pin is not a judgement of the view: no note.
        ((EDGE_VIEW, CLOUD_VIEW), WHOLE, {"x-gateway-tier": "cloud"}, "cloud", "pinned:header",
         None),
    ],
)  # fmt: skip
def test_decide_fitted_table(views, messages, headers, tier, reason_kind, note) -> None:
    decision = route(views, messages, headers)
    assert (decision.tier, decision.reason_kind) == (tier, reason_kind)
    if note is None:
        assert "judged as fitted" not in decision.reason
    else:
        assert decision.reason.endswith(f" (judged as fitted for {note} left out)")


def test_the_judged_view_is_classified_not_the_history() -> None:
    decision = route((EDGE_VIEW, CLOUD_VIEW))
    assert decision.complexity.prompt_tokens == 2  # "thanks!"
    assert decision.reason.startswith("score 0.")
    assert decision.reason.endswith(" (judged as fitted for edge: 4 older turns left out)")
    one = route((View("edge", [THANKS], 1), CLOUD_VIEW))
    assert one.reason.endswith("(judged as fitted for edge: 1 older turn left out)")


def test_without_drops_it_is_decide() -> None:
    request = RoutingRequest(messages=WHOLE, headers={"x-app-plan": "pro"})
    views = (View("edge", WHOLE, 0), View("cloud", WHOLE, 0))
    assert decide_fitted(POLICY, HeuristicClassifier(), request, views) == decide(
        POLICY, HeuristicClassifier(), request
    )


@pytest.mark.parametrize(
    ("history_tokens", "messages", "tier"),
    [
        (None, [user("hi")], "edge"),  # None: the messages are the whole conversation
        (None, [user("word " * 30)] * 15, "cloud"),  # 450 tokens, all of them sent
        (450, [user("hi")], "cloud"),
        (400, [user("hi")], "edge"),  # "over" is strict
    ],
)
def test_history_tokens_over(history_tokens, messages, tier) -> None:
    policy = parse_policy("""
version: 1
tiers: {edge: {nodes: []}, cloud: {nodes: []}}
routing:
  classifier: {kind: heuristic}
  rules: [{when: {history_tokens_over: 400}, tier: cloud, reason: long-chat}]
""")
    request = RoutingRequest(messages=messages, history_tokens=history_tokens)
    assert decide(policy, HeuristicClassifier(), request).tier == tier


def test_judged_view() -> None:
    assert judged_view([]) is None
    a, b, c = View("edge", [], 1), View("cloud", [], 3), View("edge", [], 3)
    assert judged_view([a, b, c]) is b


def test_conversation_tokens_estimates_the_joined_texts() -> None:
    assert conversation_tokens(WHOLE) == estimate_tokens("\n".join([LONG] * 4 + ["thanks!"]))[0]
    assert conversation_tokens([]) == 0
