"""The answer budget: the ``max_tokens`` a tier is sent when the client sets none.

``tiers.<tier>.default_max_tokens`` in the policy; a tier that names none takes
``sessions.completion_reserve_tokens`` (512 by default), the completion budget context
fitting has always reserved, so policies written before the key existed keep their
meaning. The value must leave room for a prompt: it is below the tier's ``context_window``.
How the budget is applied (and when the gateway leaves ``max_tokens`` unset instead) is
:mod:`gateway.sessions.prompts`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from gateway.policy.reader import PolicyReader
from hybrid_common.protocol import Tier

if TYPE_CHECKING:
    from gateway.policy.model import Policy

DEFAULT_MAX_TOKENS_KEY: Final = "default_max_tokens"


def parse_default_max_tokens(
    r: PolicyReader, m: Mapping[str, object], path: str, *, context_window: int
) -> int | None:
    """``tiers.<tier>.default_max_tokens``, or None when the tier names none."""
    if DEFAULT_MAX_TOKENS_KEY not in m:
        return None
    return r.integer(m, path, DEFAULT_MAX_TOKENS_KEY, 0, low=1, high=context_window - 1)


def default_max_tokens(policy: Policy, tier: Tier) -> int:
    """The ``max_tokens`` ``tier`` is sent for a request that sets none."""
    own = policy.tiers[tier].default_max_tokens
    return own if own is not None else policy.sessions.completion_reserve_tokens


__all__ = ["DEFAULT_MAX_TOKENS_KEY", "default_max_tokens", "parse_default_max_tokens"]
