"""Text-only chunks read by their bytes, without a JSON parser.

A node writes nearly every chunk of an answer the same way: the same id, created, model,
choice index, null finish reason (and null usage, once asked for it), with only the
delta's text changing. Once one such chunk has been parsed, the bytes around its text are
a :class:`TextDelta` template for the rest. A payload that starts and ends with those
bytes and holds between them a JSON string without quotes, backslashes or control
characters is that same chunk with another text: exactly what the JSON parser would
return, at a fraction of its cost (about half of a non-streamed answer's CPU went to
parsing and checking such chunks one by one). Anything else (the role chunk, the finish
reason, usage, tool calls, logprobs, a text with an escape) does not match and is parsed
in full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.upstream.chunks import Chunk, Event, parse_chunk

_NOT_PLAIN = re.compile(rb'["\\\x00-\x1f]')
"""A byte that ends a JSON string, starts an escape, or may not appear in one unescaped."""


def text_only(chunk: Chunk) -> str | None:
    """The text of a chunk that says nothing but a piece of choice 0's answer text: one
    choice, a delta with only ``content``, no finish reason, logprobs, usage or error.
    None for any other chunk, and for an empty text."""
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1 or chunk.get("usage") is not None:
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("index", 0) != 0:
        return None
    if choice.get("finish_reason") is not None or choice.get("logprobs") is not None:
        return None
    delta = choice.get("delta")
    if type(delta) is not dict or len(delta) != 1:
        return None
    text = delta.get("content")
    return text if type(text) is str and text and "error" not in chunk else None


def with_text(chunk: Chunk, text: str) -> Chunk:
    """A :func:`text_only` chunk with another text."""
    choice = chunk["choices"][0]  # type: ignore[index]
    return {**chunk, "choices": [{**choice, "delta": {"content": text}}]}


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The bytes around the text of one node's text-only chunks."""

    prefix: bytes
    """Up to and including the text's opening quote."""
    suffix: bytes
    """From the text's closing quote on."""
    chunk: Chunk
    """The chunk it was learned from: what every match says, its text aside."""

    @classmethod
    def learn(cls, event: Event, text: str) -> TextDelta | None:
        """The template of ``event``, a :func:`text_only` chunk whose text is ``text``;
        None when its bytes do not show the text plainly, once (an escaped character,
        or the same quoted string elsewhere in the chunk)."""
        data = event.data
        quoted = b'"' + text.encode() + b'"'
        at = data.find(quoted)
        if at < 0 or data.find(quoted, at + 1) >= 0:
            return None
        template = cls(data[: at + 1], data[at + len(quoted) - 1 :], event.chunk)
        if b"\\" not in data:
            # Without a backslash no string is escaped, so the text is written as it is
            # where it stands: the one place it was found is that place.
            return template
        # An escaped text might not be where the same characters stand unescaped (in the
        # model's name, say). Proof that the quotes found are the text's: with an empty
        # text between them, the bytes parse to the same chunk with an empty text.
        if parse_chunk(template.prefix + template.suffix) != with_text(event.chunk, ""):
            return None
        return template

    def texts_of(self, payloads: list[bytes], start: int) -> list[str]:
        """The texts of ``payloads`` from ``start`` on, up to the first that is not this
        template's chunk with another text (one loop for a whole buffered answer)."""
        prefix, suffix, search = self.prefix, self.suffix, _NOT_PLAIN.search
        head, tail = len(prefix), len(suffix)
        texts: list[str] = []
        for index in range(start, len(payloads)):
            data = payloads[index]
            end = len(data) - tail
            if end <= head or not data.startswith(prefix) or not data.endswith(suffix):
                break
            text = data[head:end]
            if search(text) is not None:
                break
            try:
                texts.append(text.decode())
            except UnicodeDecodeError:  # the JSON parser would refuse it too (or repair it)
                break
        return texts

    def event(self, data: bytes, text: str) -> Event:
        """The event of ``data``, whose text :meth:`texts_of` read: as parsing it gives."""
        return Event(with_text(self.chunk, text), data)


__all__ = ["TextDelta", "text_only", "with_text"]
