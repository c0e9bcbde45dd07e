"""The policy's ``shadow`` section: off unless written, every error names key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.errors import PolicyError
from gateway.policy.parse import load_policy, parse_policy
from gateway.policy.shadow import JsonlStoreSpec, RedisStoreSpec, ShadowSpec

GOOD = """version: 1
tiers:
  edge:
    nodes: [{url: "http://127.0.0.1:1", model: m}]
  cloud:
    nodes: [{url: "http://127.0.0.1:2", model: c}]
"""


def test_shadowing_is_off_unless_the_section_is_there() -> None:
    assert parse_policy(GOOD).shadow is None


def test_a_redis_store_takes_its_defaults() -> None:
    policy = parse_policy(GOOD + "shadow:\n  store: {kind: redis}\n")
    assert policy.shadow == ShadowSpec(store=RedisStoreSpec())
    assert policy.shadow.sample_rate == 0.05
    assert policy.shadow.max_concurrency == 2
    assert policy.shadow.store == RedisStoreSpec(
        key="gateway:shadow", max_records=10_000, ttl_s=7 * 86400
    )


def test_every_key_is_read() -> None:
    policy = parse_policy(
        GOOD + "shadow:\n"
        "  sample_rate: 0.25\n"
        "  max_concurrency: 3\n"
        "  cloud_busy_above: 0.75\n"
        "  timeout_s: 30\n"
        "  store: {kind: jsonl, dir: /var/lib/shadow, max_file_bytes: 4096, max_files: 3,"
        " ttl_s: 3600}\n"
    )
    assert policy.shadow == ShadowSpec(
        sample_rate=0.25,
        max_concurrency=3,
        cloud_busy_above=0.75,
        timeout_s=30,
        store=JsonlStoreSpec(
            dir=Path("/var/lib/shadow"), max_file_bytes=4096, max_files=3, ttl_s=3600
        ),
    )


def test_a_relative_jsonl_dir_is_relative_to_the_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "policy.yaml"
    path.parent.mkdir()
    path.write_text(GOOD + "shadow:\n  store: {kind: jsonl, dir: shadow}\n")
    spec = load_policy(path).shadow
    assert spec is not None and isinstance(spec.store, JsonlStoreSpec)
    assert spec.store.dir == tmp_path / "conf" / "shadow"


@pytest.mark.parametrize(
    ("section", "key", "line", "fragment"),
    [
        ("shadow: {}\n", "shadow", 7, "missing store"),
        ("shadow: yes\n", "shadow", 7, "must be a mapping"),
        ("shadow:\n  store: redis\n", "shadow.store", 8, "must be a mapping with a kind"),
        ("shadow:\n  store: {key: k}\n", "shadow.store", 8, "missing kind"),
        ("shadow:\n  store: {kind: s3}\n", "shadow.store.kind", 8, "one of redis, jsonl"),
        ("shadow:\n  store: {kind: jsonl}\n", "shadow.store", 8, "missing dir"),
        (
            "shadow:\n  store: {kind: redis, dir: /tmp}\n",
            "shadow.store.dir",
            8,
            "unknown key (allowed: key, kind, max_records, ttl_s)",
        ),
        (
            "shadow:\n  store: {kind: jsonl, dir: x, key: k}\n",
            "shadow.store.key",
            8,
            "unknown key",
        ),
        ("shadow:\n  store: {kind: redis, max_records: 0}\n", "shadow.store.max_records", 8,
         "between 1"),
        ("shadow:\n  store: {kind: redis, ttl_s: 1.5}\n", "shadow.store.ttl_s", 8, "integer"),
        ("shadow:\n  store: {kind: redis, key: ''}\n", "shadow.store.key", 8, "non-empty"),
        ("shadow:\n  store: {kind: jsonl, dir: x, max_files: 1}\n", "shadow.store.max_files",
         8, "between 2"),
        ("shadow:\n  store: {kind: jsonl, dir: x, max_file_bytes: 10}\n",
         "shadow.store.max_file_bytes", 8, "between 1024"),
        ("shadow:\n  sample_rate: 1.5\n  store: {kind: redis}\n", "shadow.sample_rate", 8,
         "between 0 and 1"),
        ("shadow:\n  sample_rate: often\n  store: {kind: redis}\n", "shadow.sample_rate", 8,
         "must be a number"),
        ("shadow:\n  max_concurrency: 0\n  store: {kind: redis}\n", "shadow.max_concurrency",
         8, "between 1"),
        ("shadow:\n  timeout_s: 0\n  store: {kind: redis}\n", "shadow.timeout_s", 8,
         "between 0.01"),
        ("shadow:\n  sample: 0.1\n  store: {kind: redis}\n", "shadow.sample", 8, "unknown key"),
    ],
)  # fmt: skip
def test_errors_name_key_and_line(section: str, key: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(GOOD + section, source="policy.yaml")
    assert (info.value.key, info.value.line) == (key, line)
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"policy.yaml:{line}: {key}: ")
