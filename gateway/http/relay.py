"""Framing an answer's events for a streaming client (server-sent events).

What goes in each event is decided upstream of here, by
:class:`~gateway.upstream.answer_stream.AnswerStream`; this module only frames it.
"""

from __future__ import annotations

import json

from hybrid_common.protocol import ErrorBody

DONE_EVENT = b"data: [DONE]\n\n"


def sse_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def error_event(body: ErrorBody) -> bytes:
    return sse_event(json.dumps(body, separators=(",", ":")).encode())


__all__ = ["DONE_EVENT", "error_event", "sse_event"]
