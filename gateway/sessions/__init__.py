"""Conversation sessions: history in Redis, merged with what clients send, fitted per tier.

Modules: ``keys`` (ids, cluster-safe keys), ``turns`` (stored JSON), ``history`` (the merge
rule), ``fitting`` (context windows), ``prompts`` (what each tier is sent: fitted messages
and the answer budget, sessions or not), ``store`` (Redis + Lua), ``spool`` (turns waiting
out an outage), ``conversation`` (one request's view), ``replay`` (the store's health and
the spool's background replay), ``service`` (all of it together, serving requests).
"""

from gateway.sessions.conversation import (
    CONTEXT_DROPPED_HEADER,
    SESSION_WARNING_HEADER,
    Conversation,
)
from gateway.sessions.keys import SESSION_HEADER
from gateway.sessions.service import SessionService, SessionView
from gateway.sessions.store import SessionStore, StoreUnavailable

__all__ = [
    "CONTEXT_DROPPED_HEADER",
    "SESSION_HEADER",
    "SESSION_WARNING_HEADER",
    "Conversation",
    "SessionService",
    "SessionStore",
    "SessionView",
    "StoreUnavailable",
]
