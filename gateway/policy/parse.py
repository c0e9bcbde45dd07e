"""Parsing the policy file into :mod:`gateway.policy.model`'s frozen values.

Validation is strict (unknown keys are errors, since a typo would otherwise silently fall
back to a default) and every error names the key path and its line in the file. The only
module of the package that loads the YAML parser.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import cast, get_args

from gateway.policy.answer_budget import parse_default_max_tokens
from gateway.policy.capabilities import DEFAULT_SUPPORTS, parse_needs, parse_supports
from gateway.policy.errors import PolicyError
from gateway.policy.fallback import parse_fallback
from gateway.policy.file import read_policy_text
from gateway.policy.model import (
    POLICY_VERSION,
    ClassifierKind,
    ClassifierSpec,
    HealthSpec,
    NodeSpec,
    Policy,
    RoutingSpec,
    Rule,
    SessionsSpec,
    TierSpec,
    node_base_url,
)
from gateway.policy.pricing import parse_pricing, parse_store_error_mode
from gateway.policy.reader import PolicyReader
from gateway.policy.shadow import parse_shadow, resolve_dir
from gateway.policy.variants import VARIANTS_KEY, parse_variants
from hybrid_common.protocol import TIERS, Tier
from hybrid_common.yaml_lines import YAMLLimitError, YAMLSyntaxError, load_located


def parse_policy(text: str, *, source: str = "<memory>") -> Policy:
    """Parse and validate policy YAML; raises :class:`PolicyError`."""
    try:
        doc = load_located(text)
    except YAMLSyntaxError as exc:
        what = "over a limit" if isinstance(exc, YAMLLimitError) else "invalid YAML"
        raise PolicyError(f"{what}: {exc}", key="", line=exc.line, source=source) from exc
    r = PolicyReader(doc, source)
    top = r.mapping(
        doc.data,
        "",
        (
            "version",
            "tiers",
            "routing",
            "fallback",
            "health",
            "sessions",
            "shadow",
            "limits",
            "pricing",
        ),
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
    limits = r.mapping(top.get("limits", {}), "limits", ("max_body_bytes", "on_store_error"))
    return Policy(
        version=POLICY_VERSION,
        tiers=tiers,
        routing=_routing(r, top.get("routing", {})),
        fallback=parse_fallback(r, top.get("fallback", {})),
        health=_health(r, top.get("health", {})),
        sessions=_sessions(r, top.get("sessions", {})),
        shadow=parse_shadow(r, top["shadow"]) if "shadow" in top else None,  # opt-in only
        max_body_bytes=r.integer(limits, "limits", "max_body_bytes", 1 << 20, low=1024),
        pricing=parse_pricing(r, top.get("pricing", {})),
        limits=parse_store_error_mode(r, limits),
        source=source,
    )


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file (blocking: call it in a thread on a running server).

    The file is read with limits (a regular file, at most 1 MiB) and parsed with them
    (:class:`~hybrid_common.yaml_lines.YAMLLimits`); going over one is a PolicyError.
    """
    policy = parse_policy(read_policy_text(path), source=str(path))
    spec = policy.routing.classifier
    if spec.model_path is not None and not spec.model_path.is_absolute():
        # A relative model path is relative to the policy file, not to the working directory.
        resolved = dataclasses.replace(spec, model_path=path.parent / spec.model_path)
        policy = dataclasses.replace(
            policy, routing=dataclasses.replace(policy.routing, classifier=resolved)
        )
    if policy.shadow is not None:  # a relative JSONL directory, likewise
        policy = dataclasses.replace(policy, shadow=resolve_dir(policy.shadow, path.parent))
    return policy


def _tier(r: PolicyReader, value: object, path: str, name: Tier) -> TierSpec:
    m = r.mapping(
        value,
        path,
        (
            "context_window",
            "nodes",
            "max_concurrency_per_node",
            "supports",
            "default_max_tokens",
            VARIANTS_KEY,
        ),
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
        url = node_base_url(url)
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
            raise r.fail(
                f"{path}.nodes[{index}].name",
                f"duplicate node name {node_name!r} (a node listed once per served model, "
                "as for variants, needs a name in each entry)",
            )
    window = r.integer(m, path, "context_window", 2048 if name == "edge" else 8192, low=256)
    return TierSpec(
        name=name,
        context_window=window,
        nodes=tuple(nodes),
        max_concurrency_per_node=per_node,
        supports=supports,
        default_max_tokens=parse_default_max_tokens(r, m, path, context_window=window),
        variants=parse_variants(r, m, path, [node.model for node in nodes]),
    )


def _routing(r: PolicyReader, value: object) -> RoutingSpec:
    path = "routing"
    m = r.mapping(
        value, path, ("cloud_above", "rules", "allow_pinning", "classifier", "default_model")
    )
    rules = tuple(
        _rule(r, item, f"{path}.rules[{i}]") for i, item in enumerate(r.listing(m, path, "rules"))
    )
    c = r.mapping(m.get("classifier", {}), f"{path}.classifier", ("kind", "model"))
    kind = r.choice(c, f"{path}.classifier", "kind", get_args(ClassifierKind), "learned")
    model = c.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise r.fail(
            f"{path}.classifier.model",
            "must be a path to a weights file or the version of a shipped one (complexity-v1)",
        )
    # A bare version name (no folder, no suffix) names a weights file shipped with the gateway.
    shipped = model if model is not None and _SHIPPED_NAME.fullmatch(model) else None
    where = f"{path}.classifier.model" if model is not None else f"{path}.classifier"
    return RoutingSpec(
        cloud_above=r.number(m, path, "cloud_above", 0.55, low=0.0, high=1.0),
        rules=rules,
        allow_pinning=r.boolean(m, path, "allow_pinning", True),
        classifier=ClassifierSpec(
            kind=kind,
            model_path=Path(model) if model and not shipped else None,
            model_name=shipped,
            line=r.doc.line_of(where),
        ),
        # An explicit opt-in: absent or null, a request without a model is a 400.
        default_model=(
            r.string(m, path, "default_model") if m.get("default_model") is not None else None
        ),
    )


_SHIPPED_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


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


__all__ = ["load_policy", "parse_policy"]
