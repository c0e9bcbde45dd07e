"""Reading a located YAML document with typed getters whose errors name the key and line.

Strict by design: unknown keys are errors (a typo would otherwise fall back to a default
silently), and every error carries the dotted key path and its line in the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar, cast

from gateway.policy.errors import PolicyError

if TYPE_CHECKING:
    # A type only: the policy's values import this module, and must not load the YAML
    # parser (gateway.upstream reads them; tests/test_layers.py checks it).
    from hybrid_common.yaml_lines import LocatedDocument

T = TypeVar("T")


class PolicyReader:
    """Walks the located document, type-checking values and rejecting unknown keys."""

    def __init__(self, doc: LocatedDocument, source: str) -> None:
        self.doc = doc
        self.source = source

    def fail(self, path: str, message: str) -> PolicyError:
        return PolicyError(message, key=path, line=self.doc.line_of(path), source=self.source)

    def mapping(self, value: object, path: str, allowed: Sequence[str]) -> Mapping[str, object]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {_kind(value)}")
        for key in value:
            if key not in allowed:
                raise self.fail(
                    join_key(path, key), f"unknown key (allowed: {', '.join(sorted(allowed))})"
                )
        return cast(Mapping[str, object], value)

    def number(
        self,
        m: Mapping[str, object],
        path: str,
        key: str,
        default: float,
        *,
        low: float = 0.0,
        high: float = float("inf"),
        integer: bool = False,
    ) -> float:
        value = m.get(key, default)
        where = join_key(path, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, f"must be a number, got {_kind(value)}")
        if integer and not isinstance(value, int):
            raise self.fail(where, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise self.fail(where, f"must be between {low:g} and {high:g}, got {value!r}")
        return value

    def integer(
        self,
        m: Mapping[str, object],
        path: str,
        key: str,
        default: int,
        *,
        low: int = 1,
        high: float = float("inf"),
    ) -> int:
        return int(self.number(m, path, key, default, low=low, high=high, integer=True))

    def boolean(self, m: Mapping[str, object], path: str, key: str, default: bool) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(join_key(path, key), f"must be true or false, got {_kind(value)}")
        return value

    def string(
        self, m: Mapping[str, object], path: str, key: str, default: str | None = None
    ) -> str:
        value = m.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(join_key(path, key), f"must be a non-empty string, got {_kind(value)}")
        return value

    def choice(
        self,
        m: Mapping[str, object],
        path: str,
        key: str,
        options: Sequence[T],
        default: T | None = None,
    ) -> T:
        value = m.get(key, default)
        if value not in options:
            allowed = ", ".join(str(o) for o in options)
            raise self.fail(join_key(path, key), f"must be one of {allowed}, got {value!r}")
        return cast(T, value)

    def listing(self, m: Mapping[str, object], path: str, key: str) -> list[object]:
        value = m.get(key, [])
        if not isinstance(value, list):
            raise self.fail(join_key(path, key), f"must be a list, got {_kind(value)}")
        return value


def join_key(path: str, key: str) -> str:
    """``path.key``, or ``key`` at the top level."""
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


__all__ = ["PolicyReader", "join_key"]
