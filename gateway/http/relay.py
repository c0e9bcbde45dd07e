"""Relaying an upstream event stream to the client, one event at a time, while noting
what the gateway needs to know: finish reason, usage, the answering model, the text."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from gateway.protocol import ErrorBody, Usage
from gateway.upstream.sse import DONE

log = logging.getLogger("gateway.relay")

DONE_EVENT = b"data: [DONE]\n\n"


def sse_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def error_event(body: ErrorBody) -> bytes:
    return sse_event(json.dumps(body, separators=(",", ":")).encode())


@dataclass(slots=True)
class StreamRelay:
    """Turns upstream ``data`` payloads into bytes for the client.

    The gateway always asks the upstream for usage (for its own accounting); when the
    client did not, the usage-only chunk is consumed here and never forwarded.
    """

    client_wants_usage: bool
    done: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    malformed: int = 0
    text: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """The answer ended normally (a finish reason arrived), with or without [DONE]."""
        return self.finish_reason is not None

    def process(self, data: bytes) -> bytes | None:
        if data == DONE:
            self.done = True
            return DONE_EVENT
        try:
            chunk = json.loads(data)
        except ValueError:
            # A garbled event carries nothing the client could use; keep the stream going.
            self.malformed += 1
            log.warning("skipping a malformed upstream event (%d bytes)", len(data))
            return None
        if not isinstance(chunk, dict):
            self.malformed += 1
            return None
        if self.model is None and isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage  # type: ignore[assignment]
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta")
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    self.text.append(delta["content"])
                if choice.get("finish_reason"):
                    self.finish_reason = str(choice["finish_reason"])
        if not self.client_wants_usage and "usage" in chunk:
            if not choices:
                return None  # the usage-only chunk the client did not ask for
            del chunk["usage"]
            return sse_event(json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode())
        return sse_event(data)
