"""What an answer spent, attempt by attempt, priced: the charges a request settles.

Every attempt that wrote part of the answer is charged to the tier and served model of
the node that made it (a node's ``model`` in the policy, which is what prices are keyed
by), with the node's own usage. An attempt that broke, stalled or was cut off by a
departing client before its node reported usage is estimated
(:func:`~gateway.upstream.usage_estimate.estimate_usage`: its prompt counted, one token per
output chunk), so a failed or abandoned stream is never free. Attempts that failed before
their first token wrote nothing and are not charged. The request itself counts once, on
the attempt that ended the answer.
"""

from __future__ import annotations

from gateway.accounts.ledger import Charge
from gateway.accounts.pricing import cloud_equivalent_nusd, cost_nusd
from gateway.policy.model import Policy
from gateway.upstream.answer_record import AnswerRecord, AttemptRecord
from gateway.upstream.usage_estimate import estimate_usage
from hybrid_common.protocol import ChatMessage


def answer_charges(
    record: AnswerRecord, policy: Policy, messages: list[ChatMessage]
) -> list[Charge]:
    """The charges of the answer in ``record`` (``messages``: what the request sent, for
    estimating an attempt without usage), priced by ``policy``."""
    attempts = record.attempts
    if not attempts:
        return []
    pricing = policy.pricing
    last = attempts[-1]
    charges: list[Charge] = []
    for attempt in attempts:
        usage = attempt.usage
        if usage is None:
            usage = estimate_usage(messages, record, attempt)
        model = served_model(policy, attempt)
        charges.append(
            Charge(
                tier=attempt.tier,
                model=model,
                prompt_tokens=usage["prompt_tokens"],
                completion_tokens=usage["completion_tokens"],
                cost_nusd=cost_nusd(pricing, attempt.tier, model, usage),
                cloud_nusd=cloud_equivalent_nusd(pricing, usage),
                requests=1 if attempt is last else 0,
            )
        )
    return charges


def served_model(policy: Policy, attempt: AttemptRecord) -> str:
    """The ``model`` the policy names for the attempt's node; else the model the node
    reported; else the tier (a node no longer in the policy reported nothing)."""
    for node in policy.tiers[attempt.tier].nodes:
        if node.name == attempt.node:
            return node.model
    return attempt.model or attempt.tier


__all__ = ["answer_charges", "served_model"]
