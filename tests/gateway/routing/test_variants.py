"""Variants within a tier (``tiers.<tier>.variants``): parsing with key and line, and
decide()'s choice by score, table-driven."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from gateway.policy.errors import PolicyError
from gateway.policy.model import NodeSpec
from gateway.policy.parse import parse_policy
from gateway.policy.variants import VariantSpec
from gateway.routing.classifier import Complexity
from gateway.routing.decide import Decision, RoutingRequest, decide, with_variant
from gateway.routing.needs import NO_NEEDS, request_needs
from hybrid_common.protocol import ChatMessage

POLICY = """\
version: 1
tiers:
  edge:
    nodes:
      - {url: "http://e:1", model: light, name: e1-light}
      - {url: "http://e:1", model: heavy, name: e1-heavy}
    variants:
      - {model: light, score_below: 0.3}
      - {model: heavy}
  cloud:
    nodes: [{url: "http://c:1", model: big, name: c1}]
routing:
  cloud_above: 0.7
  classifier: {kind: heuristic}
  rules:
    - {when: {header: {x-app-plan: free}}, tier: edge, reason: free-plan}
"""


class FixedScore:
    """A classifier that gives every request the same score."""

    name = "fixed"

    def __init__(self, score: float) -> None:
        self.score = score

    def classify(self, messages: Sequence[ChatMessage], *, max_tokens: int | None) -> Complexity:
        return Complexity(score=self.score, prompt_tokens=3, signals=("test",))


HI: list[ChatMessage] = [{"role": "user", "content": "hi"}]


def route(
    score: float,
    *,
    model: str = "auto",
    headers: dict[str, str] | None = None,
    policy: str = POLICY,
) -> Decision:
    request = RoutingRequest(messages=HI, model=model, headers=headers or {})
    return decide(parse_policy(policy), FixedScore(score), request)


@pytest.mark.parametrize(
    ("score", "model", "headers", "tier", "variant", "reason_end"),
    [
        (0.1, "auto", {}, "edge", "light", "; edge variant light (score 0.10 < 0.30)"),
        (0.29, "auto", {}, "edge", "light", "; edge variant light (score 0.29 < 0.30)"),
        (0.3, "auto", {}, "edge", "heavy", "; edge variant heavy (score 0.30 the rest)"),
        (0.6, "auto", {}, "edge", "heavy", "; edge variant heavy (score 0.60 the rest)"),
        (0.8, "auto", {}, "cloud", None, "test"),  # the cloud tier lists no variants
        # A rule or a tier pin chooses the tier; the score still chooses the variant.
        (0.8, "auto", {"x-app-plan": "free"}, "edge", "heavy", "(score 0.80 the rest)"),
        (0.1, "edge", {}, "edge", "light", "(score 0.10 < 0.30)"),
        (0.1, "auto", {"x-gateway-tier": "edge"}, "edge", "light", "(score 0.10 < 0.30)"),
        # A pinned served model is the client's choice: no variant.
        (0.1, "heavy", {}, "edge", None, "pinned by model heavy"),
    ],
)
def test_the_score_picks_the_variant(
    score: float,
    model: str,
    headers: dict[str, str],
    tier: str,
    variant: str | None,
    reason_end: str,
) -> None:
    decision = route(score, model=model, headers=headers)
    assert (decision.tier, decision.variant) == (tier, variant)
    assert decision.reason.endswith(reason_end), decision.reason
    assert decision.model == ("heavy" if model == "heavy" else None)


def test_the_reason_keeps_the_tier_choice_first() -> None:
    decision = route(0.12)
    assert decision.reason == "score 0.12 <= 0.70: test; edge variant light (score 0.12 < 0.30)"
    assert decision.reason_kind == "score"  # the metric label stays low-cardinality


def test_without_a_catch_all_a_high_score_takes_any_node_of_the_tier() -> None:
    policy = POLICY.replace(
        "      - {model: heavy}\n", "      - {model: heavy, score_below: 0.5}\n"
    )
    assert route(0.4, policy=policy).variant == "heavy"
    decision = route(0.6, policy=policy)
    assert (decision.tier, decision.variant) == ("edge", None)
    assert "variant" not in decision.reason


def test_a_variant_no_node_serves_is_passed_over() -> None:
    """Nodes from GATEWAY_EDGE_URLS replace the file's: a variant they lack is skipped."""
    policy = parse_policy(POLICY)
    only_heavy = policy.with_nodes("edge", [NodeSpec(url="http://x:1", model="heavy", name="x")])
    decision = decide(only_heavy, FixedScore(0.1), RoutingRequest(messages=HI))
    assert decision.variant == "heavy"


