"""The one error of the policy package: a policy file that cannot be used."""

from __future__ import annotations


class PolicyError(ValueError):
    """A policy file that cannot be used; names the file, key and line."""

    def __init__(self, message: str, *, key: str, line: int | None, source: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {key or '<document>'}: {message}")
        self.key = key
        self.line = line
        self.source = source


__all__ = ["PolicyError"]
