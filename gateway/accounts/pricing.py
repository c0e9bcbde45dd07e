"""Turning tokens into money: what an answer cost, what it would have cost on the cloud, and
what a request must reserve against a budget before it runs.

Money is integer nano-USD (1e-9 USD, "nusd") everywhere in code and in Redis, so sums over
many requests are exact; a price of ``p`` USD per 1M tokens is ``p * 1000`` nusd per token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from gateway.policy.pricing import Price, PricingSpec
from hybrid_common.protocol import TIERS, Tier, Usage

NUSD_PER_USD: Final = 1_000_000_000
_NUSD_PER_TOKEN: Final = 1000
"""nusd per token at a price of 1 USD per 1M tokens."""


def usd_to_nusd(usd: float) -> int:
    return round(usd * NUSD_PER_USD)


def nusd_to_usd(nusd: int) -> float:
    return nusd / NUSD_PER_USD


def price_nusd(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """The tokens at ``price``, rounded to a whole nano-dollar once, for the whole sum."""
    return round(
        prompt_tokens * price.prompt_usd_per_1m * _NUSD_PER_TOKEN
        + completion_tokens * price.completion_usd_per_1m * _NUSD_PER_TOKEN
    )


def cost_nusd(pricing: PricingSpec, tier: Tier, model: str | None, usage: Usage) -> int:
    """What ``usage`` of ``model`` on ``tier`` cost (the model's own price, else the tier's)."""
    return price_nusd(
        pricing.price(tier, model), usage["prompt_tokens"], usage["completion_tokens"]
    )


def cloud_equivalent_nusd(pricing: PricingSpec, usage: Usage) -> int:
    """What the same tokens would have cost at the cloud tier's price: the saving's baseline."""
    return price_nusd(pricing.cloud, usage["prompt_tokens"], usage["completion_tokens"])


def ceiling_prices(
    pricing: PricingSpec, served: Mapping[str, Tier] | None = None
) -> dict[Tier, Price]:
    """Per tier, the highest prompt and the highest completion price any of its tokens may
    cost: the tier's own and those of the priced models it serves (``served``: model ->
    tier, :meth:`~gateway.policy.model.Policy.served_models`; None: every priced model on
    every tier, an upper bound still). Each is a maximum on its own, so the pair bounds
    every model of the tier."""
    ceilings: dict[Tier, Price] = {"edge": pricing.edge, "cloud": pricing.cloud}
    for model, price in pricing.models.items():
        if served is None:
            tiers: tuple[Tier, ...] = TIERS
        else:
            tier = served.get(model)
            tiers = () if tier is None else (tier,)  # served by no node: nothing costs it
        for tier in tiers:
            top = ceilings[tier]
            ceilings[tier] = Price(
                prompt_usd_per_1m=max(top.prompt_usd_per_1m, price.prompt_usd_per_1m),
                completion_usd_per_1m=max(top.completion_usd_per_1m, price.completion_usd_per_1m),
            )
    return ceilings


def reservation_nusd(
    pricing: PricingSpec,
    tiers: Iterable[Tier],
    prompt_tokens: int,
    max_tokens: int,
    *,
    served: Mapping[str, Tier] | None = None,
) -> int:
    """What a request reserves against its key's budget: its prompt and its whole answer
    budget at the priciest of the ``tiers`` the key may be answered by (and of the priced
    models they serve), so an answer from any of them, after any fallback that came before
    the first token, costs no more than was reserved. A continued answer can: its
    continuation is sent the prompt again, and the text so far, as prompt tokens."""
    return reserve_at(ceiling_prices(pricing, served), tiers, prompt_tokens, max_tokens)


def reserve_at(
    ceilings: Mapping[Tier, Price], tiers: Iterable[Tier], prompt_tokens: int, max_tokens: int
) -> int:
    """:func:`reservation_nusd` from :func:`ceiling_prices` worked out once per policy."""
    return max((price_nusd(ceilings[tier], prompt_tokens, max_tokens) for tier in tiers), default=0)


__all__ = [
    "NUSD_PER_USD",
    "ceiling_prices",
    "cloud_equivalent_nusd",
    "cost_nusd",
    "nusd_to_usd",
    "price_nusd",
    "reservation_nusd",
    "reserve_at",
    "usd_to_nusd",
]
