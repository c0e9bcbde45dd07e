"""Capabilities: what a request needs, what the policy declares, and where that lets it go."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.policy.capabilities import DEFAULT_SUPPORTS
from gateway.policy.errors import PolicyError
from gateway.policy.model import NodeSpec
from gateway.policy.parse import parse_policy
from gateway.routing.classifier import HeuristicClassifier
from gateway.routing.decide import RoutingRequest, decide
from gateway.routing.needs import RequestNeeds, request_needs
from gateway.upstream.pool import NodePool

USER = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}
TEXT = {"type": "text", "text": "what is this?"}


def body(**fields: object) -> dict[str, object]:
    return {"messages": [USER], **fields}


NEEDS: list[tuple[str, dict[str, object], list[tuple[str, str]]]] = [
    ("plain", body(), []),
    ("tools-default-auto", body(tools=[TOOL]), [("tool_choice_auto", "tools")]),
    ("tools-auto", body(tools=[TOOL], tool_choice="auto"), [("tool_choice_auto", "tools")]),
    ("tools-null-choice", body(tools=[TOOL], tool_choice=None), [("tool_choice_auto", "tools")]),
    ("tools-required", body(tools=[TOOL], tool_choice="required"),
     [("tool_choice_required", "tools")]),
    ("tools-named", body(tools=[TOOL], tool_choice=NAMED), [("tool_choice_function", "tools")]),
    ("tools-none", body(tools=[TOOL], tool_choice="none"), []),
    ("empty-tools", body(tools=[]), []),
    ("tools-not-a-list", body(tools={"a": 1}), []),
    ("choice-without-tools", body(tool_choice="required"), []),
    ("bad-choice-is-the-nodes", body(tools=[TOOL], tool_choice="sometimes"), []),
    ("legacy-functions", body(functions=[TOOL["function"]]), [("functions", "functions")]),
    ("legacy-functions-none", body(functions=[TOOL["function"]], function_call="none"), []),
    ("json-object", body(response_format={"type": "json_object"}),
     [("json_object", "response_format")]),
    ("json-schema", body(response_format={"type": "json_schema", "json_schema": {}}),
     [("json_schema", "response_format")]),
    ("text-format", body(response_format={"type": "text"}), []),
    ("format-not-an-object", body(response_format="json"), []),
    ("logprobs", body(logprobs=True), [("logprobs", "logprobs")]),
    ("logprobs-false", body(logprobs=False, top_logprobs=0), []),
    ("top-logprobs", body(top_logprobs=3), [("logprobs", "top_logprobs")]),
    ("top-logprobs-bool", body(top_logprobs=True), []),
    ("logit-bias", body(logit_bias={"50256": -100}), [("logit_bias", "logit_bias")]),
    ("empty-logit-bias", body(logit_bias={}), []),
    ("n2", body(n=2), [("n", "n")]),
    ("n1", body(n=1), []),
    ("image-part", {"messages": [USER, {"role": "user", "content": [TEXT, IMAGE]}]},
     [("images", "messages[1].content[1]")]),
    ("audio-part", {"messages": [{"role": "user", "content": [AUDIO]}]},
     [("audio", "messages[0].content[0]")]),
    ("first-image-named", {"messages": [{"role": "user", "content": [IMAGE, IMAGE]}]},
     [("images", "messages[0].content[0]")]),
    ("malformed-parts", {"messages": [{"role": "user", "content": [1, {"type": 2}, "x"]}]}, []),
    ("several", body(tools=[TOOL], tool_choice="required", response_format={"type": "json_object"},
                     n=3),
     [("tool_choice_required", "tools"), ("json_object", "response_format"), ("n", "n")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_body", "expected"), [c[1:] for c in NEEDS], ids=[c[0] for c in NEEDS]
)
def test_request_needs(request_body: dict[str, object], expected: list[tuple[str, str]]) -> None:
    needs = request_needs(request_body)
    assert list(needs.params) == expected
    assert needs.has_tools == any(n.startswith(("tool_choice", "functions")) for n, _ in expected)


# --- the policy ------------------------------------------------------------------------

NODES = """version: 1
tiers:
  edge:
    nodes: [{url: "http://e:1", model: small, name: e1}]
  cloud:
    nodes: [{url: "http://c:1", model: big, name: c1}]
"""


def test_defaults_follow_the_kind_of_node_of_each_tier() -> None:
    policy = parse_policy(NODES)
    assert policy.tiers["edge"].nodes[0].supports == frozenset()
    cloud = policy.tiers["cloud"].nodes[0].supports
    assert cloud == DEFAULT_SUPPORTS["cloud"]
    assert {"tool_choice_required", "tool_choice_function", "json_schema", "n"} <= cloud
    assert "tool_choice_auto" not in cloud and "images" not in cloud


def test_a_node_overrides_its_tier_and_tools_is_shorthand() -> None:
    policy = parse_policy(
        """version: 1
