"""Trimming a continuation that starts over.

Asked in words to go on from a partial answer, small models tend to repeat it first.
The guard holds the continuation's text back while it is still a prefix of the partial
answer, and releases only what is new.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RepeatGuard:
    """Holds back continuation text while it merely repeats ``partial``."""

    partial: str
    held: str = ""

    def feed(self, content: str) -> str | None:
        """Text to emit now, or None while still undecided."""
        self.held += content
        if len(self.held) < len(self.partial) and self.partial.startswith(self.held):
            return None
        if self.held.startswith(self.partial):
            return self.held[len(self.partial) :]
        return self.held


__all__ = ["RepeatGuard"]
