"""Variants: which served model of a tier a routed request goes to, by its complexity score.

``tiers.<tier>.variants`` lists served models of the tier (typically quantizations of one
edge model that one node serves side by side: ``python -m edge_node --variant``), lightest
first, each with the score it serves below::

    tiers:
      edge:
        nodes:
          - {url: "http://127.0.0.1:8001", model: smollm2-q4_0, name: edge-1-q4_0}
          - {url: "http://127.0.0.1:8001", model: smollm2-q4_1, name: edge-1-q4_1}
        variants:
          - {model: smollm2-q4_0, score_below: 0.3}   # the simplest requests
          - {model: smollm2-q4_1}                     # the rest of the edge's requests

A request routed to the tier (by the score, a rule or a tier pin, never a pinned model)
goes to the first variant whose ``score_below`` is above its score and that some node of
the tier serves with what the request needs; the last variant may leave ``score_below``
out to take the rest. With no variant matching, any node of the tier serves it, as without
the section. The choice is a routing preference, not a pin: fallback to the other tier
works as for any routed request (:mod:`gateway.routing.decide`).

A node that serves several variants is listed once per variant (the same ``url``, its own
``model`` and ``name``). Each ``model`` must be served by a node the tier lists (a typo is
an error naming its key and line); a tier whose nodes come from ``GATEWAY_*_URLS`` only
(no ``nodes`` in the file) is checked at routing time instead: a variant no node serves is
passed over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.policy.reader import PolicyReader, join_key

VARIANTS_KEY: Final = "variants"


@dataclass(frozen=True, slots=True, kw_only=True)
class VariantSpec:
    """One served model of a tier and the scores it takes."""

    model: str
    score_below: float | None = None
    """It takes requests scoring below this; None: every score (the last variant only)."""


def parse_variants(
    r: PolicyReader, m: Mapping[str, object], path: str, served: Sequence[str]
) -> tuple[VariantSpec, ...]:
    """``<path>.variants``; ``served`` are the models of the tier's nodes in the file."""
    where = join_key(path, VARIANTS_KEY)
    items = r.listing(m, path, VARIANTS_KEY)
    variants: list[VariantSpec] = []
    for index, item in enumerate(items):
        at = f"{where}[{index}]"
        v = r.mapping(item, at, ("model", "score_below"))
        model = r.string(v, at, "model")
        if served and model not in served:
            known = ", ".join(sorted(set(served)))
            raise r.fail(
                f"{at}.model", f"unknown variant {model!r}: no node of {path} serves it ({known})"
            )
        if any(earlier.model == model for earlier in variants):
            raise r.fail(f"{at}.model", f"variant {model!r} is listed twice")
        below: float | None = None
        if "score_below" in v:
            below = r.number(v, at, "score_below", 0.0, low=0.0, high=1.0)
        elif index < len(items) - 1:
            raise r.fail(at, "only the last variant may leave out score_below (it takes the rest)")
        previous = variants[-1].score_below if variants else None
        if below is not None and previous is not None and below <= previous:
            raise r.fail(
                f"{at}.score_below",
                f"must be above the previous variant's ({previous:g}): lightest first",
            )
        variants.append(VariantSpec(model=model, score_below=below))
    return tuple(variants)


__all__ = ["VARIANTS_KEY", "VariantSpec", "parse_variants"]
