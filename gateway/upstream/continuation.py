"""One answer, streamed from one or more upstream attempts.

Once the client has seen part of an answer the gateway cannot start over, but it can
finish it elsewhere. :class:`Answer` relays the first attempt's events; when that
stream breaks (cut without a finish reason, stalled past the idle deadline, a garbled
or error event), it asks another node (the same tier first, then the other) to go on
from the partial text, and relays the rest as if nothing happened:

- **prefill** (tiers in ``fallback.continuation.prefill_tiers``; vLLM): the conversation
  plus a final assistant message holding the partial text, with
  ``continue_final_message: true, add_generation_prompt: false``: the model writes the
  next tokens of that very message.
- **prompt** (every other server, and any node that rejected a prefill with a 4xx): the
  partial text as an assistant turn and a user turn asking to continue exactly where it
  stops. Small models tend to start over, so a continuation that repeats the partial
  text is trimmed to what is new.

Continuation chunks keep the first stream's ``id`` and ``created``; their ``model``
names the model that wrote them. The final usage chunk adds up every attempt (an
attempt that broke before reporting usage is estimated). When no continuation is
possible the answer ends with an error (an in-stream error event for streams), never
with a finish reason or ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Literal

from gateway.errors import (
    GatewayError,
    NoCapacity,
    UpstreamClientError,
    UpstreamError,
    UpstreamIncomplete,
    UpstreamTimeout,
)
from gateway.protocol import ChatCompletionRequest, ChatMessage, Tier, Usage
from gateway.routing.policy import Policy
from gateway.routing.tokens import count_tokens
from gateway.telemetry import AttemptSpan
from gateway.upstream.chunks import (
    AnswerState,
    Chunk,
    add_usage,
    choices_of,
    delta_of,
    parse_event,
)
from gateway.upstream.client import UpstreamStream
from gateway.upstream.forward import CONTEXT_LENGTH_EXCEEDED, AttemptPlan, Failure, Forwarder
from gateway.upstream.pool import Lease, Node
from gateway.upstream.sse import DONE

log = logging.getLogger("gateway.continuation")

ContinuationForm = Literal["prefill", "prompt"]

CONTINUE_PROMPT = (
    "Your previous answer was cut off. Continue it exactly where it stops: do not repeat "
    "any of it, add no preamble, just write the rest."
)
MESSAGE_OVERHEAD_TOKENS = 4
"""Template tokens per message, for estimating the prompt of an attempt that broke."""


def continuation_body(
    body: ChatCompletionRequest, partial: str, form: ContinuationForm, *, tokens_used: int
) -> ChatCompletionRequest:
    """The request that asks a node for the rest of ``partial``."""
    messages: list[ChatMessage] = [*body.get("messages", [])]
    messages.append({"role": "assistant", "content": partial})
    out: ChatCompletionRequest = {**body, "messages": messages}
    extra: dict[str, object] = {}
    if form == "prefill":
        extra = {"continue_final_message": True, "add_generation_prompt": False}
    else:
        messages.append({"role": "user", "content": CONTINUE_PROMPT})
    for key in ("max_tokens", "max_completion_tokens"):
        limit = body.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            # What is left of the client's budget; at least one token, so the node can
            # still produce its finish reason.
            out[key] = max(1, limit - tokens_used)
    return {**out, **extra}  # type: ignore[typeddict-item]


def estimate_prompt_tokens(messages: list[ChatMessage]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += count_tokens(content)
        elif isinstance(content, list):
            total += sum(count_tokens(p.get("text", "")) for p in content if isinstance(p, dict))
        total += MESSAGE_OVERHEAD_TOKENS
    return total


@dataclass(slots=True, kw_only=True)
class Segment:
    """One upstream attempt's share of the answer."""

    tier: Tier
    node: str
    form: ContinuationForm | None
    """None for the first attempt."""
    state: AnswerState = field(default_factory=AnswerState)
    usage: Usage | None = None
    usage_estimated: bool = False
    broke: str | None = None
    """Why this attempt ended early (stream_cut, stream_stalled, ...), if it did."""


@dataclass(slots=True)
class _RepeatGuard:
    """Holds back continuation text while it merely repeats the partial answer."""

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


