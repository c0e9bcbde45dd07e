"""Which pushes become a decision's signals, and in what order (strongest first, then name)."""

from __future__ import annotations

import math

import pytest

from gateway.routing.features import FEATURE_NAMES, Features
from gateway.routing.learned import LinearComplexityModel, _signals, load_learned_classifier

MODEL = load_learned_classifier(None).model
FEATURES = Features(
    values=tuple(0.0 for _ in FEATURE_NAMES), words=frozenset(), prompt_tokens=7,
    prompt_tokens_exact=True,
)  # fmt: skip


@pytest.mark.parametrize(
    ("parts", "towards_cloud", "expected"),
    [
        # Ties go by name; only pushes in the score's direction; four at most.
        ({"zeta": 0.5, "alpha": 0.5, "mu": 0.9, "down": -1.0}, True, ("mu", "alpha", "zeta")),
        ({"zeta": 0.5, "alpha": 0.5, "mu": 0.9, "down": -1.0}, False, ("down",)),
        ({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5}, True, ("e", "d", "c", "b")),
        ({"a": -0.1, "b": 0.0}, True, ()),
        ({"length": 2.0, "wording": 1.0}, True, ("7 tokens", "wording")),
    ],
)
def test_signals_order(
    parts: dict[str, float], towards_cloud: bool, expected: tuple[str, ...]
) -> None:
    assert _signals(MODEL, parts, FEATURES, towards_cloud=towards_cloud) == expected


def test_contributions_skip_unweighted_and_not_applicable_features() -> None:
    n = len(FEATURE_NAMES)
    model = LinearComplexityModel(
        version="t",
        intercept=0.0,
        lows=(-math.inf,) * n,
        highs=(1.0,) * n,
        means=(0.5,) * n,
        inverse_stds=(2.0,) * n,
        weights=tuple(0.0 if j == 1 else 1.0 for j in range(n)),
        vocabulary={"why": 0.25},
        knots=(0.0, 1.0),
    )
    values = [3.0] * n  # above the high: clipped to 1.0, so (1.0 - 0.5) * 2.0 each
    values[2] = math.nan  # does not apply: adds nothing
    features = Features(
        values=tuple(values), words=frozenset({"why", "sky"}), prompt_tokens=1,
        prompt_tokens_exact=True,
    )  # fmt: skip
    parts = model.contributions(features)
    assert FEATURE_NAMES[1] not in parts and FEATURE_NAMES[2] not in parts
    assert parts["length"] == 4.0  # the four length views, summed under one key
    assert parts[FEATURE_NAMES[4]] == 1.0
    assert parts["wording"] == 0.25
    assert next(iter(parts)) == "length"  # in feature order: log_chars_total comes first
