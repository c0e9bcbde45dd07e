"""The merge rule for stored turns and client messages, table-driven (pure, no I/O)."""

from __future__ import annotations

import pytest

from gateway.sessions.history import merge


def u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "be brief"}
STORED = [u("u1"), a("a1"), u("u2"), a("a2")]


def names(messages) -> list[str]:
    return [str(m["content"]) for m in messages]


def conv(text: str) -> list[dict[str, str]]:
    """``"u1 a1 u2"``: one message per word, role from its first letter (u or a)."""
    return [u(w) if w[0] == "u" else a(w) for w in text.split()]


S = "u1 a1 u2 a2"  # the stored history of most cases
S3 = "u1 a1 u2 a2 u3"


@pytest.mark.parametrize(
    ("stored", "client", "sent", "new", "replace"),
    [
        pytest.param("", "u1", "u1", "u1", False, id="new session"),
        pytest.param(S, "u3", S3, "u3", False, id="session client sends the new message"),
        pytest.param(S, S3, S3, "u3", False, id="client resends the whole history"),
        pytest.param("u2 a2", S3, S3, "u3", False, id="client history longer than the store"),
        pytest.param(S, "u2 a2 u3", S3, "u3", False, id="client sends a window"),
        pytest.param(S, "a2 u3", S3, "u3", False, id="overlap of just the last reply"),
        pytest.param(S, "u1 a1 u2'", "u1 a1 u2'", "u1 a1 u2'", True, id="regenerate: client wins"),
        pytest.param(S, "ux ay uz", "ux ay uz", "ux ay uz", True, id="unrelated history wins"),
        pytest.param(
            "", "ux ay uz", "ux ay uz", "ux ay uz", False, id="history into empty session"
        ),
        pytest.param(S, "u1", "u1 a1 u2 a2 u1", "u1", False, id="a repeat is a new turn"),
        pytest.param(S, "u3 u4", "u1 a1 u2 a2 u3 u4", "u3 u4", False, id="two new messages"),
    ],
)
def test_merge_rule(stored, client, sent, new, replace) -> None:
    merged = merge(conv(stored), conv(client))
    assert names(merged.messages) == sent.split()
    assert names(merged.new) == new.split()
    assert merged.replace is replace


def test_system_prompt_goes_first_and_is_not_new() -> None:
    merged = merge(STORED, [SYSTEM, u("u3")])
    assert merged.messages[0] == SYSTEM
    assert names(merged.messages[1:]) == ["u1", "a1", "u2", "a2", "u3"]
    assert names(merged.new) == ["u3"]
    assert merged.stored_used == 4


def test_system_prompt_with_resent_history() -> None:
    merged = merge(STORED, [SYSTEM, *STORED, u("u3")])
    assert merged.messages == [SYSTEM, *STORED, u("u3")]
    assert names(merged.new) == ["u3"]
    assert merged.stored_used == 0


def test_text_parts_and_strings_are_the_same_turn() -> None:
    parts = {"role": "user", "content": [{"type": "text", "text": "u1"}]}
    merged = merge(STORED, [parts, a("a1"), u("u2"), a("a2"), u("u3")])
    assert names(merged.new) == ["u3"]
    assert not merged.replace


def test_unknown_store_never_replaces_and_stores_only_the_tail() -> None:
    # Redis could not be read: the client's history is used as is, and only what follows
    # its last assistant turn is new (the store may well hold the rest already).
    merged = merge([], [u("u1"), a("a1"), u("u2")], known=False)
    assert names(merged.messages) == ["u1", "a1", "u2"]
    assert names(merged.new) == ["u2"]
    assert not merged.replace


def test_unknown_store_with_local_pending_turns_puts_them_in_front() -> None:
    merged = merge([u("p1"), a("p2")], [u("u3")], known=False)
    assert names(merged.messages) == ["p1", "p2", "u3"]
    assert names(merged.new) == ["u3"]
