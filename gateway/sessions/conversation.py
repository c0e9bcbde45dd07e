"""One request's view of its session: the merged conversation, its headers, its record.

What each tier is sent of the conversation (fitted into its window) is
:class:`~gateway.sessions.prompts.TierPrompts`'s."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal

from gateway.policy.model import Policy
from gateway.sessions.history import Merged
from gateway.sessions.keys import SessionRef
from hybrid_common.protocol import ChatCompletionRequest, ChatMessage, Tier

SESSION_WARNING_HEADER: Final = "x-gateway-session-warning"
CONTEXT_DROPPED_HEADER: Final = "x-gateway-context-dropped"

SessionWarning = Literal["sessions-disabled", "store-unavailable"]

Recorder = Callable[["Conversation", ChatMessage, Tier, str | None], Awaitable[None]]


@dataclass(slots=True, kw_only=True)
class Conversation:
    """Built by :meth:`SessionService.open`; the chat handler asks it for bodies and headers
    and hands it the reply once the answer is complete."""

    session: SessionRef
    request_id: str
    digest: str
    """:func:`~gateway.sessions.turns.content_digest` of the client's messages."""
    generation: int
    """The session's deletion generation when it was loaded (the store refuses the append
    if the session was deleted since); ``UNKNOWN_GENERATION`` when it could not be read."""
    merged: Merged
    policy: Policy
    """The policy snapshot of this request (tiers' windows, sessions settings)."""
    warning: SessionWarning | None
    recorder: Recorder | None
    """None when nothing can be stored (sessions disabled)."""
    on_dropped: Callable[[Tier, int], None] = lambda tier, dropped: None

    @property
    def session_id(self) -> str:
        """The id the client chose (its owner aside)."""
        return self.session.session_id

    def request_body(self, chat: ChatCompletionRequest) -> ChatCompletionRequest:
        """The client's body with the merged conversation as its messages."""
        return {**chat, "messages": self.merged.messages}

    def response_headers(self, tier: Tier, *, dropped: int) -> dict[str, str]:
        """Headers for the answer ``tier`` gave, which was sent all but ``dropped`` turns of
        the conversation; call once per response (it counts drops)."""
        if dropped:
            self.on_dropped(tier, dropped)
        headers = {CONTEXT_DROPPED_HEADER: str(dropped)}
        if self.warning is not None:
            headers[SESSION_WARNING_HEADER] = self.warning
        return headers

    async def record_completion(self, body: dict[str, object] | None, tier: Tier) -> None:
        """Store the turn from a non-streamed answer's parsed body (nothing if it has no
        finished reply)."""
        reply, model = reply_of_completion(body)
        if reply is not None:
            await self.record_reply(reply, tier, model)

    async def record_stream(self, text: str, tier: Tier, model: str | None) -> None:
        """Store the turn from a streamed answer's text (its record's)."""
        await self.record_reply({"role": "assistant", "content": text}, tier, model)

    async def record_reply(self, reply: ChatMessage, tier: Tier, model: str | None) -> None:
        if self.recorder is not None:
            await self.recorder(self, reply, tier, model)


def reply_of_completion(
    parsed: dict[str, object] | None,
) -> tuple[ChatMessage | None, str | None]:
    """The assistant message of a chat.completion body and the model that wrote it."""
    if parsed is None:
        return None, None
    named = parsed.get("model")
    model = named if isinstance(named, str) else None
    choices = parsed.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, model
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return None, model
    reply: ChatMessage = {"role": "assistant", "content": message.get("content")}
    if isinstance(message.get("tool_calls"), list) and message["tool_calls"]:
        reply["tool_calls"] = message["tool_calls"]
    elif not isinstance(reply["content"], str):
        reply["content"] = ""
    return reply, model