tiers:
  edge:
    supports: [json_object]
    nodes:
      - {url: "http://e:1", model: small, name: e1}
      - {url: "http://e:2", model: small, name: e2, supports: [tools, images]}
  cloud:
    supports: []
    nodes: [{url: "http://c:1", model: big, name: c1}]
"""
    )
    e1, e2 = policy.tiers["edge"].nodes
    assert e1.supports == {"json_object"}
    assert e2.supports == {
        "tool_choice_auto",
        "tool_choice_required",
        "tool_choice_function",
        "images",
    }
    assert policy.tiers["cloud"].nodes[0].supports == frozenset()


def test_env_nodes_take_their_tiers_capabilities() -> None:
    policy = parse_policy(NODES.replace("  cloud:\n", "  cloud:\n    supports: [tools]\n"))
    replaced = policy.with_nodes("cloud", [NodeSpec(url="http://x:1", model="big", name="c-1")])
    assert replaced.tiers["cloud"].nodes[0].supports == replaced.tiers["cloud"].supports
    assert "tool_choice_auto" in replaced.tiers["cloud"].nodes[0].supports


def test_rule_conditions_parse() -> None:
    policy = parse_policy(
        NODES
        + "routing:\n  rules:\n"
        + "    - {when: {has_tools: true}, tier: cloud, reason: tools}\n"
        + "    - {when: {needs: [json_schema, n]}, tier: edge, reason: odd}\n"
    )
    tools, odd = policy.routing.rules
    assert (tools.has_tools, tools.needs) == (True, frozenset())
    assert (odd.has_tools, odd.needs) == (None, {"json_schema", "n"})


@pytest.mark.parametrize(
    ("text", "key", "line", "fragment"),
    [
        (
            NODES.replace("  edge:\n", "  edge:\n    supports: [tools, telepathy]\n"),
            "tiers.edge.supports[1]",
            4,
            "must be one of tools, tool_choice_auto",
        ),
        (
            NODES.replace("  cloud:\n", "  cloud:\n    supports: json_schema\n"),
            "tiers.cloud.supports",
            6,
            "must be a list",
        ),
        (
            NODES.replace("name: c1}", "name: c1, supports: [vision]}"),
            "tiers.cloud.nodes[0].supports[0]",
            6,
            "got 'vision'",
        ),
        (
            NODES + "routing:\n  rules:\n    - {when: {has_tools: yes please}, tier: cloud, "
            "reason: t}\n",
            "routing.rules[0].when.has_tools",
            9,
            "true or false",
        ),
        (
            NODES + "routing:\n  rules:\n    - {when: {needs: []}, tier: cloud, reason: t}\n",
            "routing.rules[0].when.needs",
            9,
            "at least one capability",
        ),
        (
            NODES + "routing:\n  rules:\n    - {when: {needs: [json]}, tier: cloud, reason: t}\n",
            "routing.rules[0].when.needs[0]",
            9,
            "got 'json'",
        ),
    ],
)
def test_errors_name_key_and_line(text: str, key: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="p.yaml")
    assert (info.value.key, info.value.line) == (key, line)
    assert str(info.value).startswith(f"p.yaml:{line}: {key}: ")
    assert fragment in str(info.value)


# --- the decision ----------------------------------------------------------------------

ROUTED = """version: 1
tiers:
  edge:
    nodes:
      - {url: "http://e:1", model: small, name: e1}
      - {url: "http://e:2", model: tiny, name: e2, supports: [json_object]}
  cloud:
    supports: [tool_choice_required, tool_choice_function, json_schema, n, logprobs]
    nodes:
      - {url: "http://c:1", model: big, name: c1}
      - {url: "http://c:2", model: vision, name: c2, supports: [images]}
routing:
  cloud_above: 0.3
  classifier: {kind: heuristic}
  rules:
    - {when: {needs: [logprobs]}, tier: cloud, reason: wants-logprobs}
    - {when: {header: {x-app-plan: free}}, tier: edge, reason: free-plan}
