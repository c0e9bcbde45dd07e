"""The policy's ``pricing`` section and the store-failure choice of its ``limits`` section.

What the gateway does with them is :mod:`gateway.accounts`'s; ``docs/keys-and-budgets.md``
is the operator's description.

.. code-block:: yaml

    pricing:                  # USD per 1M tokens
      edge:  {prompt_usd_per_1m: 0, completion_usd_per_1m: 0}       # the edge's running cost
      cloud: {prompt_usd_per_1m: 0.20, completion_usd_per_1m: 0.60}
      models:                 # a served model's own price, over its tier's
        some/model: {prompt_usd_per_1m: 0.5, completion_usd_per_1m: 1.5}
    limits:
      on_store_error: open    # open: admit, count, log | closed: 503 limits_unavailable

A price under ``models`` for a model that no node of the file serves is accepted: the
``GATEWAY_EDGE_URLS`` / ``GATEWAY_CLOUD_URLS`` overrides replace the nodes after parsing
(as with ``routing.default_model``); the gateway logs such a price once per policy
(:func:`unserved_models`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from gateway.policy.reader import PolicyReader, join_key
from hybrid_common.protocol import Tier

StoreErrorMode = Literal["open", "closed"]
"""What limits and budgets do while Redis cannot be reached."""

MAX_PRICE_USD_PER_1M: Final = 1_000_000.0
"""A bound that catches a price written per token or per 1k by mistake, not a real one."""

_PRICE_KEYS: Final = ("prompt_usd_per_1m", "completion_usd_per_1m")


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """US dollars per million tokens, prompt and completion apart."""

    prompt_usd_per_1m: float = 0.0
    completion_usd_per_1m: float = 0.0


FREE: Final = Price()


@dataclass(frozen=True, slots=True, kw_only=True)
class PricingSpec:
    """Each tier's price, and served models priced on their own."""

    edge: Price = FREE
    """The edge's running cost; 0 unless the operator sets one."""
    cloud: Price = FREE
    models: Mapping[str, Price] = field(default_factory=dict)
    """A served model's price (by its ``model`` name in ``tiers``), over its tier's."""

    def price(self, tier: Tier, model: str | None) -> Price:
        """What a token of ``model`` on ``tier`` costs."""
        if model is not None and self.models:
            own = self.models.get(model)
            if own is not None:
                return own
        return self.edge if tier == "edge" else self.cloud


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsSpec:
    on_store_error: StoreErrorMode = "open"
    """``open``: while Redis is down, requests are admitted unchecked (counted and logged)
    and their usage is kept and written later; ``closed``: keys with limits or a budget
    get 503 ``limits_unavailable`` with Retry-After."""


def parse_pricing(r: PolicyReader, value: object) -> PricingSpec:
    """The ``pricing`` section (absent: everything free)."""
    path = "pricing"
    m = r.mapping(value, path, ("edge", "cloud", "models"))
    models_path = join_key(path, "models")
    raw_models = m.get("models", {})
    names = tuple(raw_models) if isinstance(raw_models, dict) else ()
    listed = r.mapping(raw_models, models_path, names)
    models: dict[str, Price] = {}
    for name, item in listed.items():
        if not isinstance(name, str) or not name.strip():
            raise r.fail(models_path, f"a model name must be a non-empty string, got {name!r}")
        models[name] = _price(r, item, join_key(models_path, name))
    return PricingSpec(
        edge=_price(r, m["edge"], join_key(path, "edge")) if "edge" in m else FREE,
        cloud=_price(r, m["cloud"], join_key(path, "cloud")) if "cloud" in m else FREE,
        models=models,
    )


def parse_store_error_mode(r: PolicyReader, limits: Mapping[str, object]) -> LimitsSpec:
    """``limits.on_store_error`` (the caller has checked the section's keys)."""
    mode = r.choice(limits, "limits", "on_store_error", get_args(StoreErrorMode), "open")
    return LimitsSpec(on_store_error=mode)


def unserved_models(pricing: PricingSpec, served: Mapping[str, Tier]) -> list[str]:
    """Priced models that no node serves (a typo, or nodes replaced by an override)."""
    return sorted(name for name in pricing.models if name not in served)


def _price(r: PolicyReader, value: object, path: str) -> Price:
    m = r.mapping(value, path, _PRICE_KEYS)
    prompt, completion = (
        r.number(m, path, key, 0.0, low=0.0, high=MAX_PRICE_USD_PER_1M) for key in _PRICE_KEYS
    )
    return Price(prompt_usd_per_1m=float(prompt), completion_usd_per_1m=float(completion))


__all__ = [
    "FREE",
    "LimitsSpec",
    "Price",
    "PricingSpec",
    "StoreErrorMode",
    "parse_pricing",
    "parse_store_error_mode",
    "unserved_models",
]
