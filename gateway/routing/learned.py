"""The learned complexity classifier: a small linear model over cheap features, pure Python.

The weights come from ``scripts/train_classifier.py`` as a versioned JSON file
(``models/complexity-v2.json`` by default). Inference needs neither numpy nor scikit-learn:
standardise the dense features, take a dot product, add the weights of the vocabulary
words present, and map the raw number onto its training percentile, so the score is in
[0, 1] and ``cloud_above: 0.7`` sends about 30 % of training-like traffic to the cloud.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from gateway.routing.classifier import Complexity
from gateway.routing.features import (
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    FEATURE_SIGNALS,
    LENGTH_FEATURES,
    OPTIONAL_FEATURE_GROUPS,
    Features,
    extract_features,
)
from gateway.routing.tasks import TaskType, open_ended_task
from hybrid_common.protocol import ChatMessage

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_PATH = MODELS_DIR / "complexity-v2.json"
MODEL_FORMAT = "gateway.complexity-model/1"
MAX_SIGNALS = 4
_LENGTH = "length"
_WORDING = "wording"


class ModelFileError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinearComplexityModel:
    """Weights as trained; :meth:`raw` is the model's whole arithmetic."""

    version: str
    intercept: float
    lows: tuple[float, ...]
    highs: tuple[float, ...]
    """Training range of each feature; inputs are clipped into it (infinite for priors)."""
    means: tuple[float, ...]
    inverse_stds: tuple[float, ...]
    weights: tuple[float, ...]
    vocabulary: Mapping[str, float]
    knots: tuple[float, ...]
    """Raw scores at the training percentiles 0, 1, ..., 100 (any count >= 2 works)."""
    _terms: tuple[tuple[int, str, float, float, float, float, float], ...] = field(
        init=False, repr=False, compare=False
    )
    """(index, signal key, low, high, mean, inverse std, weight) of each feature with a
    weight, in feature order: what :meth:`contributions` reads per request, prepared once."""
    feature_groups: frozenset[str] = field(init=False, repr=False, compare=False)
    """The optional feature groups (:data:`~gateway.routing.features.OPTIONAL_FEATURE_GROUPS`)
    that hold a weighted feature: the only ones :meth:`LearnedClassifier.classify` has
    computed."""

    def __post_init__(self) -> None:
        terms = tuple(
            (j, _LENGTH if name in LENGTH_FEATURES else name, low, high, mean, inv, w)
            for j, (name, low, high, mean, inv, w) in enumerate(
                zip(
                    FEATURE_NAMES,
                    self.lows,
                    self.highs,
                    self.means,
                    self.inverse_stds,
                    self.weights,
                    strict=True,
                )
            )
            if w
        )
        object.__setattr__(self, "_terms", terms)
        weighted = {FEATURE_NAMES[term[0]] for term in terms}
        groups = frozenset(
            group
            for group, names in OPTIONAL_FEATURE_GROUPS.items()
            if weighted.intersection(names)
        )
        object.__setattr__(self, "feature_groups", groups)

    def contributions(self, features: Features) -> dict[str, float]:
        """Each feature's push away from the training average (length views summed)."""
        out: dict[str, float] = {}
        values = features.values
        for j, key, low, high, mean, inv, w in self._terms:
            x = values[j]
            if x == x:  # x != x only for NaN: the feature does not apply, adds nothing
                clipped = low if x < low else high if x > high else x
                out[key] = out.get(key, 0.0) + w * (clipped - mean) * inv
        vocabulary = self.vocabulary
        if vocabulary:
            # Hundreds of small word weights explain nothing one by one: they are one signal.
            # fsum: exact, so independent of the set's iteration order, which follows string
            # hashing and changes between processes (PYTHONHASHSEED): same request, same score.
            out[_WORDING] = math.fsum(vocabulary.get(word, 0.0) for word in features.words)
        return out

    def raw(self, features: Features) -> float:
        return self.intercept + math.fsum(self.contributions(features).values())

    def calibrate(self, raw: float) -> float:
        """Piecewise-linear map onto the training percentile, clipped to [0, 1]."""
        knots = self.knots
        if raw <= knots[0]:
            return 0.0
        if raw >= knots[-1]:
            return 1.0
        i = bisect.bisect_right(knots, raw)
        lo, hi = knots[i - 1], knots[i]
        frac = (raw - lo) / (hi - lo) if hi > lo else 0.0
        return (i - 1 + frac) / (len(knots) - 1)