"""
HARD = [{"role": "user", "content": "Prove the theorem step by step: x^2 = 4"}]
SIMPLE = [USER]
REQUIRED = {"tools": [TOOL], "tool_choice": "required"}
AUTO = {"tools": [TOOL]}

# (id, fields of the body, model, headers, tier, reason) for requests that are routed
ROUTES: list[tuple[str, dict[str, object], str, dict[str, str], str, str]] = [
    ("plain-simple", {}, "auto", {}, "edge", "score 0.00 <= 0.30"),
    ("tools-move-to-the-cloud", REQUIRED, "auto", {}, "cloud",
     "needs tool_choice_required: cloud"),
    ("a-rule-to-edge-moves-too", REQUIRED, "auto", {"x-app-plan": "free"}, "cloud",
     "needs tool_choice_required: cloud"),
    ("edge-has-a-json-node", {"response_format": {"type": "json_object"}}, "auto", {}, "edge",
     "score"),
    ("cloud-lacks-json-object", {"response_format": {"type": "json_object"}, "messages": HARD},
     "auto", {}, "edge", "needs json_object: edge"),
    ("needs-rule", {"logprobs": True}, "auto", {}, "cloud", "rule wants-logprobs"),
    ("pinned-tier-that-has-it", REQUIRED, "cloud", {}, "cloud", "pinned by model cloud"),
    ("pinned-model-that-has-it", {"messages": [{"role": "user", "content": [IMAGE]}]}, "vision",
     {}, "cloud", "pinned by model vision"),
    ("none-choice-stays", {"tools": [TOOL], "tool_choice": "none"}, "auto", {}, "edge", "score"),
]  # fmt: skip


def _decide(fields: dict[str, object], model: str, headers: dict[str, str]):
    request_body = {"messages": SIMPLE, **fields}
    return decide(
        parse_policy(ROUTED),
        HeuristicClassifier(),
        RoutingRequest(
            messages=request_body["messages"],  # type: ignore[arg-type]
            model=model,
            headers=headers,
            needs=request_needs(request_body),
        ),
    )


@pytest.mark.parametrize(
    ("fields", "model", "headers", "tier", "reason"),
    [c[1:] for c in ROUTES],
    ids=[c[0] for c in ROUTES],
)
def test_routes(
    fields: dict[str, object], model: str, headers: dict[str, str], tier: str, reason: str
) -> None:
    decision = _decide(fields, model, headers)
    assert decision.tier == tier
    assert decision.reason.startswith(reason)
    if reason.startswith("needs"):
        assert decision.reason_kind == "needs"


# (id, fields, model, headers, param, words in the message) for requests refused with a 400
REFUSED: list[tuple[str, dict[str, object], str, dict[str, str], str, str]] = [
    ("auto-tools-nowhere", AUTO, "auto", {}, "tools",
     'No node of this gateway serves tools with tool_choice "auto" (the default when tools'),
    ("auto-tools-hint", AUTO, "auto", {}, "tools", 'Send tool_choice "required"'),
    ("pinned-edge-with-tools", REQUIRED, "edge", {}, "tools",
     "The edge tier (pinned by model edge) does not serve tools with tool_choice \"required\"; "
     "the cloud tier does"),
    ("header-pin-with-tools", REQUIRED, "auto", {"x-gateway-tier": "edge"}, "tools",
     "pinned by header"),
    ("pinned-model-without-it", REQUIRED, "small", {}, "tools", "The model 'small' does not serve"),
    ("image-nowhere-but-c2", {"messages": [USER, {"role": "user", "content": [TEXT, IMAGE]}]},
     "big", {}, "messages[1].content[1]", "The model 'big' does not serve image content parts."),
    ("no-single-node", {"messages": [{"role": "user", "content": [IMAGE]}], **REQUIRED}, "auto",
     {}, "tools", "No single node"),
    ("audio-nowhere", {"messages": [{"role": "user", "content": [AUDIO]}]}, "auto", {},
     "messages[0].content[0]", "audio content parts"),
    ("legacy-functions", {"functions": [TOOL["function"]]}, "auto", {}, "functions", "(use tools)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "model", "headers", "param", "words"),
    [c[1:] for c in REFUSED],
    ids=[c[0] for c in REFUSED],
)
def test_refusals_name_the_field(
    fields: dict[str, object], model: str, headers: dict[str, str], param: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        _decide(fields, model, headers)
    error = info.value.body()["error"]
    assert (info.value.status, error["type"], error["param"]) == (
        400,
        "invalid_request_error",
        param,
    )
    assert words in error["message"]


def test_a_request_without_needs_is_untouched_by_capabilities() -> None:
    decision = _decide({"messages": HARD}, "auto", {})
    assert decision.reason_kind == "score" and decision.tier == "cloud"


# --- the node ------------------------------------------------------------------------------


def test_acquire_only_hands_out_nodes_with_all_the_needs() -> None:
    pool = NodePool(parse_policy(ROUTED))
    plain = pool.acquire("cloud")
    assert plain is not None
    plain.release()
    for needs, node in [
        (frozenset({"images"}), "c2"),
        (frozenset({"json_schema", "n"}), "c1"),
    ]:
        lease = pool.acquire("cloud", needs=needs)  # type: ignore[arg-type]
        assert lease is not None and lease.node.name == node
        lease.release()
    # A node's own list replaces its tier's: c2 serves images, not the tier's json_schema.
    assert pool.acquire("cloud", needs=frozenset({"json_schema", "images"})) is None
    assert pool.acquire("cloud", needs=frozenset({"tool_choice_auto"})) is None
    assert pool.acquire("edge", needs=frozenset({"tool_choice_required"})) is None
    edge = pool.acquire("edge", needs=frozenset({"json_object"}))
    assert edge is not None and edge.node.name == "e2"


def test_needs_value_is_falsy_when_empty() -> None:
    assert not RequestNeeds() and not request_needs(body())
    assert request_needs(body(n=2))
