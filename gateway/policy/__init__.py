"""The routing policy: its values, its parser and the file it is read from.

The gateway's bottom layer: ``routing``, ``upstream``, ``sessions`` and ``settings`` read
these values, and this package imports none of them (``tests/test_layers.py`` checks it).
Import the modules themselves; this package imports none of them, so a module that only
reads the values never loads the YAML parser:

- ``model``: the frozen values (:class:`~.model.Policy` and its sections).
- ``fallback``: the ``fallback`` section's values and parser.
- ``capabilities``: what a node can do beyond plain chat (``supports``, rules' ``needs``).
- ``answer_budget``: the ``max_tokens`` a tier is sent when a request sets none.
- ``parse``: :func:`~.parse.parse_policy` and :func:`~.parse.load_policy` (loads YAML).
- ``reader``: typed getters over the located YAML document, errors naming key and line.
- ``file``: reading the policy file (and the weights it names) with limits.
- ``errors``: :class:`~.errors.PolicyError`.
"""