class Answer:
    """Client-bound ``data`` payloads of one answer; ``[DONE]`` only when it is complete.

    Call :meth:`next` until it returns None, then read :attr:`error`: None means the
    answer is complete; otherwise it is the error to report (the answer broke off and
    could not be continued). Always call :meth:`close`.
    """

    def __init__(
        self,
        *,
        forwarder: Forwarder,
        policy: Policy,
        plan: AttemptPlan,
        lease: Lease,
        upstream: UpstreamStream,
        deadline: float,
    ) -> None:
        self.forwarder = forwarder
        self.policy = policy
        self.plan = plan
        self.deadline = deadline
        self.lease: Lease | None = lease
        self.node: Node = lease.node
        self._upstream: UpstreamStream | None = upstream
        self._head = collections.deque(upstream.head)
        self.segments = [Segment(tier=lease.node.tier, node=lease.node.name, form=None)]
        self.error: GatewayError | None = None
        self._pending: collections.deque[bytes] = collections.deque()
        self._ended = False
        self._text: list[str] = []
        self._id: str | None = None
        self._created: int | None = None
        self._usage_sent = False
        self._guard: _RepeatGuard | None = None
        self._broken_nodes: set[str] = set()

    @classmethod
    async def open(
        cls, forwarder: Forwarder, policy: Policy, plan: AttemptPlan, *, deadline: float
    ) -> Answer:
        """Start the answer: fallback before the first token happens here."""
        lease, upstream = await forwarder.stream(policy, plan, deadline=deadline)
        return cls(
            forwarder=forwarder,
            policy=policy,
            plan=plan,
            lease=lease,
            upstream=upstream,
            deadline=deadline,
        )

    @property
    def continued(self) -> bool:
        return len(self.segments) > 1

    @property
    def model(self) -> str | None:
        """The model that wrote the end of the answer (the last one that wrote anything)."""
        for segment in reversed(self.segments):
            if segment.state.model is not None:
                return segment.state.model
        return None

    def total_usage(self) -> Usage | None:
        total: Usage | None = None
        for segment in self.segments:
            total = add_usage(total, segment.usage)
        return total

    def usage_by_tier(self) -> list[tuple[Tier, Usage]]:
        """Each attempt's tokens under the tier that spent them (estimated where unreported)."""
        return [(s.tier, s.usage) for s in self.segments if s.usage is not None]

    def detach_lease(self) -> Lease:
        """Close the upstream but keep (and hand over) the answering node's slot."""
        lease = self.lease
        assert lease is not None, "the answer has no node: it failed"
        self.lease = None
        self.close()
        return lease

    async def next(self) -> bytes | None:
        """The next payload for the client; None when the answer ended (see :attr:`error`)."""
        while not self._pending:
            if self._ended:
                return None
            await self._pull()
        return self._pending.popleft()

    def close(self) -> None:
        """Release the current upstream; safe to call more than once."""
        if self._upstream is not None:
            # Still open here means nobody finished it: the client left, or the answer
            # was given up. An attempt that ended already ignores this.
            self._upstream.attempt.fail("cancelled")
            self._upstream.close()
            self._upstream = None
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    # -- reading -------------------------------------------------------------------

    async def _pull(self) -> None:
        segment = self.segments[-1]
        try:
            data = await self._read()
        except UpstreamError as exc:
            await self._broken(
                "stream_stalled" if isinstance(exc, UpstreamTimeout) else "stream_cut", exc
            )
            return
        except TimeoutError:
            self._fail_without_continuation(
                "deadline",
                UpstreamTimeout(
                    "The answer did not complete within the gateway's total deadline "
                    f"({self.policy.fallback.timeouts.total_s:g} s)."
                ),
            )
            return
        if data is None or data == DONE:
            if segment.state.finished:
                self._finish()
            else:
                await self._broken("stream_cut", None)
            return
        event = parse_event(data)
        if event is None:
            # A garbled event may have carried text; the answer can't be trusted past it.
            await self._broken("stream_malformed", None)
            return
        chunk, data = event  # data: repaired when the node sent text UTF-8 cannot encode
        if "error" in chunk and not choices_of(chunk):
            await self._broken("stream_error", None)
            return
        segment.state.observe(chunk)
        out = self._rewrite(chunk, data)
        if out is not None:
            self._pending.append(out)
        if segment.state.finished and segment.state.usage is not None:
            self._finish()  # all an answer has; no need to wait for [DONE]

    async def _read(self) -> bytes | None:
        if self._head:
            return self._head.popleft()
        assert self._upstream is not None
        async with asyncio.timeout_at(self.deadline):
            return await anext(self._upstream.rest, None)

    def _rewrite(self, chunk: Chunk, data: bytes) -> bytes | None:
        """The chunk as the client gets it: one id throughout, one role delta, no repeats."""
        if self._id is None:
            chunk_id, created = chunk.get("id"), chunk.get("created")
            self._id = chunk_id if isinstance(chunk_id, str) else None
            self._created = created if isinstance(created, int) else None
        for choice in choices_of(chunk):
            content = delta_of(choice).get("content")
            if isinstance(content, str):
                self._text.append(content)
        usage_present = chunk.get("usage") is not None
        if usage_present:
            self._usage_sent = True
        if not self.continued:
            return data
        # A continuation: the client already has the role, the id and the text so far.
        rewritten: Chunk = {**chunk}
        if self._id is not None:
            rewritten["id"] = self._id
        if self._created is not None:
            rewritten["created"] = self._created
        choices: list[dict[str, object]] = []
        for choice in choices_of(chunk):
            delta = {k: v for k, v in delta_of(choice).items() if k != "role"}
            content = delta.get("content")
            if self._guard is not None and isinstance(content, str) and content:
                released = self._guard.feed(content)
                if released is None:
                    self._text.pop()  # held back: not (yet) part of the answer
                    delta.pop("content")
                else:
                    self._text[-1] = released
                    self._guard = None
                    delta["content"] = released
            elif self._guard is not None and choice.get("finish_reason"):
                self._guard = None  # it ended while repeating: nothing new to add
            if delta.get("content") == "":
                delta.pop("content")
            if delta or choice.get("finish_reason") or choice.get("logprobs"):
                choices.append({**choice, "delta": delta})
        if not choices and not usage_present:
            return None
        rewritten["choices"] = choices
        if usage_present:
            self.segments[-1].usage = self.segments[-1].state.usage
            rewritten["usage"] = self.total_usage()
        return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode()

    def _finish(self) -> None:
        segment = self.segments[-1]
        segment.usage = segment.state.usage
        if self.continued and not self._usage_sent:
            # The last node reported no usage; the client still gets the whole answer's.
            usage = self._estimate_missing_usage()
            if usage is not None:
                chunk: Chunk = {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage,
                }
                self._pending.append(json.dumps(chunk, separators=(",", ":")).encode())
        self._pending.append(DONE)
        self._ended = True
        if self._upstream is not None:
            self._trace_segment(segment, self._upstream.attempt)
            self._upstream.attempt.end()

    @staticmethod
    def _trace_segment(segment: Segment, attempt: AttemptSpan) -> None:
        """What this attempt produced, on its span."""
        if not attempt.recording:
            return
        state = segment.state
        attempt.response(
            model=state.model,
            response_id=state.id,
            finish_reasons=[state.finish_reason] if state.finish_reason else [],
            usage=segment.usage,
            usage_estimated=segment.usage_estimated,
            output_text="".join(state.text),
        )

    def _estimate_missing_usage(self) -> Usage | None:
        segment = self.segments[-1]
        if segment.usage is None:
            segment.usage = self._estimated_usage(segment)
            segment.usage_estimated = True
        return self.total_usage()

    def _estimated_usage(self, segment: Segment) -> Usage:
        prompt = estimate_prompt_tokens(self.plan.body.get("messages", []))
        if segment.form is not None:
            prompt += count_tokens("".join(self._text)) + MESSAGE_OVERHEAD_TOKENS
        completion = segment.state.output_chunks
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    # -- breaking and continuing --------------------------------------------------------

    async def _broken(self, reason: str, exc: UpstreamError | None) -> None:
        segment = self.segments[-1]
        if segment.state.finished:
            # The answer was whole; only the tail ([DONE], usage) went missing.
            self._finish()
            return
        node = self.node
        log.warning(
            "%s node %s broke mid-answer (%s)%s",
            node.tier,
            node.name,
            reason,
            f": {exc.message}" if exc is not None else "",
        )
        node.breaker.record_failure()
        self.forwarder.metrics.attempts.labels(node.tier, node.name, reason).inc()
        self._drop_upstream(segment, reason)
        why = self._why_not_continue()
        if why is not None:
            self._fail_without_continuation(
                reason, UpstreamIncomplete(self._truncated_message(node, reason, why))
            )
            return
        try:
            await self._continue(node, reason)
        except (UpstreamError, NoCapacity, UpstreamClientError) as exc2:
            detail = exc2.message
            self._fail_without_continuation(
                reason,
                UpstreamIncomplete(
                    self._truncated_message(node, reason, f"no node could continue it ({detail})")
                ),
            )

    def _drop_upstream(self, segment: Segment, reason: str) -> None:
        segment.broke = reason
        if segment.state.usage is not None:
            segment.usage = segment.state.usage
        else:
            segment.usage = self._estimated_usage(segment)
            segment.usage_estimated = True
        if self._upstream is not None:
            self._trace_segment(segment, self._upstream.attempt)
            self._upstream.attempt.fail(reason)
        self._broken_nodes.add(self.node.name)
        self.plan.failures.append(Failure(tier=self.node.tier, node=self.node.name, reason=reason))
        self.close()

    def _why_not_continue(self) -> str | None:
        spec = self.policy.fallback.continuation
        if not spec.enabled:
            return "continuation is disabled by the policy"
        if len(self.segments) > spec.max_continuations:
            return f"it was already continued {spec.max_continuations} times"
        if any(
            s.state.tool_calls or s.state.other_choices or s.state.other_output
            for s in self.segments
        ):
            return "it holds tool calls, reasoning or several choices, which text cannot carry on"
        if self.plan.body.get("n") not in (None, 1):
            return "n > 1"
        if not "".join(self._text):
            return "it has no text to continue from"
        if self.deadline - asyncio.get_running_loop().time() <= 0:
            return "the request's deadline has passed"
        return None

    async def _continue(self, broken: Node, reason: str) -> None:
        spec = self.policy.fallback.continuation
        partial = "".join(self._text)
        used = sum(s.state.output_chunks for s in self.segments)
        plans = {
            form: dataclasses.replace(
                self.plan,
                tier=broken.tier,  # same tier first: same model family, most coherent
                body=continuation_body(self.plan.body, partial, form, tokens_used=used),
            )
            for form in ("prefill", "prompt")
        }
        asked: list[tuple[Node, ContinuationForm]] = []

        def body_for(node: Node) -> bytes:
            form: ContinuationForm = (
                "prefill"
                if node.tier in spec.prefill_tiers
                and node.name not in self.forwarder.prefill_rejected
                else "prompt"
            )
            asked.append((node, form))
            return plans[form].encode_for(node)

        while True:
            try:
                lease, upstream = await self.forwarder.stream(
                    self.policy,
                    plans["prompt"],
                    deadline=self.deadline,
                    exclude=frozenset(self._broken_nodes),
                    body_for=body_for,
                    continuation=True,
                )
            except UpstreamClientError as exc:
                node, form = asked[-1]
                if form != "prefill" or exc.upstream_body["error"].get("code") == (
                    CONTEXT_LENGTH_EXCEEDED
                ):
                    raise  # not about the prefill: the text itself does not fit
                # This server can't continue a message: remember, and ask it in words.
                log.info("%s node %s rejected a prefill continuation", node.tier, node.name)
                self.forwarder.prefill_rejected.add(node.name)
                self._count(broken, node, "prefill", "rejected")
                continue
            break
        node, form = asked[-1]
        self._count(broken, node, form, "ok")
        upstream.attempt.set("gateway.continuation.form", form)
        upstream.attempt.set("gateway.continuation.of", broken.name)
        self.lease, self._upstream, self.node = lease, upstream, lease.node
        self._head = collections.deque(upstream.head)
        self.segments.append(Segment(tier=node.tier, node=node.name, form=form))
        self._guard = _RepeatGuard(partial) if form == "prompt" else None
        log.info(
            "continuing an answer of %s (%s) on %s node %s by %s",
            broken.name,
            reason,
            node.tier,
            node.name,
            form,
        )

    def _count(self, broken: Node, node: Node, form: str, result: str) -> None:
        self.forwarder.metrics.continuations.labels(broken.tier, node.tier, form, result).inc()

    def _fail_without_continuation(self, reason: str, error: GatewayError) -> None:
        if reason == "deadline":
            self.segments[-1].broke = reason
            if self._upstream is not None:
                self._upstream.attempt.fail("deadline")
            self.close()
        self.error = error
        self._ended = True

    @staticmethod
    def _truncated_message(node: Node, reason: str, why: str) -> str:
        return (
            f"The answer broke off: the {node.tier} node {node.name} stopped mid-answer "
            f"({reason}) and {why}. The text received so far is incomplete."
        )


__all__ = ["CONTINUE_PROMPT", "Answer", "ContinuationForm", "Segment", "continuation_body"]
