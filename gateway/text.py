"""Text that can be encoded as UTF-8: finding and repairing lone surrogates.

JSON may spell a UTF-16 surrogate on its own (``"\\ud800"``), and Python's ``json`` also
accepts the raw bytes of one (``ED A0 80``). Either gives a ``str`` that cannot be encoded
as UTF-8, so it breaks the first ``.encode()`` that meets it: the body sent to a node, the
turn stored in Redis, the reply to the client. Such text is stopped where it enters the
gateway: a client's is refused (:mod:`gateway.http.validation`), a node's is repaired
with U+FFFD (:func:`scrub_surrogates`), so everything past those two points is encodable.
"""

from __future__ import annotations

import re
from typing import Final

REPLACEMENT: Final = "\ufffd"

_SURROGATE = re.compile("[\ud800-\udfff]")
_MAY_HOLD_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
"""In raw JSON: an escaped surrogate (half of a valid pair, too) or the UTF-8-style bytes
of one. Neither present means the parsed text has no surrogate: no need to look."""


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a code point that UTF-8 cannot encode (U+D800 to U+DFFF).

    A decoded string holds no valid pairs (``json`` joins them), so any surrogate is lone.
    """
    return not text.isascii() and _SURROGATE.search(text) is not None


def may_hold_surrogates(data: bytes) -> bool:
    """Whether JSON ``data`` may decode to text with a lone surrogate (cheap, on bytes)."""
    return _MAY_HOLD_SURROGATE.search(data) is not None


def replace_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD."""
    return _SURROGATE.sub(REPLACEMENT, text) if has_lone_surrogate(text) else text


def scrub_surrogates(value: object) -> bool:
    """Replace every lone surrogate in the strings (and keys) of the parsed JSON ``value``
    by U+FFFD, changing its lists and objects in place; whether anything changed.

    Iterative, so a deeply nested value cannot exhaust the stack. A top-level string is
    immutable: callers pass objects or arrays.
    """
    changed = False
    stack: list[object] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, str):
                    if has_lone_surrogate(item):
                        node[index] = replace_surrogates(item)
                        changed = True
                elif isinstance(item, list | dict):
                    stack.append(item)
        elif isinstance(node, dict):
            for key in list(node):
                item = node[key]
                if isinstance(item, str):
                    if has_lone_surrogate(item):
                        node[key] = replace_surrogates(item)
                        changed = True
                elif isinstance(item, list | dict):
                    stack.append(item)
                if isinstance(key, str) and has_lone_surrogate(key):
                    node[replace_surrogates(key)] = node.pop(key)
                    changed = True
    return changed


__all__ = [
    "REPLACEMENT",
    "has_lone_surrogate",
    "may_hold_surrogates",
    "replace_surrogates",
    "scrub_surrogates",
]