@dataclass(frozen=True, slots=True)
class LearnedClassifier:
    """Scores a request with a :class:`LinearComplexityModel`; pure and deterministic."""

    model: LinearComplexityModel

    @property
    def name(self) -> str:
        return f"learned:{self.model.version}"

    def classify(self, messages: Sequence[ChatMessage], *, max_tokens: int | None) -> Complexity:
        features = extract_features(
            messages, max_tokens=max_tokens, groups=self.model.feature_groups
        )
        parts = self.model.contributions(features)
        raw = self.model.intercept + math.fsum(parts.values())
        score = round(self.model.calibrate(raw), 4)
        task = _open_ended_task(features)
        if task is not None and task.floor > score:
            # Outside the training distribution (no options): a documented prior decides.
            signals = _signals(self.model, parts, features, towards_cloud=True)
            return Complexity(
                score=task.floor,
                prompt_tokens=features.prompt_tokens,
                signals=(task.label, *signals[: MAX_SIGNALS - 1]),
            )
        return Complexity(
            score=score,
            prompt_tokens=features.prompt_tokens,
            signals=_signals(self.model, parts, features, towards_cloud=score >= 0.5),
        )


def _signals(
    model: LinearComplexityModel,
    parts: Mapping[str, float],
    features: Features,
    *,
    towards_cloud: bool,
) -> tuple[str, ...]:
    """Words for the strongest pushes in the direction the score went, strongest first."""
    sign = 1.0 if towards_cloud else -1.0
    # Strongest first, ties by name: (-push, key) tuples in their natural order.
    pushes = sorted([(-(sign * v), k) for k, v in parts.items() if sign * v > 0])
    words: list[str] = []
    for _, key in pushes[:MAX_SIGNALS]:
        if key == _LENGTH:
            words.append(_length_words(features))
        elif key in FEATURE_SIGNALS:
            j = _INDEX[key]
            more, less = FEATURE_SIGNALS[key]
            words.append(more if features.values[j] > model.means[j] else less)
        else:
            words.append(key)
    # Two features can share a word ("numbers"): keep the first, strongest mention.
    return tuple(dict.fromkeys(words))


def _length_words(features: Features) -> str:
    """The size the length push is about: the prompt's, or in a conversation the last user
    message's (the length features read it, not the history: "~2058 tokens" as the reason
    for keeping a long chat at the edge would say the opposite of what was judged)."""
    if features.last_user_tokens is None:
        tokens, exact, prefix = features.prompt_tokens, features.prompt_tokens_exact, ""
    else:
        tokens, exact, prefix = features.last_user_tokens, features.last_user_exact, "last turn "
    unit = "token" if tokens == 1 else "tokens"
    return f"{prefix}{'' if exact else '~'}{tokens} {unit}"


_INDEX = {name: j for j, name in enumerate(FEATURE_NAMES)}
_CHOICES = _INDEX["choices"]
_CODE = _INDEX["code"]
# The code feature counts 3 per ``` fence plus code words: a fenced block (two fences),
# or about six code words, is code.
_CODE_BLOCK = math.log1p(6)


def _open_ended_task(features: Features) -> TaskType | None:
    """The task type of a prompt without options (the training prompts all have them)."""
    if features.values[_CHOICES] == features.values[_CHOICES]:  # not NaN: multiple choice
        return None
    return open_ended_task(features.words, has_code_block=features.values[_CODE] >= _CODE_BLOCK)


