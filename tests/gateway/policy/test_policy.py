"""Policy validation: every error names the key and the line."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.policy.errors import PolicyError
from gateway.policy.file import read_policy_text
from gateway.policy.model import node_base_url
from gateway.policy.parse import load_policy, parse_policy
from gateway.routing.state import load_routing_state
from hybrid_common.yaml_lines import YAMLLimitError, YAMLLimits, load_located

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


def test_a_default_model_is_an_explicit_opt_in() -> None:
    assert parse_policy(GOOD).routing.default_model is None  # a request must name its model
    assert parse_policy(GOOD + "routing:\n  default_model: null\n").routing.default_model is None
    opted_in = parse_policy(GOOD + "routing:\n  default_model: auto\n")
    assert opted_in.routing.default_model == "auto"


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
        (GOOD + "routing:\n  default_model: ''\n", "routing.default_model", 8, "non-empty"),
        (GOOD + "routing:\n  default_model: [auto]\n", "routing.default_model", 8, "string"),
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
        "long-chat",
        "agent",
        "structured",
    ]
    assert policy.tiers["cloud"].nodes[1].supports >= {"tool_choice_auto", "images"}


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("version: 1\ntiers:\n  x: a\x00b\n", 3, "control character U+0000 at column 7"),
        ("version: 1\nx: \x07\n", 2, "control character U+0007 at column 4"),
        ("version: 1\nx: &a [1, *a]\n", 2, "invalid YAML: an alias refers to its own anchor"),
        ("x: &a {y: *a}\n", 1, "recursive alias"),
        ("x: " + "[" * 10_000 + "]" * 10_000 + "\n", 1, "over a limit: nested deeper than 64"),
        ("x:\n" + "".join(f"{'  ' * i}- \n" for i in range(1, 80)), 65, "nested deeper"),
        (BILLION_LAUGHS, 1, "over a limit: more than 20000 values once aliases are expanded"),
        ("x: [" + ", ".join(["1"] * 20_001) + "]\n", 1, "over a limit: more than 20000 values"),
        ("version: 1\nwhen: 2001-13-01\n", 2, "cannot read the value '2001-13-01'"),
        ("version: 1\nx: !!int nope\n", 2, "cannot read the value 'nope'"),
        ("version: 1\nx: " + "9" * 5000 + "\n", 2, "cannot read the value '9999"),
        ("version: 1\n? [a, b]\n: 1\n", 2, "a key must be a plain name"),
    ],
    ids=[
        "nul",
        "bell",
        "recursive-list",
        "recursive-map",
        "10000-brackets",
        "deep-block",
        "billion-laughs",
        "20001-values",
        "bad-date",
        "bad-int",
        "5000-digits",
        "list-key",
    ],
)
def test_yaml_over_a_limit_or_unreadable_is_a_policy_error(
    text: str, line: int, fragment: str
) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="policy.yaml")
    assert info.value.line == line
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"policy.yaml:{line}: <document>: ")


def test_aliases_within_the_budget_expand() -> None:
    doc = load_located("a: &a [1, 2]\nb: [*a, *a]\n")
    assert doc.data == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


def test_parsing_stops_at_its_deadline() -> None:
    with pytest.raises(YAMLLimitError, match="parsing took longer than 0 s"):
        load_located("a: 1\n", limits=YAMLLimits(timeout_s=0.0))


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_text(GOOD)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    assert load_policy(link).tiers["edge"].nodes[0].model == "m"


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)
    return path


def _link_to_dev_zero(tmp_path: Path) -> Path:
    path = tmp_path / "zero.yaml"
    path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_link_to_dev_zero, "not a regular file: a character device (/dev/zero)"),
        (_fifo, "not a regular file: a FIFO"),
        (lambda tmp: tmp, "not a regular file: a directory"),
    ],
    ids=["dev-zero", "fifo", "directory"],
)
def test_only_regular_files_are_read(
    tmp_path: Path, make: Callable[[Path], Path], fragment: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(PolicyError) as info:
        load_policy(path)  # a FIFO without a writer would block here if it were opened blocking
    assert str(info.value) == f"{path}: <document>: {fragment}"


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as file:
        file.truncate(50 << 20)  # sparse: 50 MB that a read would have to allocate
    with pytest.raises(PolicyError, match=f"{50 << 20} bytes, larger than the limit of 1048576"):
        load_policy(path)
    with pytest.raises(PolicyError, match="larger than the limit of 100 bytes"):
        read_policy_text(tmp_path / "big.yaml", max_bytes=100)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.line == 2
    assert "not UTF-8 text (byte 0xe9)" in str(info.value)


def test_classifier_weights_must_be_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "weights.json").symlink_to("/dev/zero")
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD + "routing:\n  classifier: {kind: learned, model: weights.json}\n")
    with pytest.raises(PolicyError) as info:
        load_routing_state(path)
    assert (info.value.key, info.value.line) == ("routing.classifier.model", 8)
    assert "cannot load classifier weights" in str(info.value)
    assert "not a regular file: a character device (/dev/zero)" in str(info.value)


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("http://h:8000", "http://h:8000"),
        ("http://h:8000/", "http://h:8000"),
        ("http://h:8000/v1", "http://h:8000"),  # an OpenAI-style base URL
        ("http://h:8000/v1/", "http://h:8000"),
        ("https://lb/tenant-a/v1", "https://lb/tenant-a"),
        ("http://v1", "http://v1"),  # a host named v1
        ("http://v1:8000/v1", "http://v1:8000"),
        ("http://h/v10", "http://h/v10"),
        ("http://h/apiv1", "http://h/apiv1"),
    ],
)
def test_a_node_url_is_its_servers_root(url: str, root: str) -> None:
    """The gateway appends /v1/chat/completions, /health and /metrics itself."""
    assert node_base_url(url) == root
    policy = parse_policy(GOOD.replace("http://127.0.0.1:1", url))
    assert policy.tiers["edge"].nodes[0].url == root
