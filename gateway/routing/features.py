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
- keyword markers are set look-ups on the word set rather than one regex pass each.

The training script and the runtime call the same function, so the features the model was
fitted on are the features it sees in production.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

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

_MATH_WORDS = frozenset(
    (  # noqa: SIM905 (a word list, not one word per line)
        "equation equations solve integral derivative probability theorem prove matrix sum "
        "product function polynomial calculate compute value variable root roots log ratio "
        "expected variance mean median integer integers prime divisible"
    ).split()
)
_CODE_WORDS = frozenset(
    [
        "def",
        "return",
        "import",
        "class",
        "public",
        "static",
        "void",
        "int",
        "printf",
        "println",
        "lambda",
        "const",
        "var",
        "function",
        "null",
        "elif",
        "struct",
        "include",
        "async",
        "await",
    ]
)
_REASONING_WORDS = frozenset(
    [
        "why",
        "explain",
        "prove",
        "justify",
        "derive",
        "analyze",
        "analyse",
        "compare",
        "evaluate",
        "reason",
        "reasoning",
        "implies",
        "implication",
        "infer",
        "inference",
        "argument",
        "therefore",
        "hence",
        "assume",
        "assumption",
    ]
)
_NEGATION_WORDS = frozenset(
    ["not", "except", "false", "incorrect", "least", "never", "unlikely", "neither"]
)
_INSTRUCTION_WORDS = frozenset(
    [
        "write",
        "summarize",
        "summarise",
        "translate",
        "rewrite",
        "draft",
        "list",
        "outline",
        "generate",
        "create",
        "implement",
        "design",
        "refactor",
        "debug",
        "fix",
        "optimize",
    ]
)
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
    """Aligned with :data:`FEATURE_NAMES`; :data:`NOT_APPLICABLE` (NaN) where one does not apply."""
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


def _last_user(roles: Sequence[object], texts: Sequence[str]) -> str:
    for role, text in zip(reversed(roles), reversed(texts), strict=True):
        if role == "user":
            return text
    # No user turn (unusual, but valid JSON): read the last message instead.
    return texts[-1] if texts else ""


def extract_features(messages: Sequence[ChatMessage], *, max_tokens: int | None) -> Features:
    """The features of a chat request; pure, deterministic, bounded cost."""
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
    data = window.encode("utf-8", "surrogatepass")
    lower = window.lower()
    word_list = _WORD.findall(lower)
    words = frozenset(word_list)
    n_chars = len(window) or 1
    n_words = len(word_list)
    long_words = sum(1 for w in word_list if len(w) >= 10)
    choices, choice_chars, choice_spread = _choice_features(window)

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
        sum(map(len, word_list)) / n_words if n_words else 0.0,
        long_words / n_words if n_words else 0.0,
        _count(data, _DIGITS) / n_chars,
        _count(data, _UPPER) / n_chars,
        _count(data, _MATH_SYMBOLS) / n_chars,
        (len(data) - len(window)) / n_chars,
        _log(len(words & _CODE_WORDS) + 3 * window.count("```") + window.count(";\n")),
        _log(len(words & _MATH_WORDS) + window.count("\\frac") + window.count("$")),
        _log(len(words & _REASONING_WORDS) + lower.count("step by step")),
        _log(len(words & _NEGATION_WORDS)),
        _log(len(words & _INSTRUCTION_WORDS)),
        _log(window.count("?")),
        _log(window.count('"') + window.count("\u201c")),
        1.0 if _SPECIAL_TOKEN.search(window) else 0.0,
        choices,
        choice_chars,
        choice_spread,
        1.0 if "of the above" in lower or "all of these" in lower else 0.0,
        # "I and II", "II and III", "III and IV" all contain "I and I": a substring test,
        # where a regex for roman-numeral pairs cost 40 us on a long window.
        1.0 if "statement 1" in lower or "I and I" in window else 0.0,
        1.0 if "following" in lower and ("passage" in lower or "information" in lower) else 0.0,
        1.0 if "___" in window else 0.0,
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
    "FEATURE_NAMES",
    "FEATURE_SET_VERSION",
    "FEATURE_SIGNALS",
    "LENGTH_FEATURES",
    "NOT_APPLICABLE",
    "Features",
    "estimate_tokens",
    "extract_features",
]
