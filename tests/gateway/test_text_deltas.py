"""Text-only chunks read by their bytes: exactly what the JSON parser returns, or nothing.

The unit tests hold the template to the parser on every encoding a node may use (compact
or spaced, UTF-8 or escaped, with and without ``"usage": null``) and on texts built to
trip it (quotes, escapes, control characters, broken UTF-8). The end-to-end tests send
such texts through a gateway: the stream is the node's bytes, the assembled answer its
text.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from gateway.upstream.chunks import Chunk, parse_chunk, parse_event
from gateway.upstream.text_deltas import TextDelta, text_only, with_text
from tests.conftest import policy_yaml
from tests.helpers import sdk
from tests.scripted import Script

STYLES = {
    "compact": {"separators": (",", ":"), "ensure_ascii": False},
    "spaced": {"separators": (", ", ": "), "ensure_ascii": False},
    "ascii-escaped": {"separators": (",", ":"), "ensure_ascii": True},
}
TRICKY = [
    " plain",
    "naïve café ☕ 猫",  # UTF-8 (escaped in the ascii style)
    'a "quoted" word',
    "back\\slash",
    "line\nbreak",
    "tab\there",
    "\u2028separator",
    "chatcmpl-42",  # the chunk's own id
    "m",  # a piece of the model name
    "}",
    '"}]}',
]


def _chunk(text: str, *, null_usage: bool = False) -> Chunk:
    chunk: Chunk = {
        "id": "chatcmpl-42",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        ],
    }
    if null_usage:
        chunk["usage"] = None
    return chunk


def _data(chunk: Chunk, style: str) -> bytes:
    return json.dumps(chunk, **STYLES[style]).encode()  # type: ignore[arg-type]


def _text_of(template: TextDelta, data: bytes) -> str | None:
    """What the template reads of one payload (None: it is left to the parser)."""
    texts = template.texts_of([data], 0)
    return texts[0] if texts else None


def _template(style: str, *, null_usage: bool = False, text: str = " word") -> TextDelta:
    event = parse_event(_data(_chunk(text, null_usage=null_usage), style))
    assert event is not None
    template = TextDelta.learn(event, text)
    assert template is not None
    return template


@pytest.mark.parametrize("null_usage", [False, True], ids=["no-usage", "null-usage"])
@pytest.mark.parametrize("style", ["compact", "spaced"])
def test_a_match_is_what_the_parser_reads(style: str, null_usage: bool) -> None:
    template = _template(style, null_usage=null_usage)
    matched = 0
    for text in TRICKY:
        data = _data(_chunk(text, null_usage=null_usage), style)
        read = _text_of(template, data)
        if read is not None:
            matched += 1
            assert read == text
            assert template.event(data, read) == (parse_chunk(data), data)
        else:  # only a text the bytes cannot show plainly is left to the parser
            assert any(c in json.dumps(text) for c in ('\\"', "\\\\", "\\n", "\\t")), text
    assert matched >= 6  # plain ASCII and UTF-8 texts, the id and the model name included


def test_escaped_text_is_never_read_by_its_bytes() -> None:
    template = _template("ascii-escaped")
    assert _text_of(template, _data(_chunk("café"), "ascii-escaped")) is None  # caf\u00e9
    assert _text_of(template, _data(_chunk("cafe"), "ascii-escaped")) == "cafe"


def test_bytes_that_are_not_the_same_chunk_do_not_match() -> None:
    template = _template("compact")
    other = {**_chunk(" x"), "id": "chatcmpl-43"}
    finish = {**_chunk(""), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    raw_control = _data(_chunk(" x"), "compact").replace(b" x", b"\x01x")
    broken_utf8 = _data(_chunk(" x"), "compact").replace(b" x", b"\xff\xfe")
    for data in (
        _data(other, "compact"),
        _data(finish, "compact"),
        _data(_chunk(""), "compact"),  # an empty text: parsed in full
        raw_control,  # the parser refuses it: so must the template
        broken_utf8,
        b"[DONE]",
        _data(_chunk(" x"), "compact")[:-1],  # cut short
    ):
        assert _text_of(template, data) is None, data


def test_a_run_is_read_up_to_the_first_chunk_that_does_not_match() -> None:
    template = _template("compact")
    finish = {**_chunk(""), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    payloads = [_data(_chunk(t), "compact") for t in (" a", " b", 'say "c"', " d")]
    payloads.append(_data(finish, "compact"))
    assert template.texts_of(payloads, 0) == [" a", " b"]  # 'say "c"' has escapes
    assert template.texts_of(payloads, 2) == []
    assert template.texts_of(payloads, 3) == [" d"]
    assert template.texts_of(payloads, 5) == []


def test_learning_refuses_a_text_that_is_not_shown_once_and_plainly() -> None:
    for text, style in [
        ("m", "compact"),  # the model's name too: which quotes are the text's?
        ("chatcmpl-42", "compact"),  # the id too
        ("café", "ascii-escaped"),  # not in the bytes as such
        ('say "hi"', "compact"),
    ]:
        event = parse_event(_data(_chunk(text), style))
        assert event is not None
        assert TextDelta.learn(event, text) is None, text


def test_an_escaped_text_written_plainly_elsewhere_is_not_taken_for_it() -> None:
    # The text "abc" is escaped where it stands (\u0061bc), and the model's name is
    # "abc": the one plain "abc" in the bytes is the model's, which only a parse can tell
    # (without a backslash in the bytes, the one plain occurrence is the text's own).
    chunk = {**_chunk("abc"), "model": "abc"}
    data = _data(chunk, "compact").replace(b'"content":"abc"', b'"content":"\\u0061bc"')
    assert data.count(b'"abc"') == 1 and parse_chunk(data) == chunk
    event = parse_event(data)
    assert event is not None
    assert TextDelta.learn(event, "abc") is None
    plain = parse_event(_data(_chunk("abc"), "compact"))
    assert plain is not None and TextDelta.learn(plain, "abc") is not None


def test_only_a_chunk_that_says_nothing_but_text_is_a_template() -> None:
    def choice(**fields: object) -> Chunk:
        return {"choices": [{"index": 0, "delta": {"content": "x"}, **fields}]}

    assert text_only(choice()) == "x"
    assert text_only({**choice(), "usage": None}) == "x"
    assert text_only(choice(finish_reason=None, logprobs=None)) == "x"
    assert text_only(choice(finish_reason="stop")) is None
    assert text_only(choice(logprobs={"content": []})) is None
    assert text_only({**choice(), "usage": {"prompt_tokens": 1}}) is None
    assert text_only({**choice(), "error": {"message": "x"}}) is None
    assert text_only({"choices": [{"index": 1, "delta": {"content": "x"}}]}) is None
    assert text_only({"choices": [{"delta": {"role": "assistant", "content": "x"}}]}) is None
    assert text_only({"choices": [{"delta": {"content": ""}}]}) is None
    assert text_only({"choices": [{"delta": {"content": "x"}}] * 2}) is None
    assert with_text(choice(), "y") == {"choices": [{"index": 0, "delta": {"content": "y"}}]}


NODE_TEXT = ("Hello", " naïve", ' "quoted"', " back\\slash", " 猫", "\n", " end.")


@pytest.fixture
async def utf8_node(upstreams, make_gateway):
    edge = await upstreams("edge-model")
    edge.script = Script(chunks=NODE_TEXT, compact_json=True, null_usage=True, utf8_json=True)
    gateway = await make_gateway(policy_yaml([(edge.url, "edge-model")], []))
    return edge, gateway


async def test_a_streamed_answer_is_the_nodes_bytes(utf8_node) -> None:
    _, gateway = utf8_node
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/v1/chat/completions", json=body) as response,
    ):
        raw = await response.read()
    events = [e[len(b"data: ") :] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "".join(
        NODE_TEXT
    )
    # Usage was not asked for: the node's "usage": null is cut from every chunk, and the
    # rest of each chunk's bytes are the node's own (UTF-8, compact).
    assert all("usage" not in c for c in chunks)
    assert "naïve".encode() in raw and "猫".encode() in raw and b"\\u" not in raw


async def test_a_non_streamed_answer_holds_the_nodes_text(utf8_node) -> None:
    _, gateway = utf8_node
    async with sdk(gateway) as client:
        completion = await client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.choices[0].message.content == "".join(NODE_TEXT)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == len(NODE_TEXT)
