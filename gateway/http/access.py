"""What the access line says about a chat request: the routing decision, the fallback,
tokens, time to first token and the session (hashed), as the handler left them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from gateway.upstream.forward import Failure
from hybrid_common.protocol import Usage

_quote = json.JSONEncoder(ensure_ascii=False).encode
"""``json.dumps(text, ensure_ascii=False)`` without building an encoder per call."""

SESSION_HASH_HEX = 16
"""Hex digits of SHA-256 kept in ``session_hash``: 64 bits, unique enough to follow one
session through the logs, and not the id itself (which may be a user's name)."""


def session_hash(session_id: str) -> str:
    """The first 16 hex digits of the plain (unkeyed) SHA-256 of the session id as the
    client sent it: an operator finds a user's lines by hashing the id they were given."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[
        :SESSION_HASH_HEX
    ]


@dataclass(slots=True, kw_only=True)
class ChatAccess:
    """One chat request's part of its access line, filled in by the handler as it goes."""

    route_tier: str
    route_reason: str
    complexity_score: float
    fallback: Sequence[Failure] = ()
    """The answer record's attempt log (failed attempts and skipped nodes, in order),
    read when the line is written: it holds what happened after this was made too."""
    session_hash: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    time_to_first_token_s: float | None = None

    def add_usage(self, usage: Usage | None) -> None:
        """Count one part of a served answer (a continued answer has several)."""
        if not usage:
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.tokens_in = (self.tokens_in or 0) + prompt
        if isinstance(completion, int):
            self.tokens_out = (self.tokens_out or 0) + completion


CHAT_ACCESS: web.RequestKey[ChatAccess] = web.RequestKey("chat_access", ChatAccess)
"""Set by the chat handler once the request is routed; read by the access logger."""


def access_fields(chat: ChatAccess | None) -> tuple[str, dict[str, object]]:
    """The access line's words after ``tier/node`` and its structured fields for ``chat``
    (every field present, null when the request never got that far)."""
    if chat is None:
        return "", {
            "route_tier": None,
            "route_reason": None,
            "complexity_score": None,
            "fallback": [],
            "tokens_in": None,
            "tokens_out": None,
            "time_to_first_token_ms": None,
            "session_hash": None,
        }
    fallback = [f"{f.node}:{f.reason}" for f in chat.fallback]
    ttft_ms = (
        round(chat.time_to_first_token_s * 1000, 3)
        if chat.time_to_first_token_s is not None
        else None
    )
    words = [
        f"route={chat.route_tier}",
        f"reason={_quote(chat.route_reason)}",
        f"score={chat.complexity_score:.4f}",
    ]
    if fallback:
        words.append("fallback=" + ",".join(fallback))
    if chat.tokens_in is not None or chat.tokens_out is not None:
        words.append(f"tokens={_count(chat.tokens_in)}/{_count(chat.tokens_out)}")
    if ttft_ms is not None:
        words.append(f"ttft={ttft_ms:.1f}ms")
    if chat.session_hash is not None:
        words.append(f"session={chat.session_hash}")
    return " " + " ".join(words), {
        "route_tier": chat.route_tier,
        "route_reason": chat.route_reason,
        "complexity_score": chat.complexity_score,
        "fallback": fallback,
        "tokens_in": chat.tokens_in,
        "tokens_out": chat.tokens_out,
        "time_to_first_token_ms": ttft_ms,
        "session_hash": chat.session_hash,
    }


def _count(tokens: int | None) -> str:
    return "?" if tokens is None else str(tokens)


__all__ = ["CHAT_ACCESS", "ChatAccess", "access_fields", "session_hash"]
