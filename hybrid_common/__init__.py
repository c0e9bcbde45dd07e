"""What the gateway and the nodes both need, once: the bottom layer of all three.

Modules (each imported on its own; this package imports none of them, so a node pays only
for what it uses):

- ``protocol``: the OpenAI chat-completions wire types and :func:`~.protocol.error_body`.
- ``errors``: :class:`~.errors.OpenAIError`, the base of the gateway's and the edge
  node's error trees (an HTTP status, a stable code, an OpenAI-style body).
- ``otel``: the ``OTEL_*`` variables parsed into a :class:`~.otel.TracingConfig`, and the
  tracer provider built from it.
- ``console_tree``: the ``console-tree`` span exporter (one line per span, as a tree).
- ``yaml_lines``: bounded YAML loading that remembers each key's line.

It imports nothing from ``gateway``, ``edge_node`` or ``cloud_node``
(``tests/test_layers.py`` checks it).
"""
