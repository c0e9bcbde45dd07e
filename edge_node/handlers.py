"""HTTP handlers: translate between HTTP and the engine, make no decisions of their own.

A chat completion is one trace span (continuing the caller's W3C ``traceparent``) whose
phases become its children (see :mod:`edge_node.tracing`): admission (parse, tokenize,
``submit``) is the request span's own time, then queue wait (until ``Started``), prompt
evaluation (until ``PromptEvaluated``), generation (until ``Finished``).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .engine import Engine, EngineState, Event, Failed, Job
from .errors import EdgeError, PayloadTooLarge, Unavailable
from .generation import Delta, Finished, PromptEvaluated, Started
from .keys import METRICS, MODELS, SETTINGS, TRACING
from .memory import resident_memory
from .registry import ModelRegistry
from .responses import SSE_DONE, CompletionIdentity, sse_event
from .schema import check_model, parse_chat_request, parse_json
from .tracing import JobTrace, end_request_span, job_trace, request_span

_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies must not buffer the stream
}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, streaming (SSE) or not."""
    settings, models = request.app[SETTINGS], request.app[MODELS]
    tracing = request.app[TRACING]
    outcome = "internal_error"
    status: int | None = 500
    with request_span(tracing, request.headers, model=settings.served_model_name) as span:
        try:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge as exc:
                raise PayloadTooLarge(
                    f"The request body exceeds {settings.max_body_bytes} bytes."
                ) from exc
            body = parse_json(raw)
            model = check_model(body, settings.accepted_model_names, settings.variant_names)
            chat = parse_chat_request(body)
            # The variant's engine, loaded first if need be; never unloaded while in use.
            async with models.use(model) as engine:
                if engine.model_name != settings.served_model_name and span.is_recording():
                    span.set_attribute("gen_ai.response.model", engine.model_name)
                engine.check_capacity()  # refuse before tokenizing; submit() checks again
                params = await engine.prepare(chat)
                phases = job_trace(tracing, span, prompt_tokens=len(params.prompt_tokens))
                job = engine.submit(params)
                try:
                    identity = CompletionIdentity(model=engine.model_name)
                    if chat.stream:
                        response, outcome = await _stream(
                            request, engine, job, identity, chat.include_usage, phases
                        )
                    else:
                        response, outcome = await _complete(job, identity, phases)
                    status = response.status
                    return response
                finally:
                    phases.abandon("cancelled")  # a no-op once the job's last event was seen
                    engine.cancel(job)  # a no-op once the worker is done with the job
        except EdgeError as exc:
            outcome, status = exc.code, exc.status
            raise
        except asyncio.CancelledError:
            outcome, status = "cancelled", None  # the client went away (handler cancelled)
            raise
        finally:
            request.app[METRICS].requests.labels(code=outcome).inc()
            end_request_span(span, status=status, outcome=outcome)


async def _until_output(job: Job, phases: JobTrace) -> Event:
    """Skip the phase markers (Started, PromptEvaluated) up to the first output event,
    tracing the phases they end (and the end of the job, when that comes next)."""
    while isinstance(event := await job.events.get(), Started | PromptEvaluated):
        phases.observe(event)
    if not isinstance(event, Delta):
        phases.observe(event)
    return event


def _raise_if_ended_early(event: Event) -> None:
    if isinstance(event, Failed):
        raise event.error
    if isinstance(event, Finished) and event.finish_reason == "cancelled":
        raise Unavailable("The edge node stopped this request (shutting down).", retry_after_s=1)


async def _complete(
    job: Job, identity: CompletionIdentity, phases: JobTrace
) -> tuple[web.Response, str]:
    parts: list[str] = []
    while True:
        event = await _until_output(job, phases)
        _raise_if_ended_early(event)
        if isinstance(event, Delta):
            parts.append(event.text)
        elif isinstance(event, Finished):
            return web.json_response(identity.completion("".join(parts), event)), "ok"


async def _stream(
    request: web.Request,
    engine: Engine,
    job: Job,
    identity: CompletionIdentity,
    include_usage: bool,
    phases: JobTrace,
) -> tuple[web.StreamResponse, str]:
    # Headers wait for the first output so that a failure in the queue or during prompt
    # evaluation still gets a real status code, which the gateway can fail over on.
    event = await _until_output(job, phases)
    _raise_if_ended_early(event)
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    try:
        await response.write(
            sse_event(identity.chunk(role="assistant", text="", with_usage_field=include_usage))
        )
        while True:
            if isinstance(event, Delta):
                text, following = _coalesce(job, event, phases)
                await response.write(
                    sse_event(identity.chunk(text=text, with_usage_field=include_usage))
                )
                event = following if following is not None else await _until_output(job, phases)
            elif isinstance(event, Finished) and event.finish_reason != "cancelled":
                final = identity.chunk(
                    finish_reason=event.finish_reason, with_usage_field=include_usage
                )
                await response.write(sse_event(final))
                if include_usage:
                    await response.write(sse_event(identity.usage_chunk(event)))
                await response.write(SSE_DONE)
                await response.write_eof()
                return response, "ok"
            else:
                # The status line is gone: report in-stream, then end without [DONE].
                error = (
                    event.error
                    if isinstance(event, Failed)
                    else Unavailable("Stopped.", retry_after_s=1)
                )
                await response.write(sse_event(error.body()))
                await response.write_eof()
                return response, error.code
    except ConnectionResetError:
        # Client gone while we wrote (servers without handler cancellation land here).
        engine.cancel(job)
        return response, "cancelled"


def _coalesce(job: Job, first: Delta, phases: JobTrace) -> tuple[str, Event | None]:
    """Join the deltas already queued into one chunk; returns the first non-delta, if any."""
    texts = [first.text]
    while not job.events.empty():
        event = job.events.get_nowait()
        if not isinstance(event, Delta):
            phases.observe(event)
            return "".join(texts), event
        texts.append(event.text)
    return "".join(texts), None


async def models(request: web.Request) -> web.Response:
    """GET /v1/models: every variant, loaded or not (``edge`` names the ``--model`` one)."""
    return web.json_response({"object": "list", "data": request.app[MODELS].cards()})


async def health(request: web.Request) -> web.Response:
    """GET /health: 200 once the model serves, 503 (with Retry-After) before and after;
    the body also says how busy the engines are and what the node holds in memory."""
    settings, models = request.app[SETTINGS], request.app[MODELS]
    ready = models.state is EngineState.READY
    body: dict[str, object] = {
        "status": "ok" if ready else models.state.value,
        "model": settings.served_model_name,
        **models.status(),
        "memory": _memory(models),
    }
    if models.load_error is not None:
        body["error"] = models.load_error
    headers = {} if ready else {"Retry-After": str(settings.retry_after_s)}
    return web.json_response(body, status=200 if ready else 503, headers=headers)


def _memory(models: ModelRegistry) -> dict[str, object]:
    memory: dict[str, object] = {}
    resident = resident_memory()
    if resident is not None:
        memory["resident_bytes"] = resident.current_bytes
        memory["peak_resident_bytes"] = resident.peak_bytes
    loaded = models.model_memory()
    if loaded:
        memory["models"] = loaded
    return memory


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format."""
    request.app[MODELS].refresh_metrics()
    payload, content_type = request.app[METRICS].render()
    return web.Response(body=payload, headers={"Content-Type": content_type})
