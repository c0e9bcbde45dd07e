"""Cheap request features for the learned complexity classifier: pure Python, bounded cost.

:func:`extract_features` turns chat messages into a fixed vector of named numbers plus the
set of lowercase words of the last user message. Everything is computed on bounded
windows, so the cost stays flat however long the conversation is:

- the last user message is read in full up to ``WINDOW_HEAD_CHARS + WINDOW_TAIL_CHARS``
  characters, otherwise as its head and its tail (the question and, for multiple choice,
  the options usually sit at the two ends);
- token counts are exact up to ``EXACT_TOKEN_CHARS`` characters and estimated above that
  from a few exactly counted samples (:func:`estimate_tokens`), because encoding 2,000
  tokens with tiktoken alone costs more than the whole decision budget;
- keyword markers are set look-ups on the word set rather than one regex pass each;
- groups of features a model gives no weight are not computed at all
  (:data:`OPTIONAL_FEATURE_GROUPS`): the shipped model weighs three features, and the
  four optional groups cost about a fifth of the extraction (2 us of a short prompt's 10,
  14 us of a long one's 84).

The training script and the runtime call the same function, so the features the model was
fitted on are the features it sees in production.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.routing.marker_words import (
    CODE_WORDS,
    INSTRUCTION_WORDS,
    MATH_WORDS,
    NEGATION_WORDS,
    REASONING_WORDS,
)
from gateway.tokens import encoding
from hybrid_common.protocol import ChatMessage, message_text

FEATURE_SET_VERSION = 1
"""Bump when a feature's definition changes: weights trained on another version are refused."""

WINDOW_HEAD_CHARS = 1200
WINDOW_TAIL_CHARS = 400
EXACT_TOKEN_CHARS = 1024
SAMPLE_CHARS = 256
SAMPLES = 4

# ASCII letter runs: about twice as fast as a Unicode letter class, and the vocabulary is
# English anyway; other scripts show through non_ascii_frac and tokens_per_char.
_WORD = re.compile(r"[a-z]{2,}")
_CHOICE_LINE = re.compile(r"^\s*\(?([A-Ha-h])[.)]\s+(.*)$", re.M)
_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")

# Counted on the UTF-8 bytes with bytes.translate(None, delete): one C pass each, where
# a str.count per character or a regex would cost tens of microseconds on a long window.
_MATH_SYMBOLS = b"=+*/^<>%$\\"
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGITS = b"0123456789"

NOT_APPLICABLE = math.nan
"""A feature that does not apply to this request (options of a prompt without options);
the model adds nothing for it, and the training script imputes the training mean."""

FEATURE_NAMES: tuple[str, ...] = (
    # conversation shape
    "log_chars_total",
    "log_chars_system",
    "user_turns",
    "has_assistant",
    "max_tokens_octaves",
    "max_tokens_set",
    # size of the last user message
    "log_chars_last",
    "log_tokens_last",
    "tokens_per_char",
    "log_lines",
    "log_words",
    "mean_word_len",
    "long_word_frac",
    # character mix
    "digit_frac",
    "upper_frac",
    "symbol_frac",
    "non_ascii_frac",
    # markers
    "code",
    "math",
    "reasoning",
    "negation",
    "instruction",
    "question_marks",
    "quotes",
    "special_tokens",
    # question structure
    "choices",
    "log_choice_chars",
    "choice_spread",
    "all_none_above",
    "statements",
    "passage",
    "fill_blank",
)
"""The dense features, in the order of :attr:`Features.values`."""

LENGTH_FEATURES = frozenset({"log_chars_total", "log_chars_last", "log_tokens_last", "log_words"})
"""Reported together as one ``N tokens`` signal: four views of one property."""


def _run(first: str, last: str) -> tuple[str, ...]:
    """The features from ``first`` to ``last``, in :data:`FEATURE_NAMES` order."""
    return FEATURE_NAMES[FEATURE_NAMES.index(first) : FEATURE_NAMES.index(last) + 1]


OPTIONAL_FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "word_lengths": _run("mean_word_len", "long_word_frac"),
    "characters": _run("digit_frac", "non_ascii_frac"),
    "markers": _run("math", "special_tokens"),
    "phrases": _run("all_none_above", "fill_blank"),
}
"""Features computed only when asked for (:func:`extract_features`' ``groups``), a group at
a time. The rest are always computed: they cost little, or the task priors read them
(``code``, ``choices``) along with the word set."""

ALL_FEATURE_GROUPS = frozenset(OPTIONAL_FEATURE_GROUPS)

NOT_COMPUTED = math.nan
"""The value of a feature whose group was not asked for: like a feature that does not
apply, it adds nothing to a score (and a model that weighs it asks for its group)."""

