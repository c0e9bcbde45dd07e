"""decide(): a request's features and the policy in, a tier and a reason out. Pure, no I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.errors import InvalidRequest, ModelNotFound
from gateway.policy.capabilities import DESCRIPTIONS, Capability
from gateway.policy.model import Policy, Rule
from gateway.routing.classifier import Classifier, Complexity
from gateway.routing.needs import NO_NEEDS, RequestNeeds
from hybrid_common.protocol import TIERS, ChatMessage, Tier

TIER_HEADER = "x-gateway-tier"
AUTO_MODEL = "auto"


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingRequest:
    messages: Sequence[ChatMessage]
    """What routing judges: with a session, the conversation as fitted (routing/fitted.py)."""
    max_tokens: int | None = None
    model: str = AUTO_MODEL
    headers: Mapping[str, str] | None = None
    """Request headers with lower-case names."""
    needs: RequestNeeds = NO_NEEDS
    """What the request needs of a node beyond plain chat (tools, response_format, ...)."""
    history_tokens: int | None = None
    """Tokens of the whole conversation before fitting; None: ``messages`` are all of it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    tier: Tier
    reason: str
    """Human-readable, for the x-gateway-route-reason header and logs."""
    reason_kind: str
    """Low-cardinality label for metrics: score, rule:<name>, pinned:model, pinned:header."""
    complexity: Complexity
    model: str | None = None
    """A served model name the client pinned, or None to let the gateway pick any node."""
    variant: str | None = None
    """The served model the policy chose within the tier (``tiers.<tier>.variants``): the
    routed tier's nodes serving it are asked; unlike a pin, fallback to the other tier works
    as for any routed request."""

    @property
    def score(self) -> float:
        return self.complexity.score


def decide(policy: Policy, classifier: Classifier, request: RoutingRequest) -> Decision:
    """Pick the tier for one request: a pin (if allowed), then the rules, then the score;
    then :func:`within_capabilities`, then the tier's variant (:func:`with_variant`)."""
    decision = within_capabilities(policy, _choose(policy, classifier, request), request.needs)
    return with_variant(policy, decision, request.needs)


def _choose(policy: Policy, classifier: Classifier, request: RoutingRequest) -> Decision:
    headers = request.headers or {}
    complexity = classifier.classify(request.messages, max_tokens=request.max_tokens)
    pinned_model, model_tier = _model_pin(policy, request.model)
    header_tier = headers.get(TIER_HEADER)
    if header_tier is not None and header_tier not in TIERS:
        raise InvalidRequest(
            f"{TIER_HEADER} must be one of {', '.join(TIERS)}, got {header_tier!r}",
            param=TIER_HEADER,
        )
    if policy.routing.allow_pinning:
        if model_tier is not None:
            return Decision(
                tier=model_tier,
                reason=f"pinned by model {request.model}",
                reason_kind="pinned:model",
                complexity=complexity,
                model=pinned_model,
            )
        if header_tier is not None:
            tier: Tier = "edge" if header_tier == "edge" else "cloud"
            return Decision(
                tier=tier,
                reason=f"pinned by header {TIER_HEADER}: {tier}",
                reason_kind="pinned:header",
                complexity=complexity,
            )
    for rule in policy.routing.rules:
        if _matches(rule, complexity, request, headers):
            return Decision(
                tier=rule.tier,
                reason=f"rule {rule.reason}",
                reason_kind=f"rule:{rule.reason}",
                complexity=complexity,
            )
    threshold = policy.routing.cloud_above
    cloud = complexity.score > threshold
    comparison = ">" if cloud else "<="
    explained = ", ".join(complexity.signals[:3])
    reason = f"score {complexity.score:.2f} {comparison} {threshold:.2f}"
    if explained:
        reason += f": {explained}"
    if not policy.routing.allow_pinning and (model_tier is not None or header_tier is not None):
        reason += " (pinning disabled by policy)"
    return Decision(
        tier="cloud" if cloud else "edge",
        reason=reason,
        reason_kind="score",
        complexity=complexity,
    )


def _model_pin(policy: Policy, model: str) -> tuple[str | None, Tier | None]:
    """(served model, tier) that ``model`` pins; (None, None) for ``auto``."""
    if model == AUTO_MODEL:
        return None, None
    if model == "edge":
        return None, "edge"
    if model == "cloud":
        return None, "cloud"
    served = policy.served_models()
    if model in served:
        return model, served[model]
    raise ModelNotFound(
        f"The model {model!r} does not exist. Use auto, edge, cloud or one of: "
        + ", ".join(sorted(served)),
        param="model",
    )


