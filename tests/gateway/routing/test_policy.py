"""Policy validation: every error names the key and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.routing.policy import PolicyError, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[3]

GOOD = """version: 1
tiers:
  edge:
    nodes: [{url: "http://127.0.0.1:1", model: m}]
  cloud:
    nodes: []
"""


def test_shipped_policies_are_valid() -> None:
    for path in sorted((ROOT / "policies").glob("*.yaml")):
        policy = load_policy(path)
        assert policy.version == 1
        assert policy.tiers["edge"].nodes and policy.tiers["cloud"].nodes


def test_defaults_fill_unspecified_sections() -> None:
    policy = parse_policy(GOOD)
    assert policy.routing.cloud_above == 0.55
    assert policy.fallback.timeouts.first_token_s == 10
    assert policy.tiers["edge"].nodes[0].name == "edge@127.0.0.1:1"
    assert policy.sessions.max_turns == 200


def test_the_yaml_on_key_is_not_a_boolean() -> None:
    policy = parse_policy(GOOD + "fallback:\n  on: [timeout]\n")
    assert policy.fallback.on == frozenset({"timeout"})


@pytest.mark.parametrize(
    ("text", "key", "line", "fragment"),
    [
        ("version: 2\ntiers: {}\n", "version", 1, "unsupported version"),
        ("tiers: {}\n", "version", 1, "missing"),
        ("version: 1\n", "tiers", 1, "missing"),
        (GOOD + "routing:\n  cloud_abov: 0.5\n", "routing.cloud_abov", 8, "unknown key"),
        (GOOD + "routing:\n  cloud_above: 1.5\n", "routing.cloud_above", 8, "between 0 and 1"),
        (GOOD + "routing:\n  cloud_above: high\n", "routing.cloud_above", 8, "must be a number"),
        (GOOD + "routing:\n  allow_pinning: maybe\n", "routing.allow_pinning", 8, "true or false"),
        (
            GOOD + "routing:\n  rules:\n    - {tier: cloud, reason: x}\n",
            "routing.rules[0].when",
            9,
            "at least one condition",
        ),
        (
            GOOD
            + "routing:\n  rules:\n    - {when: {prompt_tokens_over: 5}, tier: moon, reason: x}\n",
            "routing.rules[0].tier",
            9,
            "one of edge, cloud",
        ),
        (GOOD + "routing:\n  classifier: {kind: magic}\n", "routing.classifier.kind", 8, "one of"),
        (GOOD + "fallback:\n  on: [timeout, gremlins]\n", "fallback.on[1]", 8, "must be one of"),
        (
            GOOD + "fallback:\n  timeouts_s: {connect: -1}\n",
            "fallback.timeouts_s.connect",
            8,
            "between",
        ),
        (GOOD + "health:\n  failure_threshold: 1.5\n", "health.failure_threshold", 8, "integer"),
        (
            "version: 1\ntiers:\n  edge:\n    nodes:\n      - {url: ftp://x, model: m}\n",
            "tiers.edge.nodes[0].url",
            5,
            "http://",
        ),
        (
            "version: 1\ntiers:\n  edge:\n    nodes:\n      - {url: 'http://x'}\n",
            "tiers.edge.nodes[0].model",
            5,
            "non-empty string",
        ),
        ("version: 1\ntiers:\n  moon: {}\n", "tiers.moon", 3, "unknown key"),
        ("version: 1\ntiers: [\n", "", 3, "invalid YAML"),
        ("- just\n- a list\n", "", 1, "must be a mapping"),
    ],
)
def test_errors_name_key_and_line(text: str, key: str, line: int | None, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="policy.yaml")
    assert info.value.key == key
    assert info.value.line == line
    assert fragment in str(info.value)
    assert str(info.value).startswith("policy.yaml")


def test_duplicate_node_names_are_rejected() -> None:
    text = (
        "version: 1\ntiers:\n  edge:\n    nodes:\n"
        "      - {url: 'http://a', model: m, name: n}\n"
        "      - {url: 'http://b', model: m, name: n}\n"
    )
    with pytest.raises(PolicyError, match="duplicate node name"):
        parse_policy(text)


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


def test_the_readme_policy_reference_is_a_valid_policy() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The routing policy", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = parse_policy(block, source="README.md")
    assert policy.fallback.max_retry_wait_s == 5
    assert policy.sessions.safety_margin == 0.1
    assert [rule.reason for rule in policy.routing.rules] == [
        "long-prompt",
        "free-plan",
        "long-answer",
        "deep-conversation",
    ]
