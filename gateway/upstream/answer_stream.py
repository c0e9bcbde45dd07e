"""One answer, read from one or more upstream attempts, as the client gets it.

:class:`AnswerStream` relays the first attempt's events. When that stream breaks (cut
without a finish reason, stalled past the idle deadline, a garbled or error event), it
has another node go on from the partial text (:mod:`gateway.upstream.continuation`) and
relays the rest as if nothing happened: continuation chunks keep the first stream's
``id`` and ``created``, lose the repeated role delta and any repeat of the text; their
``model`` names the model that wrote them. The usage the client sees adds up every
attempt (one that broke before reporting usage is estimated). When no continuation is
possible the answer ends with an error, never with a finish reason.

Each event is parsed once (:func:`~gateway.upstream.chunks.parse_event`) and noted in
the answer's :class:`~gateway.upstream.answer_record.AnswerRecord`.
"""

from __future__ import annotations

import collections
import logging

from gateway.errors import (
    GatewayError,
    NoCapacity,
    UpstreamClientError,
    UpstreamError,
    UpstreamIncomplete,
    UpstreamTimeout,
)
from gateway.policy.model import Policy
from gateway.telemetry import AttemptSpan
from gateway.upstream.answer_record import AnswerRecord, AttemptRecord
from gateway.upstream.chunks import Event, choices_of, parse_event
from gateway.upstream.client import UpstreamStream
from gateway.upstream.client_view import ClientView
from gateway.upstream.continuation import continue_elsewhere, why_not_continue
from gateway.upstream.forward import AttemptPlan, Failure, Forwarder
from gateway.upstream.pool import Lease, Node
from gateway.upstream.sse import DONE, DeadlineReached
from gateway.upstream.text_deltas import TextDelta, text_only
from gateway.upstream.usage_estimate import estimate_usage

log = logging.getLogger("gateway.continuation")


def with_usage_requested(plan: AttemptPlan) -> AttemptPlan:
    """The plan as a stream that reports usage: the gateway accounts every answer by the
    node's own figures, whether or not the client asked to see them."""
    options = {**(plan.body.get("stream_options") or {}), "include_usage": True}
    return plan.with_body({**plan.body, "stream": True, "stream_options": options})  # type: ignore[typeddict-item]