def _matches(
    rule: Rule, complexity: Complexity, request: RoutingRequest, headers: Mapping[str, str]
) -> bool:
    if rule.prompt_tokens_over is not None and complexity.prompt_tokens <= rule.prompt_tokens_over:
        return False
    if rule.max_tokens_over is not None and (request.max_tokens or 0) <= rule.max_tokens_over:
        return False
    if rule.messages_over is not None and len(request.messages) <= rule.messages_over:
        return False
    if rule.history_tokens_over is not None:
        history = request.history_tokens
        if (complexity.prompt_tokens if history is None else history) <= rule.history_tokens_over:
            return False
    if rule.has_tools is not None and request.needs.has_tools != rule.has_tools:
        return False
    if not rule.needs <= request.needs.needs:
        return False
    return all(headers.get(name) == value for name, value in rule.headers)


def within_capabilities(policy: Policy, decision: Decision, needs: RequestNeeds) -> Decision:
    """``decision`` when its tier has a node with all that the request needs; else the
    other tier, when it has one and the request is not pinned (the reason says so);
    else :class:`InvalidRequest` naming the field that no node it may go to serves."""
    if not needs or _serving(policy, decision.tier, decision.model, needs):
        return decision
    other: Tier = "cloud" if decision.tier == "edge" else "edge"
    pinned = decision.reason_kind.startswith("pinned")
    if not pinned and _serving(policy, other, None, needs):
        lacking = needs.needs - _union(policy, decision.tier, None) or needs.needs
        return dataclasses.replace(
            decision,
            tier=other,
            reason=f"needs {', '.join(sorted(lacking))}: {other}",
            reason_kind="needs",
        )
    anywhere = _union(policy, None, decision.model)
    need = needs.first_missing(anywhere)
    if need is not None and decision.model is not None:
        message = f"The model {decision.model!r} does not serve {DESCRIPTIONS[need]}."
    elif need is not None:
        message = f"No node of this gateway serves {DESCRIPTIONS[need]}."
    elif (
        pinned
        and decision.model is None
        and _serving(policy, other, None, needs)
        and (need := first_unserved(policy, decision.tier, needs)) is not None
    ):
        message = (
            f"The {decision.tier} tier ({decision.reason}) does not serve {DESCRIPTIONS[need]}; "
            f"the {other} tier does: send model auto or {other}."
        )
    else:
        need = needs.params[0][0]
        wanted = "; ".join(DESCRIPTIONS[n] for n, _ in needs.params)
        message = f"No single node of this gateway serves all of: {wanted}."
    if need == "tool_choice_auto" and {"tool_choice_required", "tool_choice_function"} & anywhere:
        message += ' Send tool_choice "required" or one that names a function: those are served.'
    raise InvalidRequest(message, param=needs.param(need))


def with_variant(policy: Policy, decision: Decision, needs: RequestNeeds) -> Decision:
    """``decision`` sent to its tier's first variant whose ``score_below`` is above the
    score and that a node of the tier serves with all of ``needs``; the reason says which.
    Unchanged when the client pinned a served model; without a variant when none applies
    (:mod:`gateway.policy.variants`). Idempotent: applied again, it changes nothing (a
    step that moves the decision to another tier clears ``variant`` and applies it again)."""
    if decision.model is not None:
        return decision
    score = decision.score
    for variant in policy.tiers[decision.tier].variants:
        if variant.score_below is not None and score >= variant.score_below:
            continue
        if not _serving(policy, decision.tier, variant.model, needs):
            continue
        if decision.variant == variant.model:
            return decision
        why = "the rest" if variant.score_below is None else f"< {variant.score_below:.2f}"
        return dataclasses.replace(
            decision,
            variant=variant.model,
            reason=f"{decision.reason}; {decision.tier} variant {variant.model} "
            f"(score {score:.2f} {why})",
        )
    return dataclasses.replace(decision, variant=None) if decision.variant else decision


def first_unserved(policy: Policy, tier: Tier, needs: RequestNeeds) -> Capability | None:
    """The need to name when no node of ``tier`` serves all of ``needs``: the first that
    none of its nodes has, else (each is served, but not all by one node) the first asked
    for. None when some node of ``tier`` serves them all."""
    if not needs or _serving(policy, tier, None, needs):
        return None
    return needs.first_missing(_union(policy, tier, None)) or needs.params[0][0]


def _serving(policy: Policy, tier: Tier, model: str | None, needs: RequestNeeds) -> bool:
    """Some node of ``tier`` (serving ``model``, when given) has all of ``needs``."""
    return any(
        needs.first_missing(node.supports) is None
        for node in policy.tiers[tier].nodes
        if model is None or node.model == model
    )


def _union(policy: Policy, tier: Tier | None, model: str | None) -> frozenset[Capability]:
    """All that the nodes of ``tier`` (of every tier: None) serving ``model`` support."""
    tiers = TIERS if tier is None else (tier,)
    return frozenset().union(
        *(
            node.supports
            for name in tiers
            for node in policy.tiers[name].nodes
            if model is None or node.model == model
        )
    )
