"""Session ids, who owns a session, and the Redis keys they map to.

A session belongs to its caller. With ``GATEWAY_API_KEYS`` set, the key a request was
authenticated with names the session's owner: :func:`owner_of_key`, a keyed hash of it
(never the key itself), becomes part of every Redis key of the session, so the same
``x-session-id`` sent with another key is another session. Without API keys there is one
namespace (owner None): whoever reaches the gateway shares it, and the keys keep the
layout they had before owners existed.

Every key of one session carries the owner and the session id as a Redis Cluster hash tag
(the part in braces), so all of a session's keys live in one slot: the append script
touches the turn list, the request's idempotency marker and the deletion generation
together, and that is legal on a cluster only because they hash to the same slot. Ids are
restricted to ``[A-Za-z0-9._:-]`` and owners are hex, so neither can contain a brace and
break out of its tag, nor a ``/``, which separates them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final

from gateway.errors import InvalidRequest

SESSION_HEADER: Final = "x-session-id"
MAX_SESSION_ID_CHARS: Final = 128
_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PREFIX: Final = "gw"
_OWNER_LABEL: Final = b"gateway.sessions.owner.v1"
"""HMAC key of :func:`owner_of_key`: a fixed label (domain separation), not a secret."""
OWNER_HEX_CHARS: Final = 32


def is_valid_session_id(value: str) -> bool:
    return _SESSION_ID.fullmatch(value) is not None


def check_session_id(value: str, *, param: str) -> str:
    """``value`` if it is a usable session id; :class:`InvalidRequest` naming ``param`` if not."""
    if not is_valid_session_id(value):
        raise InvalidRequest(
            f"{param} must be 1 to {MAX_SESSION_ID_CHARS} characters from A-Z, a-z, 0-9 "
            f"and . _ : - (got {len(value)} characters).",
            param=param,
        )
    return value


def owner_of_key(api_key: str) -> str:
    """The owner of the sessions created with ``api_key``: 128 bits of HMAC-SHA256, hex.

    The HMAC key is a fixed public label (it separates this use from others), so this is
    in effect an unkeyed hash: stable across replicas and restarts, and one way, so Redis
    key names never reveal an API key, but a guessable key could be confirmed from one.
    """
    digest = hmac.new(_OWNER_LABEL, api_key.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return digest.hexdigest()[:OWNER_HEX_CHARS]


@dataclass(frozen=True, slots=True)
class SessionRef:
    """One session: the id its client chose, in the namespace of its owner."""

    session_id: str
    owner: str | None = None
    """:func:`owner_of_key` of the caller's API key; None without API keys (one namespace)."""

    @property
    def tag(self) -> str:
        """The Redis Cluster hash tag of the session's keys (without the braces)."""
        return self.session_id if self.owner is None else f"{self.owner}/{self.session_id}"

    @property
    def log_id(self) -> str:
        """A short hash that names the session in logs without its id or owner."""
        return hashlib.sha256(self.tag.encode()).hexdigest()[:12]


def turns_key(session: SessionRef) -> str:
    """The list of a session's turns, oldest first."""
    return f"{_PREFIX}:{{{session.tag}}}:turns"


def request_key(session: SessionRef, request_id: str, digest: str | None) -> str:
    """Marks that one request's turns, with this content digest, were appended.

    ``digest`` None is the marker of turns stored before digests existed.
    """
    if digest is None:
        return f"{_PREFIX}:{{{session.tag}}}:req:{request_id}"
    return f"{_PREFIX}:{{{session.tag}}}:req:{digest}:{request_id}"


def generation_key(session: SessionRef) -> str:
    """The session's deletion generation (its tombstone): see :mod:`gateway.sessions.store`."""
    return f"{_PREFIX}:{{{session.tag}}}:gen"
