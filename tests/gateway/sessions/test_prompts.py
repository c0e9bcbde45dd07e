"""What each tier is sent: fitted messages, the default answer budget, the room warning."""

from __future__ import annotations

import pytest

from gateway.policy.answer_budget import default_max_tokens
from gateway.policy.errors import PolicyError
from gateway.policy.parse import parse_policy
from gateway.sessions.prompts import TierPrompts
from gateway.tokens import count_tokens
from hybrid_common.protocol import TIERS

POLICY = """\
version: 1
tiers:
  edge:
    context_window: 1000
    default_max_tokens: 100
    nodes: [{url: "http://e:1", model: small}]
  cloud:
    context_window: 4000
    nodes: [{url: "http://c:1", model: big}]
sessions:
  completion_reserve_tokens: 300
  safety_margin: 0.1
  per_message_tokens: 4
"""
# usable: edge 900, cloud 3600; prompt budget = usable - reserve - 3: edge 797, cloud 3297

SYSTEM = {"role": "system", "content": "Be brief."}
MCT_40 = {"max_completion_tokens": 40}


def cost(text: str) -> int:
    return count_tokens(text) + 4


def prompts(messages, *, fit: bool, **body) -> TierPrompts:
    return TierPrompts(
        policy=parse_policy(POLICY), body={"messages": messages, **body}, fit_context=fit
    )


def history(pairs: int) -> list[dict[str, str]]:
    turns = []
    for i in range(pairs):
        turns.append({"role": "user", "content": f"question {i} " + "word " * 100})
        turns.append({"role": "assistant", "content": f"answer {i} " + "word " * 100})
    return turns


def test_default_max_tokens_per_tier_and_the_reserve_as_default() -> None:
    policy = parse_policy(POLICY)
    assert (default_max_tokens(policy, "edge"), default_max_tokens(policy, "cloud")) == (100, 300)
    bare = parse_policy(POLICY.replace("    default_max_tokens: 100\n", ""))
    assert bare.tiers["edge"].default_max_tokens is None
    assert default_max_tokens(bare, "edge") == 300  # sessions.completion_reserve_tokens
    assert default_max_tokens(parse_policy("version: 1\ntiers: {}\n"), "edge") == 512


@pytest.mark.parametrize("fit", [False, True])
@pytest.mark.parametrize(
    ("body", "edge", "cloud"),
    [
        ({}, {"max_tokens": 100}, {"max_tokens": 300}),  # the tiers' defaults
        ({"max_tokens": None}, {"max_tokens": 100}, {"max_tokens": 300}),
        ({"max_tokens": 40}, {"max_tokens": 40}, {"max_tokens": 40}),  # the client's own
        ({"max_completion_tokens": 40}, MCT_40, MCT_40),  # no max_tokens added
    ],
)  # fmt: skip
def test_max_tokens_sent(fit, body, edge, cloud) -> None:
    request = prompts([{"role": "user", "content": "hi"}], fit=fit, **body)
    for tier, expected in (("edge", edge), ("cloud", cloud)):
        sent = request.body_for(tier, request.body)
        budget = {k: v for k, v in sent.items() if k in ("max_tokens", "max_completion_tokens")}
        assert budget == expected
        assert request.response_headers(tier) == {}


def test_without_a_session_the_messages_go_as_sent() -> None:
    messages = [SYSTEM, *history(6), {"role": "user", "content": "next"}]  # ~1250 tokens
    request = prompts(messages, fit=False)
    assert request.views() == []
    edge = request.prompt("edge")
    assert edge.messages == messages and edge.dropped == 0
    # The edge's window cannot hold it: no room at all, so no default is sent.
    assert edge.prompt_tokens == sum(cost(str(m["content"])) for m in messages)
    assert (edge.room, edge.max_tokens) == (0, None)
    assert "max_tokens" not in request.body_for("edge", request.body)
    assert request.response_headers("edge") == {
        "x-gateway-warning": "answer-budget-below-reserve; room=0; reserve=100"
    }
    cloud = request.prompt("cloud")
    assert (cloud.room, cloud.max_tokens) == (None, 300)


