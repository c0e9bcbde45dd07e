"""The routing policy: frozen values parsed from the operator's YAML file.

Validation is strict (unknown keys are errors, since a typo would otherwise silently fall
back to a default) and every error names the key path and its line in the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast, get_args

from gateway.protocol import TIERS, Tier
from gateway.routing.answer_budget import parse_default_max_tokens
from gateway.routing.capabilities import DEFAULT_SUPPORTS, Capability, parse_needs, parse_supports
from gateway.routing.classifier import ClassifierKind
from gateway.routing.fallback_policy import (
    FAILURE_KINDS,
    ContinuationSpec,
    FallbackSpec,
    Timeouts,
    parse_fallback,
)
from gateway.routing.policy_file import read_policy_text
from gateway.routing.policy_reader import PolicyError, PolicyReader
from gateway.routing.yaml_lines import YAMLLimitError, YAMLSyntaxError, load_located

POLICY_VERSION: Final = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    url: str
    model: str
    name: str
    max_concurrency: int = 16
    supports: frozenset[Capability] = frozenset()
    """What the node serves beyond plain chat (:mod:`gateway.routing.capabilities`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TierSpec:
    name: Tier
    context_window: int
    nodes: tuple[NodeSpec, ...]
    max_concurrency_per_node: int = 16
    """The limit of a node that names none of its own, GATEWAY_*_URLS nodes included."""
    supports: frozenset[Capability] = frozenset()
    """The capabilities of a node that declares none of its own, GATEWAY_*_URLS nodes too."""
    default_max_tokens: int | None = None
    """max_tokens sent when a request sets none; None: ``sessions.completion_reserve_tokens``
    (:func:`gateway.routing.answer_budget.default_max_tokens`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """``when`` conditions are ANDed; the first rule whose conditions all hold wins."""

    tier: Tier
    reason: str
    prompt_tokens_over: int | None = None
    max_tokens_over: int | None = None
    messages_over: int | None = None
    history_tokens_over: int | None = None
    """Tokens of the whole conversation before context fitting (gateway/routing/fitted.py)."""
    headers: tuple[tuple[str, str], ...] = ()
    has_tools: bool | None = None
    needs: frozenset[Capability] = frozenset()
    """Capabilities the request must need, all of them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassifierSpec:
    kind: ClassifierKind = "learned"
    model_path: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingSpec:
    cloud_above: float = 0.55
    rules: tuple[Rule, ...] = ()
    allow_pinning: bool = True
    classifier: ClassifierSpec = field(default_factory=ClassifierSpec)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSpec:
    interval_s: float = 5.0
    timeout_s: float = 2.0
    failure_threshold: int = 3
    open_s: float = 10.0
    load_interval_s: float = 1.0
    """How often each node's /metrics is read for its load (vLLM queue and KV cache)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionsSpec:
    ttl_s: int = 86400
    max_turns: int = 200
    id_from_user: bool = False
    redis_timeout_s: float = 0.25
    """Deadline of every Redis call; past it the request goes on without the store."""
    spool_max_turns: int = 10_000
    """Turns kept in memory (per replica) while Redis is down; the oldest go beyond that."""
    completion_reserve_tokens: int = 512
    """Completion budget for context fitting when a request sets no max_tokens."""
    safety_margin: float = 0.1
    """Share of a tier's context window left unused (tiktoken is not the model's tokenizer)."""
    per_message_tokens: int = 4
    """Tokens counted per message for role markers, on top of its text."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    version: int
    tiers: Mapping[Tier, TierSpec]
    routing: RoutingSpec = field(default_factory=RoutingSpec)
    fallback: FallbackSpec = field(default_factory=FallbackSpec)
    health: HealthSpec = field(default_factory=HealthSpec)
    sessions: SessionsSpec = field(default_factory=SessionsSpec)
    max_body_bytes: int = 1 << 20
    source: str = "<memory>"

    def served_models(self) -> dict[str, Tier]:
        """Each node's served model name and the tier that serves it."""
        return {node.model: tier.name for tier in self.tiers.values() for node in tier.nodes}

    def with_nodes(self, tier: Tier, nodes: Sequence[NodeSpec]) -> Policy:
        """A copy whose ``tier`` serves ``nodes`` (the GATEWAY_*_URLS overrides).

        Those name a URL and a model only: each takes the tier's ``max_concurrency_per_node``
        and ``supports``.
        """
        spec = self.tiers[tier]
        limited = tuple(
            dataclasses.replace(
                node, max_concurrency=spec.max_concurrency_per_node, supports=spec.supports
            )
            for node in nodes
        )
        tiers = dict(self.tiers)
        tiers[tier] = dataclasses.replace(spec, nodes=limited)
        return dataclasses.replace(self, tiers=tiers)


