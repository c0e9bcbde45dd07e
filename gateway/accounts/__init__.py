"""API keys with limits and budgets, and what each answer cost (docs/keys-and-budgets.md).

Keys: ``model`` (the record), ``fields`` (checks of what an operator sets), ``codec`` (the
stored JSON and the admin API's views), ``store`` (keys in Redis, hashed) and ``directory``
(the per-replica lookup, cached for at most half a second); ``tiers`` keeps a key to the
tiers it may use.

Limits and money: ``layout`` names the Redis keys; ``limiter`` (``admit.lua``) admits a
request against its key's requests and tokens per minute and budget in one atomic call,
so every replica sees the same counts; ``pricing`` turns usage into money; ``charges``
reads an answer's attempts into charges; ``ledger`` (``settle.lua``) settles them in
batches, kept and resent while Redis is away; ``service`` ties these to a request;
``usage`` reads the ledger back for ``/v1/usage`` and ``python -m gateway usage``;
``metrics`` counts it all by key name (never the key).
"""