class AnswerStream:
    """Client-bound events of one answer, recorded in :attr:`record` as they pass.

    Call :meth:`next` until it returns None, then read :attr:`error`: None means the
    answer is complete (the caller sends ``[DONE]``); otherwise it is the error to report
    (the answer broke off and could not be continued). Always call :meth:`close`.
    """

    def __init__(
        self,
        *,
        forwarder: Forwarder,
        policy: Policy,
        plan: AttemptPlan,
        record: AnswerRecord,
        lease: Lease,
        upstream: UpstreamStream,
        deadline: float,
        show_usage: bool,
        text_events: bool = True,
    ) -> None:
        self.forwarder = forwarder
        self.policy = policy
        self.plan = plan
        self.record = record
        self.deadline = deadline
        self.lease: Lease | None = lease
        self.node: Node = lease.node
        self.error: GatewayError | None = None
        self._upstream: UpstreamStream | None = upstream
        self._head = collections.deque(upstream.head)
        self._pending: collections.deque[Event] = collections.deque()
        self._ended = False
        self._view = ClientView(record, show_usage=show_usage)
        self._text_events = text_events
        """False: chunks read by their bytes (:mod:`gateway.upstream.text_deltas`) are kept
        in the record only; a non-streamed answer is assembled from the record's text."""
        self._text_delta: TextDelta | None = None
        self._learn_text_delta = True
        """Whether the current attempt's text template is still to be learned (once)."""
        self._broken_nodes: set[str] = set()
        self._break: tuple[str, UpstreamError | None] | None = None
        """A break noticed but not yet handled: continuing means waiting on a node, which
        :meth:`take_ready` never does."""
        record.start_attempt(lease.node.tier, lease.node.name)

    @classmethod
    async def open(
        cls,
        forwarder: Forwarder,
        policy: Policy,
        plan: AttemptPlan,
        record: AnswerRecord,
        *,
        deadline: float,
        show_usage: bool,
        text_events: bool = True,
    ) -> AnswerStream:
        """Start the answer: fallback before the first token happens here."""
        plan = with_usage_requested(plan)
        lease, upstream = await forwarder.stream(
            policy, plan, failures=record.failures, deadline=deadline
        )
        return cls(
            forwarder=forwarder,
            policy=policy,
            plan=plan,
            record=record,
            lease=lease,
            upstream=upstream,
            deadline=deadline,
            show_usage=show_usage,
            text_events=text_events,
        )

    def detach_lease(self) -> Lease:
        """Close the upstream but keep (and hand over) the answering node's slot."""
        lease = self.lease
        assert lease is not None, "the answer has no node: it failed"
        self.lease = None
        self.close()
        return lease

    async def next(self) -> Event | None:
        """The next event for the client; None when the answer ended (see :attr:`error`)."""
        while not self._pending:
            if self._ended:
                return None
            if self._break is not None:
                reason, exc = self._break
                self._break = None
                await self._broken(reason, exc)
            elif not self._take_buffered():
                await self._pull()
        return self._pending.popleft()

    def take_ready(self) -> list[Event]:
        """The events that can be had without waiting on any node (maybe none): a relay
        passes on what has arrived in one write. :meth:`next` goes on from there."""
        while not self._ended and self._break is None and self._take_buffered():
            pass
        ready = list(self._pending)
        self._pending.clear()
        return ready

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

    def _take_buffered(self) -> bool:
        """Take what has arrived already; whether there was anything."""
        if self._head:
            self._take(self._head.popleft())  # parsed when the first token was awaited
            return True
        arrived = self._upstream.take_arrived() if self._upstream is not None else []
        if not arrived:
            return False
        self._take_all(arrived)
        return True

    async def _pull(self) -> None:
        """Wait for the node's next event (bounded by the request's deadline) and take it."""
        upstream = self._upstream
        assert upstream is not None
        try:
            data = await upstream.next_data(deadline=self.deadline)
        except UpstreamError as exc:
            self._break = (
                "stream_stalled" if isinstance(exc, UpstreamTimeout) else "stream_cut",
                exc,
            )
            return
        except DeadlineReached:
            self._fail_without_continuation(
                "deadline",
                UpstreamTimeout(
                    "The answer did not complete within the gateway's total deadline "
                    f"({self.policy.fallback.timeouts.total_s:g} s)."
                ),
            )
            return
        self._take(data)

    def _take_all(self, payloads: list[bytes]) -> None:
        """Take payloads of the current attempt in order, up to its end or a break: each
        run of chunks that only carry text (nearly all) at once, through its template."""
        attempt, at, count = self.record.current, 0, len(payloads)
        while at < count:
            template = self._text_delta
            texts = template.texts_of(payloads, at) if template is not None else []
            if template is not None and texts:
                # All else these chunks say, an earlier one of this attempt said (what
                # observe() would note): one more output chunk each.
                attempt.output_chunks += len(texts)
                if self._text_events:
                    for data, text in zip(payloads[at : at + len(texts)], texts, strict=True):
                        out = self._view.event(template.event(data, text), text)
                        if out is not None:
                            self._pending.append(out)
                else:
                    self._view.add_text(texts)
                at += len(texts)
                continue
            self._take_parsed(payloads[at])
            if self._ended or self._break is not None:
                return  # what follows the end, or a break, goes with that node's stream
            at += 1

    def _take(self, item: Event | bytes | None) -> None:
        """Take one event of the current attempt: parsed, its payload, or None for the
        end of the stream."""
        if type(item) is bytes:
            self._take_all([item])
        else:
            self._take_parsed(item)

    def _take_parsed(self, item: Event | bytes | None) -> None:
        """:meth:`_take` for what no template reads: parsed in full."""
        attempt = self.record.current
        if item is None or item == DONE:
            if attempt.finished:
                self._finish()
            else:
                self._break = ("stream_cut", None)
            return
        event = item if isinstance(item, Event) else parse_event(item)
        if event is None:
            # A garbled event may have carried text; the answer can't be trusted past it.
            self._break = ("stream_malformed", None)
            return
        if "error" in event.chunk and not choices_of(event.chunk):
            self._break = ("stream_error", None)
            return
        content = attempt.observe(event.chunk)
        out = self._view.event(event, content)
        if out is not None:
            self._pending.append(out)
        if attempt.finished and attempt.usage is not None:
            self._finish()  # all an answer has; no need to wait for [DONE]
        elif content and self._learn_text_delta:  # off once a continuation took over (_broken)
            text = text_only(event.chunk)
            if text is not None:
                self._text_delta = TextDelta.learn(event, text)
                self._learn_text_delta = False

    def _finish(self) -> None:
        record = self.record
        attempt = record.current
        if record.continued and attempt.usage is None:
            # The last node reported no usage; the whole answer's is still known.
            self._estimate_usage(attempt)
            usage = self._view.usage_event()
            if usage is not None:
                self._pending.append(usage)
        self._ended = True
        if self._upstream is not None:
            self._trace(attempt, self._upstream.attempt)
            self._upstream.finish()
            self._upstream = None  # its connection is the pool's again, not this answer's

    def _estimate_usage(self, attempt: AttemptRecord) -> None:
        attempt.usage = estimate_usage(self.plan.body.get("messages", []), self.record, attempt)
        attempt.usage_estimated = True

    def _trace(self, attempt: AttemptRecord, span: AttemptSpan) -> None:
        """What this attempt produced, on its span."""
        if not span.recording:
            return
        span.response(
            model=attempt.model,
            response_id=attempt.response_id,
            finish_reasons=[attempt.finish_reason] if attempt.finish_reason else [],
            usage=attempt.usage,
            usage_estimated=attempt.usage_estimated,
            output_text=self.record.text_of(attempt),
        )

    # -- breaking and continuing --------------------------------------------------------

    async def _broken(self, reason: str, exc: UpstreamError | None) -> None:
        if self.record.current.finished:
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
        self._drop_upstream(reason)
        why = why_not_continue(self.policy, self.plan, self.record, deadline=self.deadline)
        if why is not None:
            self._fail_without_continuation(
                reason, UpstreamIncomplete(_truncated_message(node, reason, why))
            )
            return
        try:
            taken = await continue_elsewhere(
                self.forwarder,
                self.policy,
                self.plan,
                self.record,
                broken=node,
                reason=reason,
                exclude=frozenset(self._broken_nodes),
                deadline=self.deadline,
            )
        except (UpstreamError, NoCapacity, UpstreamClientError) as exc2:
            why = f"no node could continue it ({exc2.message})"
            self._fail_without_continuation(
                reason, UpstreamIncomplete(_truncated_message(node, reason, why))
            )
            return
        self.lease, self._upstream, self.node = taken.lease, taken.upstream, taken.lease.node
        self._head = collections.deque(taken.upstream.head)
        self._text_delta, self._learn_text_delta = None, False  # a continuation is rewritten
        self.record.start_attempt(self.node.tier, self.node.name, taken.form)
        self._view.continuing(trim_repeats=taken.form == "prompt")

    def _drop_upstream(self, reason: str) -> None:
        attempt = self.record.current
        attempt.broke = reason
        if attempt.usage is None:
            self._estimate_usage(attempt)
        if self._upstream is not None:
            self._trace(attempt, self._upstream.attempt)
            self._upstream.attempt.fail(reason)
        self._broken_nodes.add(self.node.name)
        self.record.failures.append(
            Failure(tier=self.node.tier, node=self.node.name, reason=reason)
        )
        self.close()

    def _fail_without_continuation(self, reason: str, error: GatewayError) -> None:
        if reason == "deadline":
            self.record.current.broke = reason
            if self._upstream is not None:
                self._upstream.attempt.fail("deadline")
            self.close()
        self.error = error
        self._ended = True


def _truncated_message(node: Node, reason: str, why: str) -> str:
    return (
        f"The answer broke off: the {node.tier} node {node.name} stopped mid-answer "
        f"({reason}) and {why}. The text received so far is incomplete."
    )


__all__ = ["AnswerStream", "with_usage_requested"]
