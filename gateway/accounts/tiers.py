"""A key that may use only some tiers (a free plan: edge only): where its requests go.

Applied to the routing decision, before any node is asked:

- a routed request (by score, rule or need) headed for a tier the key may not use goes
  to the tier it may use, and the reason says so (``key allows edge only: ...``), when
  that tier serves all that the request needs; otherwise 403 naming the field that
  needs the other tier;
- a request that pins a forbidden tier (``model: cloud``, a served model of the cloud
  tier, or the ``x-gateway-tier`` header) is refused with 403 ``permission_denied``
  naming ``model`` (or the header): the client asked for exactly what it may not have.

The attempt loop does its part (:attr:`~gateway.upstream.forward.AttemptPlan.allowed_tiers`):
it never falls back, nor continues a broken answer, on a tier the key may not use.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from gateway.accounts.model import TIERS, ApiKey
from gateway.errors import Forbidden
from gateway.policy.capabilities import DESCRIPTIONS
from gateway.policy.model import Policy
from gateway.routing.decide import TIER_HEADER, Decision, first_unserved, with_variant
from gateway.routing.needs import NO_NEEDS, RequestNeeds
from hybrid_common.protocol import Tier

ALL_TIERS: Final = frozenset(TIERS)
KEY_TIERS_REASON: Final = "key_tiers"
"""The decision's ``reason_kind`` (a metric label) when a key's tiers moved it."""


def allowed_tiers(key: ApiKey | None) -> frozenset[Tier]:
    """The tiers a request with ``key`` may be served by (all, without a stored key)."""
    return ALL_TIERS if key is None else key.tiers


def restrict_to_key(
    decision: Decision, key: ApiKey | None, policy: Policy, needs: RequestNeeds = NO_NEEDS
) -> Decision:
    """``decision`` on a tier ``key`` may use (see the module's docstring), moved with that
    tier's variant (:func:`~gateway.routing.decide.with_variant`); raises
    :class:`Forbidden` when there is none for this request."""
    if key is None or decision.tier in key.tiers:
        return decision
    allowed = " and ".join(tier for tier in TIERS if tier in key.tiers)
    if decision.reason_kind == "pinned:header":
        raise Forbidden(
            f"This API key may use the {allowed} tier only; {TIER_HEADER} asks for "
            f"{decision.tier}.",
            param=TIER_HEADER,
        )
    if decision.reason_kind.startswith("pinned"):
        raise Forbidden(
            f"This API key may use the {allowed} tier only; the model it asks for is "
            f"served by the {decision.tier} tier. Send model auto or {allowed}.",
            param="model",
        )
    tier = next(tier for tier in TIERS if tier in key.tiers)
    missing = first_unserved(policy, tier, needs)
    if missing is not None:
        raise Forbidden(
            f"This API key may use the {allowed} tier only, which does not serve "
            f"{DESCRIPTIONS[missing]}.",
            param=needs.param(missing),
        )
    moved = dataclasses.replace(
        decision,
        tier=tier,
        reason=f"key allows {allowed} only (routed {decision.tier}: {decision.reason})",
        reason_kind=KEY_TIERS_REASON,
        variant=None,  # the old tier's: the new tier's own variants apply
    )
    return with_variant(policy, moved, needs)


__all__ = ["ALL_TIERS", "KEY_TIERS_REASON", "allowed_tiers", "restrict_to_key"]
