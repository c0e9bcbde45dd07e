"""Load signals of a vLLM node, read from its Prometheus ``/metrics`` page.

A small parser instead of ``prometheus_client``'s: a vLLM page is mostly histograms the
gateway does not need, so lines are filtered by prefix before anything is split, and
the three gauges that matter are summed (or maxed) over their label sets. The gateway
polls every node every few seconds; this keeps that cheap. Pure: text in, value out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["NodeLoad", "load_score", "parse_vllm_metrics"]

_WAITING = "vllm:num_requests_waiting"
_RUNNING = "vllm:num_requests_running"
_KV_USAGE = "vllm:kv_cache_usage_perc"
# Name before vLLM 0.10; still read so that older clusters get balanced too.
_KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"
_NAMES = (_WAITING, _RUNNING, _KV_USAGE, _KV_USAGE_OLD)
_PREFIXES = ("vllm:num_requests_", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLoad:
    """Queue and KV-cache pressure of one vLLM server (all engines summed up)."""

    waiting: float
    running: float
    kv_cache_usage: float  # fraction in [0, 1] of the fullest engine's KV cache


def parse_vllm_metrics(text: str) -> NodeLoad:
    """Read a node's load from Prometheus text; ValueError if it is not a vLLM page.

    Requests are summed over label sets (one per model name and engine); KV-cache usage
    is the largest over engines, because the fullest engine is the one that preempts.
    Unknown lines, comments, NaN samples and malformed lines are skipped.
    """
    sums: dict[str, float] = {}
    peaks: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith(_PREFIXES):
            continue
        sample = _parse_sample(line)
        if sample is None:
            continue
        name, value = sample
        sums[name] = sums.get(name, 0.0) + value
        peaks[name] = max(peaks.get(name, value), value)
    if _WAITING not in sums and _RUNNING not in sums:
        raise ValueError(f"no {_WAITING} or {_RUNNING} samples: not a vLLM /metrics page")
    kv = peaks.get(_KV_USAGE, peaks.get(_KV_USAGE_OLD, 0.0))
    return NodeLoad(
        waiting=sums.get(_WAITING, 0.0),
        running=sums.get(_RUNNING, 0.0),
        kv_cache_usage=min(max(kv, 0.0), 1.0),
    )


def load_score(
    load: NodeLoad, *, waiting_weight: float = 4.0, kv_cache_weight: float = 8.0
) -> float:
    """How busy a node is, in "running requests" units; lower means less loaded.

    ``score = running + waiting_weight * waiting + kv_cache_weight * kv_cache_usage``

    A waiting request weighs 4 running ones: vLLM only queues when its batch is full
    (``max-num-seqs``) or its KV cache is, so a queue means a new request's first token
    waits for others to finish. A full KV cache weighs 8 running requests: near it, vLLM
    preempts and recomputes sequences, and long prompts stall. An idle node scores 0.
    """
    return load.running + waiting_weight * load.waiting + kv_cache_weight * load.kv_cache_usage


def _parse_sample(line: str) -> tuple[str, float] | None:
    """``name{labels} value [timestamp]`` -> (name, value) for the metrics read here."""
    brace = line.find("{")
    if brace == -1:
        name, _, rest = line.partition(" ")
    else:
        name = line[:brace]
        end = _labels_end(line, brace)
        if end == -1:
            return None
        rest = line[end + 1 :]
    if name not in _NAMES:
        # e.g. vllm:num_requests_waiting_by_reason, or a _created series
        return None
    fields = rest.split()
    if not fields:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    if math.isnan(value) or math.isinf(value):
        return None
    return name, value


def _labels_end(line: str, start: int) -> int:
    """Index of the ``}`` closing the label set at ``start``; label values may hold ``}``."""
    quoted = False
    escaped = False
    for index in range(start + 1, len(line)):
        char = line[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "}" and not quoted:
            return index
    return -1
