"""Prompt and completion text stay out of spans unless content capture is asked for;
API keys never go in."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from tests.conftest import policy_yaml
from tests.gateway.observability.conftest import Spans, attrs, make_spans
from tests.helpers import sdk
from tests.scripted import Script

SECRET_PROMPT = "the password of the vault is swordfish-7731"
SECRET_ANSWER = ("The", " vault", " opens", " at", " dawn-4412.")
API_KEY = "sk-test-key-do-not-trace-9d2c"


def _everything(spans: Spans) -> str:
    """Every name, attribute, event and status text of every span, as one string."""

    def one(span: ReadableSpan) -> str:
        events = [(e.name, dict(e.attributes or {})) for e in span.events]
        return repr((span.name, dict(span.attributes or {}), events, span.status.description))

    return "\n".join(one(s) for s in spans.all())


async def _ask(upstreams, make_gateway, spans: Spans, *, stream: bool) -> None:
    edge = await upstreams("edge-model")
    edge.script = Script(chunks=SECRET_ANSWER)
    gateway = await make_gateway(
        policy_yaml([(edge.url, "edge-model")], []),
        health_checks=False,
        tracing=spans.tracing,
        api_keys=frozenset({API_KEY}),
    )
    async with sdk(gateway, api_key=API_KEY) as client:
        response = await client.chat.completions.create(
            model="auto",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": SECRET_PROMPT},
            ],
            stream=stream,
        )
        if stream:
            [c async for c in response]
    await spans.settled()


@pytest.mark.parametrize("stream", [False, True])
async def test_without_capture_no_text_and_no_key_is_traced(
    upstreams, make_gateway, spans: Spans, stream: bool
) -> None:
    await _ask(upstreams, make_gateway, spans, stream=stream)

    text = _everything(spans)
    assert len(spans.all()) == 3
    assert "swordfish" not in text
    assert "dawn-4412" not in text
    assert "Be brief" not in text
    assert API_KEY not in text
    assert "gen_ai.input.messages" not in text
    assert "gen_ai.output.messages" not in text
    # ...while the rest of the story is there.
    assert attrs(spans.attempts()[0])["gen_ai.usage.output_tokens"] == 5


@pytest.mark.parametrize("stream", [False, True])
async def test_with_capture_messages_are_on_the_attempt_span_but_never_the_key(
    upstreams, make_gateway, stream: bool
) -> None:
    spans = make_spans(capture_content=True)
    await _ask(upstreams, make_gateway, spans, stream=stream)

    (attempt,) = spans.attempts()
    a = attrs(attempt)
    sent = json.loads(a["gen_ai.input.messages"])
    assert sent == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": SECRET_PROMPT}]},
    ]
    answer = json.loads(a["gen_ai.output.messages"])
    assert answer == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "".join(SECRET_ANSWER)}],
            "finish_reason": "stop",
        }
    ]
    # Only the attempt span carries text; the key is nowhere.
    others = [s for s in spans.all() if s is not attempt]
    assert all("swordfish" not in repr(dict(s.attributes or {})) for s in others)
    assert API_KEY not in _everything(spans)


def test_capture_is_off_unless_the_variable_says_true() -> None:
    from gateway.settings import settings_from_env

    assert settings_from_env({}).tracing.capture_content is False
    assert settings_from_env({"GATEWAY_TRACE_CONTENT": "false"}).tracing.capture_content is False
    assert settings_from_env({"GATEWAY_TRACE_CONTENT": "true"}).tracing.capture_content is True
