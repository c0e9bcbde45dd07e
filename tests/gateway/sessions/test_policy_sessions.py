"""The policy's ``sessions:`` section: defaults, values, and errors naming key and line."""

from __future__ import annotations

import pytest

from gateway.policy.errors import PolicyError
from gateway.policy.parse import parse_policy

GOOD = """version: 1
tiers:
  edge:
    nodes: [{url: "http://127.0.0.1:1", model: m}]
  cloud:
    nodes: []
"""


def test_defaults() -> None:
    spec = parse_policy(GOOD).sessions
    assert (spec.ttl_s, spec.max_turns, spec.id_from_user) == (86400, 200, False)
    assert spec.redis_timeout_s == 0.25
    assert spec.spool_max_turns == 10_000
    assert spec.completion_reserve_tokens == 512
    assert spec.safety_margin == 0.1
    assert spec.per_message_tokens == 4


def test_every_key_is_read() -> None:
    spec = parse_policy(
        GOOD + "sessions:\n"
        "  ttl_s: 60\n"
        "  max_turns: 10\n"
        "  id_from_user: true\n"
        "  redis_timeout_s: 0.5\n"
        "  spool_max_turns: 0\n"
        "  completion_reserve_tokens: 128\n"
        "  safety_margin: 0.2\n"
        "  per_message_tokens: 0\n"
    ).sessions
    assert (spec.ttl_s, spec.max_turns, spec.id_from_user) == (60, 10, True)
    assert (spec.redis_timeout_s, spec.spool_max_turns) == (0.5, 0)
    assert (spec.completion_reserve_tokens, spec.safety_margin, spec.per_message_tokens) == (
        128,
        0.2,
        0,
    )


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        ("  redis_timeout: 1\n", "sessions.redis_timeout", "unknown key"),
        ("  redis_timeout_s: 0\n", "sessions.redis_timeout_s", "between 0.01 and 10"),
        ("  redis_timeout_s: 30\n", "sessions.redis_timeout_s", "between 0.01 and 10"),
        ("  redis_timeout_s: fast\n", "sessions.redis_timeout_s", "must be a number"),
        ("  spool_max_turns: -1\n", "sessions.spool_max_turns", "between 0 and"),
        ("  spool_max_turns: 2.5\n", "sessions.spool_max_turns", "integer"),
        ("  completion_reserve_tokens: 0\n", "sessions.completion_reserve_tokens", "between 1"),
        ("  safety_margin: 0.9\n", "sessions.safety_margin", "between 0 and 0.5"),
        ("  per_message_tokens: 100\n", "sessions.per_message_tokens", "between 0 and 64"),
        ("  max_turns: 0\n", "sessions.max_turns", "between 1"),
        ("  ttl_s: 0\n", "sessions.ttl_s", "between 1"),
        ("  id_from_user: sometimes\n", "sessions.id_from_user", "true or false"),
    ],
)
def test_errors_name_key_and_line(body: str, key: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(GOOD + "sessions:\n" + body, source="policy.yaml")
    assert info.value.key == key
    assert info.value.line == 8
    assert fragment in str(info.value)
    assert str(info.value).startswith("policy.yaml:8")