def test_a_long_newest_turn_leaves_less_room_than_the_reserve() -> None:
    newest = {"role": "user", "content": "summarize: " + "word " * 800}
    for fit in (False, True):
        request = prompts([SYSTEM, newest], fit=fit)
        edge = request.prompt("edge")
        tokens = cost(SYSTEM["content"]) + cost(newest["content"])
        assert edge.prompt_tokens == tokens
        room = 900 - 3 - tokens
        assert 0 < room < 100
        assert (edge.room, edge.reserve, edge.max_tokens) == (room, 100, None)
        assert edge.warning() == f"answer-budget-below-reserve; room={room}; reserve=100"
        sent = request.body_for("edge", request.body)
        assert "max_tokens" not in sent and sent["messages"] == [SYSTEM, newest]


def test_a_clients_max_tokens_above_the_room_is_kept_and_warned_about() -> None:
    newest = {"role": "user", "content": "summarize: " + "word " * 800}
    request = prompts([newest], fit=True, max_tokens=150)
    assert request.body_for("edge", request.body)["max_tokens"] == 150
    room = 900 - 3 - cost(newest["content"])
    assert request.response_headers("edge") == {
        "x-gateway-warning": f"answer-budget-below-reserve; room={room}; reserve=150"
    }
    assert request.response_headers("cloud") == {}


def test_with_a_session_each_tier_gets_its_fit_and_the_default_budget() -> None:
    messages = [SYSTEM, *history(6), {"role": "user", "content": "next"}]
    request = prompts(messages, fit=True)
    edge, cloud = request.views()
    assert (edge.tier, cloud.tier) == TIERS
    assert edge.dropped > 0 and cloud.dropped == 0
    assert edge.messages == [SYSTEM, *messages[1 + edge.dropped :]]
    assert edge.messages[1]["role"] == "user"
    assert edge.prompt_tokens <= 900 - 100 - 3  # the default budget was reserved
    # The room is only short when the newest turn itself does not fit: here it does.
    assert (edge.room, edge.max_tokens, cloud.max_tokens) == (None, 100, 300)
    sent = request.body_for("edge", {**request.body, "stream": True})
    assert sent["messages"] == edge.messages and sent["max_tokens"] == 100 and sent["stream"]
    # A client budget is reserved instead: a larger one leaves out more turns.
    larger = prompts(messages, fit=True, max_tokens=400).prompt("edge")
    assert larger.dropped > edge.dropped and larger.max_tokens is None


def test_a_continuation_body_is_fitted_afresh() -> None:
    messages = [*history(6), {"role": "user", "content": "next"}]
    request = prompts(messages, fit=True)
    continued = {
        **request.body,
        "messages": [*messages, {"role": "assistant", "content": "partial " * 20}],
    }
    sent = request.body_for("edge", continued)
    assert sent["messages"][-1] == continued["messages"][-1]
    assert sent["messages"][0]["role"] == "user" and len(sent["messages"]) < len(messages)
    # What is left of the default budget: the answer as a whole stops at 100 tokens.
    assert sent["max_tokens"] == 100 - count_tokens("partial " * 20)
    assert request.prompt("edge").messages[-1] == messages[-1]  # the request's own: unchanged


def test_a_continuation_past_the_default_budget_still_asks_for_one_token() -> None:
    messages = [{"role": "user", "content": "next"}]
    request = prompts(messages, fit=True)
    continued = {
        **request.body,
        "messages": [*messages, {"role": "assistant", "content": "word " * 150}],
    }
    assert request.body_for("edge", continued)["max_tokens"] == 1


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0", "between 1 and 999"),
        ("1000", "between 1 and 999"),  # must leave room for a prompt
        ("lots", "must be a number"),
    ],
)
def test_default_max_tokens_errors_name_key_and_line(value: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(POLICY.replace("default_max_tokens: 100", f"default_max_tokens: {value}"))
    assert info.value.key == "tiers.edge.default_max_tokens"
    assert info.value.line == 5
    assert fragment in str(info.value)


def test_history_tokens_over_is_read_and_checked() -> None:
    rules = "routing:\n  rules: [{when: {history_tokens_over: 6000}, tier: cloud, reason: r}]\n"
    assert parse_policy(POLICY + rules).routing.rules[0].history_tokens_over == 6000
    with pytest.raises(PolicyError) as info:
        parse_policy(POLICY + rules.replace("6000", "-1"))
    assert info.value.key == "routing.rules[0].when.history_tokens_over"


def test_a_tier_without_nodes_has_no_view() -> None:
    messages = [*history(6), {"role": "user", "content": "next"}]
    policy = parse_policy(POLICY.replace('nodes: [{url: "http://e:1", model: small}]', "nodes: []"))
    request = TierPrompts(policy=policy, body={"messages": messages}, fit_context=True)
    assert [view.tier for view in request.views()] == ["cloud"]
