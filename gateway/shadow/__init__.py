"""Shadowing: labels for the classifier, collected from the operator's own traffic.

A sampled share of the answers the edge served is re-asked on the cloud in the
background, and the request is stored with both answers, for an operator (or a judge
model) to label and feed to ``python -m gateway train`` (``docs/shadow.md``). Off unless
the policy has a ``shadow`` section (:mod:`gateway.policy.shadow`).

- ``service``: :class:`~.service.Shadowing`, the offer, the sample and the shadow tasks.
- ``sampling``: which request ids are in the sample; whether the cloud has room.
- ``records``: what one record holds.
- ``store``, ``redis_store``, ``jsonl_store``: where records go, bounded.
- ``export``: stored records as lines to label.
- ``metrics``: ``gateway_shadow_*``.

Above ``upstream`` (it asks the cloud through the forwarder), below ``http``; it imports
neither ``routing`` nor ``http``.
"""
