"""Lone surrogates: found in client text, repaired in node text (gateway.text)."""

from __future__ import annotations

import json

import pytest

from gateway.text import has_lone_surrogate, may_hold_surrogates, scrub_surrogates
from gateway.upstream.chunks import parse_chunk, parse_event


@pytest.mark.parametrize(
    ("text", "lone"),
    [
        ("plain ascii", False),
        ("emoji \U0001f600, accents \u00e9, CJK \u4e2d", False),
        ("\ud800", True),
        ("a\udfffb", True),
        ("\ud83d\ude00", True),  # a pair in a str is two lone halves: json never builds one
    ],
)
def test_has_lone_surrogate(text: str, lone: bool) -> None:
    assert has_lone_surrogate(text) is lone


@pytest.mark.parametrize(
    ("data", "may"),
    [
        (b'{"a": "plain"}', False),
        ('{"a": "\u00e9\u4e2d"}'.encode(), False),
        (b'{"a": "\\ud83d\\ude00"}', True),  # a valid escaped pair: looked at, left alone
        (b'{"a": "\\uD800"}', True),
        (b'{"a": "\xed\xa0\x80"}', True),  # raw surrogate bytes
        ('{"a": "\ud55c"}'.encode(), False),  # Hangul: ED 95 9C, not a surrogate
    ],
)
def test_may_hold_surrogates(data: bytes, may: bool) -> None:
    assert may_hold_surrogates(data) is may


def test_scrub_replaces_in_values_keys_and_nested_containers() -> None:
    value = {"a": ["x\ud800", {"\udc00k": "v"}], "b": "ok", "c": 1}
    assert scrub_surrogates(value) is True
    assert value == {"a": ["x\ufffd", {"\ufffdk": "v"}], "b": "ok", "c": 1}
    assert scrub_surrogates(value) is False


def test_scrub_survives_depth_the_parser_allows() -> None:
    value: list[object] = ["\ud800"]
    for _ in range(5000):
        value = [value]
    assert scrub_surrogates(value) is True


@pytest.mark.parametrize(
    "data",
    [
        b'{"choices": [{"index": 0, "delta": {"content": "Hel\\ud800lo"}}]}',
        b'{"choices": [{"index": 0, "delta": {"content": "Hel\xed\xa0\x80lo"}}]}',
    ],
    ids=["escaped", "raw-bytes"],
)
def test_a_node_event_with_a_lone_surrogate_is_repaired_and_re_encoded(data: bytes) -> None:
    event = parse_event(data)
    assert event is not None
    chunk, out = event
    assert chunk["choices"] == [{"index": 0, "delta": {"content": "Hel\ufffdlo"}}]
    assert json.loads(out.decode("utf-8")) == chunk  # strict UTF-8: the client can read it
    assert parse_chunk(data) == chunk


def test_a_clean_node_event_is_passed_on_as_it_came() -> None:
    data = b'{"choices": [{"delta": {"content": "\\ud83d\\ude00"}}]}'
    event = parse_event(data)
    assert event is not None and event[1] is data
