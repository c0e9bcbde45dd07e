"""The policy's ``shadow`` section: re-asking a sample of edge answers on the cloud tier.

Off unless the section is there: prompts and answers are stored only when the operator
writes it, and names where (``store``). What the gateway does with these values is
:mod:`gateway.shadow`'s; ``docs/shadow.md`` is the operator's description.

.. code-block:: yaml

    shadow:
      sample_rate: 0.05         # share of served edge answers re-asked on the cloud
      max_concurrency: 2        # shadow calls in flight per gateway; more are skipped
      cloud_busy_above: 0.5     # skip while the least busy cloud node is busier than this
      timeout_s: 120            # deadline of one shadow call
      store: {kind: redis, key: "gateway:shadow", max_records: 10000, ttl_s: 604800}
      # or: {kind: jsonl, dir: shadow/, max_file_bytes: 16777216, max_files: 8, ttl_s: 604800}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from gateway.policy.reader import PolicyReader

StoreKind = Literal["redis", "jsonl"]
STORE_KINDS: Final[tuple[StoreKind, ...]] = ("redis", "jsonl")

DEFAULT_TTL_S: Final = 7 * 86400


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisStoreSpec:
    """One Redis stream (on the gateway's ``REDIS_URL``), capped in length and age."""

    kind: Literal["redis"] = "redis"
    key: str = "gateway:shadow"
    max_records: int = 10_000
    """The stream's length cap (an exact ``XADD MAXLEN``)."""
    ttl_s: int = DEFAULT_TTL_S
    """Records older than this are trimmed (at each write and every minute)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonlStoreSpec:
    """JSON lines in ``dir``, one file at a time, rotated by size and age."""

    kind: Literal["jsonl"] = "jsonl"
    dir: Path
    """Relative to the policy file's directory when relative (see :func:`resolve_dir`)."""
    max_file_bytes: int = 16 << 20
    max_files: int = 8
    """Files kept, the one being written included: at most ``max_files * max_file_bytes``."""
    ttl_s: int = DEFAULT_TTL_S
    """A file is deleted once its first record is this old (so no record outlives it)."""


ShadowStoreSpec = RedisStoreSpec | JsonlStoreSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowSpec:
    sample_rate: float = 0.05
    """Share of served edge answers re-asked on the cloud, chosen by a hash of the request
    id (the same id is always in or out, on every replica)."""
    max_concurrency: int = 2
    """Shadow calls in flight per gateway process; a sampled answer past it is skipped."""
    cloud_busy_above: float = 0.5
    """Skip while the least busy usable cloud node's busyness (in-flight share of its
    ``max_concurrency`` plus its vLLM load score) is above this: shadows use spare room."""
    timeout_s: float = 120.0
    """Deadline of one shadow call, all attempts included."""
    store: ShadowStoreSpec


def parse_shadow(r: PolicyReader, value: object) -> ShadowSpec:
    """The ``shadow`` section; errors name the key path and its line."""
    path = "shadow"
    m = r.mapping(
        value,
        path,
        ("sample_rate", "max_concurrency", "cloud_busy_above", "timeout_s", "store"),
    )
    if "store" not in m:
        raise r.fail(path, "missing store: say where prompts and answers go (redis or jsonl)")
    return ShadowSpec(
        sample_rate=r.number(m, path, "sample_rate", 0.05, low=0.0, high=1.0),
        max_concurrency=r.integer(m, path, "max_concurrency", 2, high=1000),
        cloud_busy_above=r.number(m, path, "cloud_busy_above", 0.5, low=0.0, high=100.0),
        timeout_s=r.number(m, path, "timeout_s", 120.0, low=0.01, high=3600.0),
        store=_store(r, m["store"], f"{path}.store"),
    )


def _store(r: PolicyReader, value: object, path: str) -> ShadowStoreSpec:
    if not isinstance(value, dict):
        raise r.fail(path, "must be a mapping with a kind (redis or jsonl)")
    if "kind" not in value:
        raise r.fail(path, "missing kind: redis or jsonl")
    kind = r.choice(value, path, "kind", STORE_KINDS)
    if kind == "redis":
        m = r.mapping(value, path, ("kind", "key", "max_records", "ttl_s"))
        return RedisStoreSpec(
            key=r.string(m, path, "key", "gateway:shadow"),
            max_records=r.integer(m, path, "max_records", 10_000, high=100_000_000),
            ttl_s=_ttl(r, m, path),
        )
    m = r.mapping(value, path, ("kind", "dir", "max_file_bytes", "max_files", "ttl_s"))
    if "dir" not in m:
        raise r.fail(path, "missing dir: the directory the JSONL files are written to")
    return JsonlStoreSpec(
        dir=Path(r.string(m, path, "dir")),
        max_file_bytes=r.integer(m, path, "max_file_bytes", 16 << 20, low=1024, high=1 << 40),
        max_files=r.integer(m, path, "max_files", 8, low=2, high=10_000),
        ttl_s=_ttl(r, m, path),
    )


def _ttl(r: PolicyReader, m: Mapping[str, object], path: str) -> int:
    return r.integer(m, path, "ttl_s", DEFAULT_TTL_S, low=1, high=10 * 365 * 86400)


def resolve_dir(spec: ShadowSpec, base: Path) -> ShadowSpec:
    """``spec`` with a relative JSONL ``dir`` made relative to ``base`` (the policy
    file's directory), as the classifier's weights path is."""
    store = spec.store
    if isinstance(store, JsonlStoreSpec) and not store.dir.is_absolute():
        return dataclasses.replace(spec, store=dataclasses.replace(store, dir=base / store.dir))
    return spec


__all__ = [
    "STORE_KINDS",
    "JsonlStoreSpec",
    "RedisStoreSpec",
    "ShadowSpec",
    "ShadowStoreSpec",
    "StoreKind",
    "parse_shadow",
    "resolve_dir",
]