def parse_policy(text: str, *, source: str = "<memory>") -> Policy:
    """Parse and validate policy YAML; raises :class:`PolicyError`."""
    try:
        doc = load_located(text)
    except YAMLSyntaxError as exc:
        what = "over a limit" if isinstance(exc, YAMLLimitError) else "invalid YAML"
        raise PolicyError(f"{what}: {exc}", key="", line=exc.line, source=source) from exc
    r = PolicyReader(doc, source)
    top = r.mapping(
        doc.data, "", ("version", "tiers", "routing", "fallback", "health", "sessions", "limits")
    )
    if "version" not in top:
        raise r.fail("version", f"missing (this gateway reads version {POLICY_VERSION})")
    if top["version"] != POLICY_VERSION:
        raise r.fail(
            "version", f"unsupported version {top['version']!r}; expected {POLICY_VERSION}"
        )
    if "tiers" not in top:
        raise r.fail("tiers", "missing: define tiers.edge and tiers.cloud")
    tiers_map = r.mapping(top["tiers"], "tiers", TIERS)
    tiers = {name: _tier(r, tiers_map.get(name, {}), f"tiers.{name}", name) for name in TIERS}
    limits = r.mapping(top.get("limits", {}), "limits", ("max_body_bytes",))
    return Policy(
        version=POLICY_VERSION,
        tiers=tiers,
        routing=_routing(r, top.get("routing", {})),
        fallback=parse_fallback(r, top.get("fallback", {})),
        health=_health(r, top.get("health", {})),
        sessions=_sessions(r, top.get("sessions", {})),
        max_body_bytes=r.integer(limits, "limits", "max_body_bytes", 1 << 20, low=1024),
        source=source,
    )


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file (blocking: call it in a thread on a running server).

    The file is read with limits (a regular file, at most 1 MiB) and parsed with them
    (:class:`~gateway.routing.yaml_lines.YAMLLimits`); going over one is a PolicyError.
    """
    policy = parse_policy(read_policy_text(path), source=str(path))
    spec = policy.routing.classifier
    if spec.model_path is not None and not spec.model_path.is_absolute():
        # A relative model path is relative to the policy file, not to the working directory.
        resolved = dataclasses.replace(spec, model_path=path.parent / spec.model_path)
        policy = dataclasses.replace(
            policy, routing=dataclasses.replace(policy.routing, classifier=resolved)
        )
    return policy


def _tier(r: PolicyReader, value: object, path: str, name: Tier) -> TierSpec:
    m = r.mapping(
        value,
        path,
        ("context_window", "nodes", "max_concurrency_per_node", "supports", "default_max_tokens"),
    )
    per_node = r.integer(m, path, "max_concurrency_per_node", 16)
    supports = parse_supports(r, m, path, DEFAULT_SUPPORTS[name])
    nodes: list[NodeSpec] = []
    for index, item in enumerate(r.listing(m, path, "nodes")):
        where = f"{path}.nodes[{index}]"
        n = r.mapping(item, where, ("url", "model", "name", "max_concurrency", "supports"))
        url = r.string(n, where, "url")
        if not url.startswith(("http://", "https://")):
            raise r.fail(f"{where}.url", f"must start with http:// or https://, got {url!r}")
        url = url.rstrip("/")
        nodes.append(
            NodeSpec(
                url=url,
                model=r.string(n, where, "model"),
                name=r.string(n, where, "name", _default_node_name(name, url)),
                max_concurrency=r.integer(n, where, "max_concurrency", per_node),
                supports=parse_supports(r, n, where, supports),
            )
        )
    names = [node.name for node in nodes]
    for index, node_name in enumerate(names):
        if names.index(node_name) != index:
            raise r.fail(f"{path}.nodes[{index}].name", f"duplicate node name {node_name!r}")
    window = r.integer(m, path, "context_window", 2048 if name == "edge" else 8192, low=256)
    return TierSpec(
        name=name,
        context_window=window,
        nodes=tuple(nodes),
        max_concurrency_per_node=per_node,
        supports=supports,
        default_max_tokens=parse_default_max_tokens(r, m, path, context_window=window),
    )


def _routing(r: PolicyReader, value: object) -> RoutingSpec:
    path = "routing"
    m = r.mapping(value, path, ("cloud_above", "rules", "allow_pinning", "classifier"))
    rules = tuple(
        _rule(r, item, f"{path}.rules[{i}]") for i, item in enumerate(r.listing(m, path, "rules"))
    )
    c = r.mapping(m.get("classifier", {}), f"{path}.classifier", ("kind", "model"))
    kind = r.choice(c, f"{path}.classifier", "kind", get_args(ClassifierKind), "learned")
    model = c.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise r.fail(f"{path}.classifier.model", "must be a path to a weights file")
    return RoutingSpec(
        cloud_above=r.number(m, path, "cloud_above", 0.55, low=0.0, high=1.0),
        rules=rules,
        allow_pinning=r.boolean(m, path, "allow_pinning", True),
        classifier=ClassifierSpec(kind=kind, model_path=Path(model) if model else None),
    )


def _rule(r: PolicyReader, value: object, path: str) -> Rule:
    m = r.mapping(value, path, ("when", "tier", "reason"))
    when = r.mapping(
        m.get("when", {}),
        f"{path}.when",
        (
            "prompt_tokens_over",
            "max_tokens_over",
            "messages_over",
            "history_tokens_over",
            "header",
            "has_tools",
            "needs",
        ),
    )
    if not when:
        raise r.fail(f"{path}.when", "needs at least one condition")
    header = r.mapping(
        when.get("header", {}),
        f"{path}.when.header",
        tuple(str(k) for k in cast(dict[str, object], when.get("header", {}) or {})),
    )
    for key, wanted in header.items():
        if not isinstance(wanted, str | int | float) or isinstance(wanted, bool):
            raise r.fail(f"{path}.when.header.{key}", "must be a string value")

    def optional_int(key: str) -> int | None:
        return r.integer(when, f"{path}.when", key, 0, low=0) if key in when else None

    has_tools = r.boolean(when, f"{path}.when", "has_tools", False) if "has_tools" in when else None
    return Rule(
        tier=r.choice(m, path, "tier", TIERS),
        reason=r.string(m, path, "reason"),
        prompt_tokens_over=optional_int("prompt_tokens_over"),
        max_tokens_over=optional_int("max_tokens_over"),
        messages_over=optional_int("messages_over"),
        history_tokens_over=optional_int("history_tokens_over"),
        headers=tuple((str(k).lower(), str(v)) for k, v in header.items()),
        has_tools=has_tools,
        needs=parse_needs(r, when, f"{path}.when"),
    )


def _health(r: PolicyReader, value: object) -> HealthSpec:
    path = "health"
    m = r.mapping(
        value, path, ("interval_s", "timeout_s", "failure_threshold", "open_s", "load_interval_s")
    )
    return HealthSpec(
        interval_s=r.number(m, path, "interval_s", 5.0, low=0.05),
        timeout_s=r.number(m, path, "timeout_s", 2.0, low=0.01),
        failure_threshold=r.integer(m, path, "failure_threshold", 3, high=1000),
        open_s=r.number(m, path, "open_s", 10.0, low=0.01),
        load_interval_s=r.number(m, path, "load_interval_s", 1.0, low=0.05),
    )


def _sessions(r: PolicyReader, value: object) -> SessionsSpec:
    path = "sessions"
    m = r.mapping(
        value,
        path,
        (
            "ttl_s",
            "max_turns",
            "id_from_user",
            "redis_timeout_s",
            "spool_max_turns",
            "completion_reserve_tokens",
            "safety_margin",
            "per_message_tokens",
        ),
    )
    return SessionsSpec(
        ttl_s=r.integer(m, path, "ttl_s", 86400),
        max_turns=r.integer(m, path, "max_turns", 200, high=100_000),
        id_from_user=r.boolean(m, path, "id_from_user", False),
        redis_timeout_s=r.number(m, path, "redis_timeout_s", 0.25, low=0.01, high=10.0),
        spool_max_turns=r.integer(m, path, "spool_max_turns", 10_000, low=0, high=1_000_000),
        completion_reserve_tokens=r.integer(
            m, path, "completion_reserve_tokens", 512, high=1_000_000
        ),
        safety_margin=r.number(m, path, "safety_margin", 0.1, low=0.0, high=0.5),
        per_message_tokens=r.integer(m, path, "per_message_tokens", 4, low=0, high=64),
    )


def _default_node_name(tier: Tier, url: str) -> str:
    host = url.split("://", 1)[-1]
    return f"{tier}@{host}"


__all__ = [
    "FAILURE_KINDS",
    "POLICY_VERSION",
    "ClassifierSpec",
    "ContinuationSpec",
    "FallbackSpec",
    "HealthSpec",
    "NodeSpec",
    "Policy",
    "PolicyError",
    "RoutingSpec",
    "Rule",
    "SessionsSpec",
    "TierSpec",
    "Timeouts",
    "load_policy",
    "parse_policy",
]
