"""The complexity classifier seam: a request's messages in, a score in [0, 1] out.

A classifier is a pure function of the request (no I/O, microseconds): the policy turns
its score into a tier. ``HeuristicClassifier`` is the simple, dependency-free baseline;
the learned classifier lives in ``gateway.routing.learned``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.policy.model import ClassifierKind
from gateway.tokens import count_tokens
from hybrid_common.protocol import ChatMessage, message_text


@dataclass(frozen=True, slots=True, kw_only=True)
class Complexity:
    """What a classifier concluded about one request."""

    score: float
    """In [0, 1]; higher means the edge model is less likely to be good enough."""
    prompt_tokens: int
    """tiktoken count of all message texts (the rules' ``prompt_tokens_over`` reads it)."""
    signals: tuple[str, ...] = ()
    """Short words that explain the score, strongest first (``math``, ``1840 tokens``)."""


class Classifier(Protocol):
    """Scores one request; must be pure, deterministic and fast."""

    @property
    def name(self) -> str: ...

    def classify(
        self, messages: Sequence[ChatMessage], *, max_tokens: int | None
    ) -> Complexity: ...


_MARKERS: tuple[tuple[str, re.Pattern[str], float], ...] = (
    ("code", re.compile(r"```|\bdef |\bclass |#include|\bfunction\b|=>|;\s*$", re.M), 0.20),
    (
        "math",
        re.compile(r"\b(prove|integral|derivative|equation|theorem|matrix)\b|[=+\-*/^]\s*\d", re.I),
        0.20,
    ),
    (
        "reasoning",
        re.compile(r"\b(step by step|explain why|analy[sz]e|compare|trade-?offs?|design)\b", re.I),
        0.15,
    ),
)


@dataclass(frozen=True, slots=True)
class HeuristicClassifier:
    """Length plus a few keyword markers: the baseline that needs no trained weights."""

    long_prompt_tokens: int = 1500

    @property
    def name(self) -> str:
        return "heuristic"

    def classify(self, messages: Sequence[ChatMessage], *, max_tokens: int | None) -> Complexity:
        text = "\n".join(message_text(m) for m in messages)
        tokens = count_tokens(text)
        length_part = min(tokens / self.long_prompt_tokens, 1.0) * 0.4
        score = length_part
        signals: list[tuple[float, str]] = [(length_part, f"{tokens} tokens")]
        for label, pattern, weight in _MARKERS:
            if pattern.search(text):
                score += weight
                signals.append((weight, label))
        if max_tokens is not None and max_tokens > 1024:
            score += 0.1
            signals.append((0.1, f"max_tokens {max_tokens}"))
        signals.sort(key=lambda item: -item[0])
        return Complexity(
            score=round(min(score, 1.0), 4),
            prompt_tokens=tokens,
            signals=tuple(label for _, label in signals),
        )


def build_classifier(
    kind: ClassifierKind, model_path: Path | None = None, model_name: str | None = None
) -> Classifier:
    """The classifier a policy names: a weights file by path, a shipped one by version
    (``model_name``), or the shipped default; blocking: call at start-up or reload."""
    if kind == "heuristic":
        return HeuristicClassifier()
    from gateway.routing.learned import load_learned_classifier, shipped_model_path

    if model_name is not None:
        model_path = shipped_model_path(model_name)
    return load_learned_classifier(model_path)