FEATURE_SIGNALS: dict[str, tuple[str, str]] = {
    "log_chars_system": ("long system prompt", "short system prompt"),
    "user_turns": ("multi-turn", "first turn"),
    "has_assistant": ("follow-up", "first turn"),
    "max_tokens_octaves": ("long answer asked", "short answer asked"),
    "max_tokens_set": ("max_tokens set", "no max_tokens"),
    "tokens_per_char": ("dense text", "plain text"),
    "log_lines": ("many lines", "few lines"),
    "mean_word_len": ("long words", "short words"),
    "long_word_frac": ("technical words", "plain words"),
    "digit_frac": ("numbers", "few numbers"),
    "upper_frac": ("capitals", "few capitals"),
    "symbol_frac": ("symbols", "few symbols"),
    "non_ascii_frac": ("non-English", "English"),
    "code": ("code", "no code"),
    "math": ("math", "no math"),
    "reasoning": ("reasoning", "no reasoning"),
    "negation": ("negation", "no negation"),
    "instruction": ("instruction", "no instruction"),
    "question_marks": ("questions", "no question mark"),
    "quotes": ("quotation", "no quotation"),
    "special_tokens": ("special tokens", "no special tokens"),
    "choices": ("multiple choice", "few options"),
    "log_choice_chars": ("long options", "short options"),
    "choice_spread": ("uneven options", "even options"),
    "all_none_above": ("all/none of the above", "no all/none option"),
    "statements": ("statements", "no statements"),
    "passage": ("reading passage", "no passage"),
    "fill_blank": ("fill in the blank", "no blank"),
}
"""Short human words for a feature above / below its training mean, for route reasons."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Features:
    """The features of one request."""

    values: tuple[float, ...]
    """Aligned with :data:`FEATURE_NAMES`; NaN where one does not apply
    (:data:`NOT_APPLICABLE`) or was not asked for (:data:`NOT_COMPUTED`)."""
    words: frozenset[str]
    """Lowercase ASCII words (two letters or more) of the last user message's window."""
    prompt_tokens: int
    """Tokens of all message texts joined by newlines (estimated above the exact limit)."""
    prompt_tokens_exact: bool
    last_user_tokens: int | None = None
    """Tokens of the last user message, when the request has more than that message."""
    last_user_exact: bool = True


def estimate_tokens(text: str) -> tuple[int, bool]:
    """Token count of ``text`` and whether it is exact.

    Up to ``EXACT_TOKEN_CHARS`` characters the count is exact. Above, ``SAMPLES`` evenly
    spread slices are encoded and their tokens-per-character ratio is scaled to the whole
    text: the cost stays bounded, and the ratio follows the text's own language and
    content (English prose, code and CJK differ by 4x), unlike a fixed chars-per-token rule.
    """
    n = len(text)
    if n <= EXACT_TOKEN_CHARS:
        return (len(encoding().encode_ordinary(text)) if text else 0), True
    enc = encoding()
    step = (n - SAMPLE_CHARS) / (SAMPLES - 1)
    sampled_tokens = 0
    sampled_chars = 0
    for i in range(SAMPLES):
        start = int(i * step)
        # Start after a space where one is near, so a sample does not open mid-word (a cut
        # word costs an extra token and biases the estimate upwards).
        space = text.find(" ", start, start + 32)
        if space != -1:
            start = space + 1
        piece = text[start : start + SAMPLE_CHARS]
        sampled_tokens += len(enc.encode_ordinary(piece))
        sampled_chars += len(piece)
    return max(1, round(n * sampled_tokens / sampled_chars)), False


def _window(text: str) -> str:
    if len(text) <= WINDOW_HEAD_CHARS + WINDOW_TAIL_CHARS:
        return text
    return text[:WINDOW_HEAD_CHARS] + "\n" + text[-WINDOW_TAIL_CHARS:]


_log = math.log1p  # a dozen per request: the C function itself, no Python frame around it


def _max_tokens_octaves(max_tokens: int | None) -> float:
    # Doublings away from a typical 512-token answer, clipped: 0 when unset, so a request
    # that does not say is neither pushed to the cloud nor kept at the edge by this feature.
    if max_tokens is None or max_tokens <= 0:
        return 0.0
    return max(-3.0, min(3.0, math.log2(max_tokens / 512)))


def _choice_features(window: str) -> tuple[float, float, float]:
    # Two option lines need a line break between them: most prompts are spared the regex.
    lengths = [len(m.group(2)) for m in _CHOICE_LINE.finditer(window)] if "\n" in window else []
    if len(lengths) < 2:
        # Not a multiple-choice prompt: "not applicable", not "zero options". The training
        # prompts all have options, so a zero would sit far outside anything the model saw.
        return NOT_APPLICABLE, NOT_APPLICABLE, NOT_APPLICABLE
    longest = max(lengths)
    spread = (longest - min(lengths)) / longest if longest else 0.0
    return float(len(lengths)), _log(sum(lengths) / len(lengths)), spread


def _count(data: bytes, members: bytes) -> int:
    return len(data) - len(data.translate(None, members))


def _word_lengths(word_list: Sequence[str]) -> tuple[float, float]:
    """mean_word_len, long_word_frac."""
    if not word_list:
        return 0.0, 0.0
    long_words = sum(1 for w in word_list if len(w) >= 10)
    return sum(map(len, word_list)) / len(word_list), long_words / len(word_list)


