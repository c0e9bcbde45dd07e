"""Session ids and the Redis keys they map to.

Every key of one session carries the session id as a Redis Cluster hash tag (the part in
braces), so all of a session's keys live in one slot: the append script touches the turn
list and the request's idempotency marker together, and that is legal on a cluster only
because both hash to the same slot. Ids are restricted to ``[A-Za-z0-9._:-]``, so an id can
never contain a brace and break out of its tag.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.errors import InvalidRequest

SESSION_HEADER: Final = "x-session-id"
MAX_SESSION_ID_CHARS: Final = 128
_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PREFIX: Final = "gw"


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


def turns_key(session_id: str) -> str:
    """The list of a session's turns, oldest first."""
    return f"{_PREFIX}:{{{session_id}}}:turns"


def request_key(session_id: str, request_id: str) -> str:
    """Marks that one request's turns were appended (same slot as the turns)."""
    return f"{_PREFIX}:{{{session_id}}}:req:{request_id}"