def parse_model(doc: object, *, source: str) -> LinearComplexityModel:
    """Validate a decoded weights file; raises :class:`ModelFileError` naming the problem."""

    def fail(message: str) -> ModelFileError:
        return ModelFileError(f"{source}: {message}")

    if not isinstance(doc, dict):
        raise fail("not a JSON object")
    if doc.get("format") != MODEL_FORMAT:
        raise fail(f"format must be {MODEL_FORMAT!r}, got {doc.get('format')!r}")
    if doc.get("feature_set_version") != FEATURE_SET_VERSION:
        raise fail(
            f"trained on feature set {doc.get('feature_set_version')!r}, this gateway computes "
            f"feature set {FEATURE_SET_VERSION}: retrain with python -m gateway train"
        )
    version = doc.get("version")
    if not isinstance(version, str) or not version:
        raise fail("version must be a non-empty string")
    features = doc.get("features")
    if not isinstance(features, list) or [
        f.get("name") if isinstance(f, dict) else None for f in features
    ] != list(FEATURE_NAMES):
        raise fail(f"features must list, in order: {', '.join(FEATURE_NAMES)}")
    lows, highs, means, inverse_stds, weights = [], [], [], [], []
    for f in features:
        mean, std, weight = (
            _number(f.get(k), fail, f"{f['name']}.{k}") for k in ("mean", "std", "weight")
        )
        if std <= 0:
            raise fail(f"{f['name']}.std must be > 0")
        low = -math.inf if f.get("low") is None else _number(f["low"], fail, f"{f['name']}.low")
        high = math.inf if f.get("high") is None else _number(f["high"], fail, f"{f['name']}.high")
        if low > high:
            raise fail(f"{f['name']}: low must be <= high")
        lows.append(low)
        highs.append(high)
        means.append(mean)
        inverse_stds.append(1.0 / std)
        weights.append(weight)
    vocabulary = doc.get("vocabulary")
    if not isinstance(vocabulary, dict):
        raise fail("vocabulary must be an object of word: weight")
    words = {str(w): _number(v, fail, f"vocabulary.{w}") for w, v in vocabulary.items()}
    knots = doc.get("calibration")
    if not isinstance(knots, list) or len(knots) < 2:
        raise fail("calibration must list at least two raw-score knots")
    knot_values = tuple(_number(k, fail, "calibration") for k in knots)
    if any(b < a for a, b in itertools.pairwise(knot_values)):
        raise fail("calibration knots must not decrease")
    return LinearComplexityModel(
        version=version,
        intercept=_number(doc.get("intercept"), fail, "intercept"),
        lows=tuple(lows),
        highs=tuple(highs),
        means=tuple(means),
        inverse_stds=tuple(inverse_stds),
        weights=tuple(weights),
        vocabulary=MappingProxyType(words),
        knots=knot_values,
    )


def _number(value: object, fail: Callable[[str], ModelFileError], key: str) -> float:
    # bool is an int subclass; true/false as a weight is a broken file, not 1.0/0.0.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise fail(f"{key} must be a finite number, got {value!r}")
    return float(value)


def load_model(path: Path) -> LinearComplexityModel:
    """Read and validate a weights file (blocking: call at start-up or on reload)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{path}: not UTF-8 text") from exc
    return parse_model(doc, source=str(path))


def shipped_model_path(name: str) -> Path:
    """The weights file shipped as version ``name``; ModelFileError names the ones there are."""
    path = MODELS_DIR / f"{name}.json"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in MODELS_DIR.glob("*.json")))
        raise ModelFileError(f"no shipped weights named {name!r} (shipped: {shipped})")
    return path


def load_learned_classifier(model_path: Path | None = None) -> LearnedClassifier:
    """The classifier for a weights file; None means the shipped default (complexity-v2).

    Raises ``OSError`` when the file cannot be read and :class:`ModelFileError` (a
    ``ValueError``) when it is not a usable model, which the policy loader reports.
    """
    return LearnedClassifier(load_model(model_path or DEFAULT_MODEL_PATH))


__all__ = [
    "DEFAULT_MODEL_PATH",
    "MODEL_FORMAT",
    "LearnedClassifier",
    "LinearComplexityModel",
    "ModelFileError",
    "load_learned_classifier",
    "load_model",
    "parse_model",
    "shipped_model_path",
]