def test_a_variant_whose_nodes_lack_what_the_request_needs_is_passed_over() -> None:
    policy = parse_policy(
        POLICY.replace(
            '{url: "http://e:1", model: heavy, name: e1-heavy}',
            '{url: "http://e:1", model: heavy, name: e1-heavy, supports: [json_object]}',
        )
    )
    needs = request_needs(
        {"model": "auto", "messages": HI, "response_format": {"type": "json_object"}}
    )
    decision = decide(policy, FixedScore(0.1), RoutingRequest(messages=HI, needs=needs))
    assert (decision.tier, decision.variant) == ("edge", "heavy")


def test_moving_the_decision_to_another_tier_drops_or_rechooses_the_variant() -> None:
    policy = parse_policy(POLICY)
    edge = route(0.1)
    moved = dataclasses.replace(edge, tier="cloud")
    assert with_variant(policy, moved, NO_NEEDS).variant is None
    assert with_variant(policy, edge, NO_NEEDS) == edge  # applying it again changes nothing
    cloud = route(0.8)
    to_edge = with_variant(policy, dataclasses.replace(cloud, tier="edge"), NO_NEEDS)
    assert to_edge.variant == "heavy" and to_edge.reason.count("variant") == 1


def test_the_parsed_variants() -> None:
    tiers = parse_policy(POLICY).tiers
    assert tiers["edge"].variants == (
        VariantSpec(model="light", score_below=0.3),
        VariantSpec(model="heavy"),
    )
    assert tiers["cloud"].variants == ()


def test_a_tier_without_nodes_in_the_file_accepts_any_variant_name() -> None:
    policy = POLICY.replace(
        """    nodes:
      - {url: "http://e:1", model: light, name: e1-light}
      - {url: "http://e:1", model: heavy, name: e1-heavy}
""",
        "",
    )
    assert len(parse_policy(policy).tiers["edge"].variants) == 2


@pytest.mark.parametrize(
    ("old", "new", "key", "line", "message"),
    [
        (
            "{model: heavy}",
            "{model: q8_0}",
            "tiers.edge.variants[1].model",
            9,
            "unknown variant 'q8_0': no node of tiers.edge serves it (heavy, light)",
        ),
        (
            "{model: heavy}",
            "{model: light}",
            "tiers.edge.variants[1].model",
            9,
            "variant 'light' is listed twice",
        ),
        (
            "{model: light, score_below: 0.3}",
            "{model: light}",
            "tiers.edge.variants[0]",
            8,
            "only the last variant may leave out score_below",
        ),
        (
            "{model: heavy}",
            "{model: heavy, score_below: 0.2}",
            "tiers.edge.variants[1].score_below",
            9,
            "must be above the previous variant's (0.3): lightest first",
        ),
        (
            "{model: heavy}",
            "{model: heavy, score_below: 1.5}",
            "tiers.edge.variants[1].score_below",
            9,
            "must be between 0 and 1",
        ),
        (
            "{model: heavy}",
            "{model: heavy, below: 0.5}",
            "tiers.edge.variants[1].below",
            9,
            "unknown key",
        ),
    ],
)
def test_bad_variants_name_the_key_and_line(
    old: str, new: str, key: str, line: int, message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(POLICY.replace(old, new), source="policy.yaml")
    assert (info.value.key, info.value.line) == (key, line)
    assert message in str(info.value)