def _characters(window: str) -> tuple[float, float, float, float]:
    """digit_frac, upper_frac, symbol_frac, non_ascii_frac."""
    data = window.encode("utf-8", "surrogatepass")
    n_chars = len(window) or 1
    return (
        _count(data, _DIGITS) / n_chars,
        _count(data, _UPPER) / n_chars,
        _count(data, _MATH_SYMBOLS) / n_chars,
        (len(data) - len(window)) / n_chars,
    )


def _markers(window: str, lower: str, words: frozenset[str]) -> tuple[float, ...]:
    """math, reasoning, negation, instruction, question_marks, quotes, special_tokens."""
    return (
        _log(len(words & MATH_WORDS) + window.count("\\frac") + window.count("$")),
        _log(len(words & REASONING_WORDS) + lower.count("step by step")),
        _log(len(words & NEGATION_WORDS)),
        _log(len(words & INSTRUCTION_WORDS)),
        _log(window.count("?")),
        _log(window.count('"') + window.count("\u201c")),
        1.0 if _SPECIAL_TOKEN.search(window) else 0.0,
    )


def _phrases(window: str, lower: str) -> tuple[float, float, float, float]:
    """all_none_above, statements, passage, fill_blank."""
    return (
        1.0 if "of the above" in lower or "all of these" in lower else 0.0,
        # "I and II", "II and III", "III and IV" all contain "I and I": a substring test,
        # where a regex for roman-numeral pairs cost 40 us on a long window.
        1.0 if "statement 1" in lower or "I and I" in window else 0.0,
        1.0 if "following" in lower and ("passage" in lower or "information" in lower) else 0.0,
        1.0 if "___" in window else 0.0,
    )


_SKIPPED = {group: (NOT_COMPUTED,) * len(names) for group, names in OPTIONAL_FEATURE_GROUPS.items()}


def _last_user(roles: Sequence[object], texts: Sequence[str]) -> str:
    for role, text in zip(reversed(roles), reversed(texts), strict=True):
        if role == "user":
            return text
    # No user turn (unusual, but valid JSON): read the last message instead.
    return texts[-1] if texts else ""


def extract_features(
    messages: Sequence[ChatMessage],
    *,
    max_tokens: int | None,
    groups: frozenset[str] = ALL_FEATURE_GROUPS,
) -> Features:
    """The features of a chat request; pure, deterministic, bounded cost. Optional
    features outside ``groups`` (see :data:`OPTIONAL_FEATURE_GROUPS`) are
    :data:`NOT_COMPUTED`; the others do not depend on ``groups``."""
    texts = [message_text(m) for m in messages]
    roles = [m.get("role") for m in messages]
    last_user = _last_user(roles, texts)
    last_exact = True
    if len(texts) == 1:
        prompt_tokens, exact = estimate_tokens(last_user)
        last_tokens = prompt_tokens
        joined_chars = len(last_user)
    else:
        joined = "\n".join(texts)
        joined_chars = len(joined)
        prompt_tokens, exact = estimate_tokens(joined)
        last_tokens, last_exact = estimate_tokens(last_user)
    system_chars = sum(
        len(t) for r, t in zip(roles, texts, strict=True) if r in ("system", "developer")
    )

    window = _window(last_user)
    lower = window.lower()
    word_list = _WORD.findall(lower)
    words = frozenset(word_list)
    n_words = len(word_list)

    values = (
        _log(joined_chars),
        _log(system_chars),
        _log(max(roles.count("user") - 1, 0)),
        1.0 if "assistant" in roles else 0.0,
        _max_tokens_octaves(max_tokens),
        1.0 if max_tokens is not None else 0.0,
        _log(len(last_user)),
        _log(last_tokens),
        last_tokens / len(last_user) if last_user else 0.0,
        _log(window.count("\n")),
        _log(n_words),
        *(_word_lengths(word_list) if "word_lengths" in groups else _SKIPPED["word_lengths"]),
        *(_characters(window) if "characters" in groups else _SKIPPED["characters"]),
        _log(len(words & CODE_WORDS) + 3 * window.count("```") + window.count(";\n")),
        *(_markers(window, lower, words) if "markers" in groups else _SKIPPED["markers"]),
        *_choice_features(window),
        *(_phrases(window, lower) if "phrases" in groups else _SKIPPED["phrases"]),
    )
    return Features(
        values=values,
        words=words,
        prompt_tokens=prompt_tokens,
        prompt_tokens_exact=exact,
        last_user_tokens=None if len(texts) == 1 else last_tokens,
        last_user_exact=last_exact,
    )


__all__ = [
    "ALL_FEATURE_GROUPS",
    "FEATURE_NAMES",
    "FEATURE_SET_VERSION",
    "FEATURE_SIGNALS",
    "LENGTH_FEATURES",
    "NOT_APPLICABLE",
    "NOT_COMPUTED",
    "OPTIONAL_FEATURE_GROUPS",
    "Features",
    "estimate_tokens",
    "extract_features",
]
