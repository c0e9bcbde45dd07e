"""Table-driven tests of decide(): pins, rules, score threshold, reasons."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest, ModelNotFound
from gateway.policy.parse import parse_policy
from gateway.routing.classifier import HeuristicClassifier
from gateway.routing.decide import RoutingRequest, decide

POLICY = """
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
    - {when: {header: {x-app-plan: free}}, tier: edge, reason: free-plan}
    - {when: {max_tokens_over: 3000}, tier: cloud, reason: long-answer}
    - {when: {messages_over: 6}, tier: cloud, reason: deep-chat}
"""

SIMPLE = [{"role": "user", "content": "hi there"}]
HARD = [{"role": "user", "content": "Prove the theorem step by step: x^2 = 4"}]
LONG = [{"role": "user", "content": "word " * 120}]


@pytest.mark.parametrize(
    ("messages", "model", "headers", "max_tokens", "tier", "reason_kind", "pinned_model"),
    [
        (SIMPLE, "auto", {}, None, "edge", "score", None),
        (HARD, "auto", {}, None, "cloud", "score", None),
        (LONG, "auto", {}, None, "cloud", "rule:long-prompt", None),
        (HARD, "auto", {"x-app-plan": "free"}, None, "edge", "rule:free-plan", None),
        (SIMPLE, "auto", {}, 4000, "cloud", "rule:long-answer", None),
        (SIMPLE * 7, "auto", {}, None, "cloud", "rule:deep-chat", None),
        (HARD, "edge", {}, None, "edge", "pinned:model", None),
        (SIMPLE, "cloud", {}, None, "cloud", "pinned:model", None),
        (SIMPLE, "big", {}, None, "cloud", "pinned:model", "big"),
        (HARD, "small", {}, None, "edge", "pinned:model", "small"),
        (HARD, "auto", {"x-gateway-tier": "edge"}, None, "edge", "pinned:header", None),
        # The model field wins over the header when both pin.
        (SIMPLE, "cloud", {"x-gateway-tier": "edge"}, None, "cloud", "pinned:model", None),
    ],
)
def test_decide_table(messages, model, headers, max_tokens, tier, reason_kind, pinned_model):
    policy = parse_policy(POLICY)
    decision = decide(
        policy,
        HeuristicClassifier(),
        RoutingRequest(messages=messages, model=model, headers=headers, max_tokens=max_tokens),
    )
    assert (decision.tier, decision.reason_kind, decision.model) == (
        tier,
        reason_kind,
        pinned_model,
    )


def test_score_reason_explains_the_decision() -> None:
    decision = decide(parse_policy(POLICY), HeuristicClassifier(), RoutingRequest(messages=HARD))
    assert decision.reason.startswith(f"score {decision.score:.2f} > 0.30: ")
    assert "math" in decision.reason
    easy = decide(parse_policy(POLICY), HeuristicClassifier(), RoutingRequest(messages=SIMPLE))
    assert easy.reason.startswith(f"score {easy.score:.2f} <= 0.30")


def test_pinning_disabled_routes_by_score_and_says_so() -> None:
    policy = parse_policy(
        POLICY.replace("cloud_above: 0.3", "cloud_above: 0.3\n  allow_pinning: false")
    )
    decision = decide(
        policy,
        HeuristicClassifier(),
        RoutingRequest(messages=HARD, model="edge", headers={"x-gateway-tier": "edge"}),
    )
    assert decision.tier == "cloud"
    assert decision.reason_kind == "score"
    assert "pinning disabled" in decision.reason


def test_unknown_model_is_404_naming_the_param() -> None:
    with pytest.raises(ModelNotFound) as info:
        decide(
            parse_policy(POLICY),
            HeuristicClassifier(),
            RoutingRequest(messages=SIMPLE, model="gpt-9"),
        )
    assert info.value.status == 404
    assert info.value.param == "model"
    assert "small" in info.value.message and "big" in info.value.message


def test_bad_tier_header_is_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        decide(
            parse_policy(POLICY),
            HeuristicClassifier(),
            RoutingRequest(messages=SIMPLE, headers={"x-gateway-tier": "moon"}),
        )
    assert info.value.param == "x-gateway-tier"


def test_decisions_are_deterministic() -> None:
    policy = parse_policy(POLICY)
    first = decide(policy, HeuristicClassifier(), RoutingRequest(messages=HARD))
    second = decide(policy, HeuristicClassifier(), RoutingRequest(messages=HARD))
    assert first == second
