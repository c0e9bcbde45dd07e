"""The gateway's JSON encoder: orjson's compact UTF-8, and the standard library for what
orjson refuses."""

from __future__ import annotations

import json

from gateway.jsonio import dumps


def test_compact_utf8_as_orjson_writes_it() -> None:
    assert dumps({"a": "é", "b": [1, None]}) == '{"a":"é","b":[1,null]}'.encode()


def test_an_integer_beyond_64_bits_passes_unchanged() -> None:
    big = 2**70
    assert json.loads(dumps({"seed": big})) == {"seed": big}


def test_a_lone_surrogate_is_escaped_not_an_error() -> None:
    out = dumps({"a": "x\ud800"})
    assert out == b'{"a":"x\\ud800"}'
    out.decode("utf-8")  # valid UTF-8 on the wire
