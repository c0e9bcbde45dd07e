"""What the client is sent of each upstream event.

The first attempt's events pass as they came (the same bytes), but for usage: the
gateway always asks a node for it, and the client sees it only when it asked. A
continuation's events are rewritten so that the answer reads as one stream: the first
attempt's ``id`` and ``created``, no second role delta, no repeat of the text so far
(see :mod:`gateway.upstream.repeat_guard`), and usage for the whole answer.
"""

from __future__ import annotations

from gateway.upstream.answer_record import AnswerRecord
from gateway.upstream.chunks import Chunk, Event, choices_of, delta_of, dump_chunk
from gateway.upstream.repeat_guard import RepeatGuard

_NULL_USAGE = b',"usage":null}'
"""How a compact chunk (vLLM's, the edge node's) ends when it carries no usage yet."""


class ClientView:
    """Turns an answer's events into the client's, keeping the answer's text in ``record``."""

    def __init__(self, record: AnswerRecord, *, show_usage: bool) -> None:
        self.record = record
        self.show_usage = show_usage
        """Whether the client asked to see usage; it is recorded either way."""
        self._guard: RepeatGuard | None = None

    def continuing(self, *, trim_repeats: bool) -> None:
        """A continuation took over (its attempt already in the record, which is what
        :meth:`event` goes by); ``trim_repeats`` when it was asked in words (it may start
        by repeating the text so far)."""
        self._guard = RepeatGuard(self.record.content) if trim_repeats else None

    def event(self, event: Event, content: str) -> Event | None:
        """The event as the client gets it (None: nothing to send). ``content`` is the
        event's text, which joins the answer's unless it repeats it."""
        chunk = event.chunk
        record = self.record
        continued = record.continued
        if not continued and "usage" not in chunk:  # nearly every event: as it came
            if content:
                record.text.append(content)
            return event
        rewritten: Chunk | None = None
        if not continued:
            if content:
                record.text.append(content)
        else:
            rewritten = self._continued(chunk)
            if rewritten is None:
                return None
        if "usage" in chunk:  # null on every chunk but the last, from nodes such as vLLM
            if continued and chunk["usage"] is not None:
                rewritten = {**(rewritten or chunk), "usage": record.total_usage()}
            if not self.show_usage:
                kept = rewritten or chunk
                if not kept.get("choices"):
                    return None  # a usage-only chunk the client did not ask for
                if rewritten is None and event.data.endswith(_NULL_USAGE):
                    # The common case, spared a re-encoding: the node's own bytes, cut.
                    cut = event.data[: -len(_NULL_USAGE)] + b"}"
                    return Event({k: v for k, v in kept.items() if k != "usage"}, cut)
                rewritten = {k: v for k, v in kept.items() if k != "usage"}
        if rewritten is None:
            return event
        return Event(rewritten, dump_chunk(rewritten))

    def add_text(self, pieces: list[str]) -> None:
        """Text of the first attempt that is not relayed as events (a non-streamed answer
        is assembled from the record)."""
        self.record.text.extend(pieces)

    def usage_event(self) -> Event | None:
        """A usage-only chunk for the whole answer, when the client asked for usage and
        the last node never sent any (its share estimated)."""
        if not self.show_usage:
            return None
        record = self.record
        chunk: Chunk = {
            "id": record.id,
            "object": "chat.completion.chunk",
            "created": record.created,
            "model": record.model,
            "choices": [],
            "usage": record.total_usage(),
        }
        return Event(chunk, dump_chunk(chunk))

    def _continued(self, chunk: Chunk) -> Chunk | None:
        """A continuation's chunk rewritten: the client already has the role, the id
        and the text so far. None when nothing is left to send."""
        record = self.record
        rewritten: Chunk = {**chunk}
        if record.id is not None:
            rewritten["id"] = record.id
        if record.created is not None:
            rewritten["created"] = record.created
        choices: list[dict[str, object]] = []
        for choice in choices_of(chunk):
            delta = {k: v for k, v in delta_of(choice).items() if k != "role"}
            content = delta.get("content")
            if self._guard is not None and isinstance(content, str) and content:
                released = self._guard.feed(content)
                if released is None:
                    delta.pop("content")  # held back: not (yet) part of the answer
                else:
                    self._guard = None
                    delta["content"] = content = released
            elif self._guard is not None and choice.get("finish_reason"):
                self._guard = None  # it ended while repeating: nothing new to add
            if isinstance(content, str) and content and "content" in delta:
                record.text.append(content)
            if delta.get("content") == "":
                delta.pop("content")
            if delta or choice.get("finish_reason") or choice.get("logprobs"):
                choices.append({**choice, "delta": delta})
        if not choices and chunk.get("usage") is None:
            return None
        rewritten["choices"] = choices
        return rewritten


__all__ = ["ClientView"]
