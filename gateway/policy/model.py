"""The routing policy: frozen values, parsed from the operator's YAML file by
:mod:`gateway.policy.parse`.

The bottom layer of the gateway: routing, the upstream client and sessions all read these
values; this package imports none of them (``tests/test_layers.py`` checks it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from gateway.policy.capabilities import Capability
from gateway.policy.fallback import FallbackSpec
from gateway.policy.pricing import LimitsSpec, PricingSpec
from gateway.policy.shadow import ShadowSpec
from gateway.policy.variants import VariantSpec
from hybrid_common.protocol import Tier

ClassifierKind = Literal["heuristic", "learned"]
"""The classifiers a policy may name (:func:`gateway.routing.classifier.build_classifier`)."""

POLICY_VERSION: Final = 1


def node_base_url(url: str) -> str:
    """A node's URL as the gateway keeps it: the server's root, to which it appends
    ``/v1/chat/completions``, ``/health`` and ``/metrics`` itself. A trailing slash and a
    trailing ``/v1`` (the OpenAI-style base URL of the same server, as clients are
    configured) are dropped."""
    url = url.rstrip("/")
    # After the scheme: "http://v1" is a host named v1, not a path.
    return url[:-3] if url.partition("://")[2].endswith("/v1") else url


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    url: str
    """The server's root, without ``/v1`` (:func:`node_base_url`)."""
    model: str
    name: str
    max_concurrency: int = 16
    supports: frozenset[Capability] = frozenset()
    """What the node serves beyond plain chat (:mod:`gateway.policy.capabilities`)."""


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
    (:func:`gateway.policy.answer_budget.default_max_tokens`)."""
    variants: tuple[VariantSpec, ...] = ()
    """Served models of the tier by complexity score, lightest first
    (:mod:`gateway.policy.variants`); empty: any node of the tier."""


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
    """A weights file (a relative path is resolved against the policy file's folder)."""
    model_name: str | None = None
    """A weights file shipped with the gateway, by version (``complexity-v1``)."""
    line: int | None = None
    """Where the file names its weights (``routing.classifier.model``, else the section):
    a weights file that cannot be loaded is reported at this line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingSpec:
    cloud_above: float = 0.55
    rules: tuple[Rule, ...] = ()
    allow_pinning: bool = True
    classifier: ClassifierSpec = field(default_factory=ClassifierSpec)
    default_model: str | None = None
    """The ``model`` of a request that names none (``auto``, a tier, or a served model);
    None: such a request is a 400, as in OpenAI's API."""


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
    shadow: ShadowSpec | None = None
    """Re-asking sampled edge answers on the cloud (:mod:`gateway.policy.shadow`); None: off."""
    pricing: PricingSpec = field(default_factory=PricingSpec)
    """What tokens cost per tier and model (:mod:`gateway.policy.pricing`); all 0 by default."""
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    """How per-key limits and budgets behave while Redis is down."""
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


__all__ = [
    "POLICY_VERSION",
    "ClassifierKind",
    "ClassifierSpec",
    "HealthSpec",
    "NodeSpec",
    "Policy",
    "RoutingSpec",
    "Rule",
    "SessionsSpec",
    "TierSpec",
    "node_base_url",
]
