"""Prometheus metrics of one edge node, on a registry owned by the app (no global state).

prometheus_client metrics are thread-safe, so the engine's worker thread and the event
loop both record into the same objects.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .memory import ModelMemory, resident_memory

# A request counts as a prompt-cache hit when at least this share of its prompt came
# from a saved KV state; the token counters below give the exact split.
CACHE_HIT_MIN_FRACTION = 0.5

_TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TPS_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 400, 800, 1600, 3200)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionStats:
    """What one finished generation reports to the metrics."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    queue_wait_s: float
    time_to_first_token_s: float | None
    decode_s: float


class EdgeMetrics:
    """All metrics of the node; ``render()`` gives the Prometheus text exposition."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = (
            registry if registry is not None else CollectorRegistry(auto_describe=True)
        )
        self.requests = Counter(
            "edge_requests",
            "Chat completion requests by outcome code ('ok', 'cancelled' or an error code).",
            ["code"],
            registry=r,
        )
        self.in_flight = Gauge(
            "edge_requests_in_flight",
            "Admitted requests not finished yet (generating + queued).",
            registry=r,
        )
        self.queue_depth = Gauge(
            "edge_queue_depth", "Admitted requests waiting for the model.", registry=r
        )
        self.queue_capacity = Gauge(
            "edge_queue_capacity",
            "Requests admitted at once (1 generating + the queue length).",
            registry=r,
        )
        self.model_loaded = Gauge(
            "edge_model_loaded", "1 once the model is loaded and serving.", registry=r
        )
        self.prompt_tokens = Counter(
            "edge_prompt_tokens", "Prompt tokens of requests that ran.", registry=r
        )
        self.completion_tokens = Counter(
            "edge_completion_tokens",
            "Completion tokens generated (cancelled requests included).",
            registry=r,
        )
        self.queue_wait = Histogram(
            "edge_queue_wait_seconds",
            "Time from admission to the start of generation.",
            buckets=_TTFT_BUCKETS_S,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "edge_time_to_first_token_seconds",
            "Time from admission to the first generated token (queue wait included).",
            buckets=_TTFT_BUCKETS_S,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "edge_decode_tokens_per_second",
            "Decode speed of a request after its first token.",
            buckets=_TPS_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "edge_prompt_cache_hits",
            f"Requests with >= {CACHE_HIT_MIN_FRACTION:.0%} of the prompt from saved KV state.",
            registry=r,
        )
        self.cache_misses = Counter(
            "edge_prompt_cache_misses",
            "Requests whose prompt was mostly evaluated anew.",
            registry=r,
        )
        self.cache_hit_tokens = Counter(
            "edge_prompt_cache_hit_tokens", "Prompt tokens reused from saved KV state.", registry=r
        )
        self.cache_bytes = Gauge(
            "edge_prompt_cache_bytes", "Bytes of KV state held by the prompt cache.", registry=r
        )
        self.cache_entries = Gauge(
            "edge_prompt_cache_entries", "KV states held by the prompt cache.", registry=r
        )
        self.sequences_running = Gauge(
            "edge_sequences_running",
            "Requests being decoded now (at most --parallel; 1 for the serial engine).",
            registry=r,
        )
        self.sequences_capacity = Gauge(
            "edge_sequences_capacity",
            "Requests that may be decoded at once (--parallel).",
            registry=r,
        )
        self.decode_steps = Counter(
            "edge_decode_steps",
            "llama_decode calls of the batching engine (one per step for all sequences).",
            registry=r,
        )
        self.preemptions = Counter(
            "edge_preemptions",
            "Sequences whose KV cells were freed because the shared pool (--kv-unified) ran "
            "short; each is evaluated again later.",
            registry=r,
        )
        self.draft_tokens = Counter(
            "edge_speculative_draft_tokens",
            "Draft tokens proposed by prompt lookup (--speculative) and verified by the model.",
            registry=r,
        )
        self.accepted_tokens = Counter(
            "edge_speculative_accepted_tokens",
            "Draft tokens the request's own sampling agreed with: emitted without a decoding "
            "step of their own.",
            registry=r,
        )
        self.kv_cells = Gauge(
            "edge_kv_cells_used",
            "KV cache cells holding tokens: 'running' for requests being decoded, 'cached' "
            "for prefixes kept for reuse (freed first when cells run short).",
            ["state"],
            registry=r,
        )
        self.kv_cells_total = Gauge(
            "edge_kv_cells_total", "KV cache cells of the model's context.", registry=r
        )
        self.model_memory = Gauge(
            "edge_model_memory_bytes",
            "Bytes of a loaded model: its weights and its context's KV cache.",
            ["model", "part"],
            registry=r,
        )
        self.resident_memory = Gauge(
            "edge_resident_memory_bytes",
            "Resident memory of the node process (VmRSS), read at scrape time.",
            registry=r,
        )
        self.resident_memory_peak = Gauge(
            "edge_resident_memory_peak_bytes",
            "Peak resident memory of the node process (VmHWM), read at scrape time.",
            registry=r,
        )
        self.resident_memory.set_function(lambda: _resident(peak=False))
        self.resident_memory_peak.set_function(lambda: _resident(peak=True))

    def record_drafts(self, drafted: int, accepted: int) -> None:
        """One sequence's drafts in one decoding step, and how many the model accepted."""
        self.draft_tokens.inc(drafted)
        self.accepted_tokens.inc(accepted)

    def speculation(self) -> dict[str, int | float | None]:
        """The draft counters and their ratio, for ``/health``."""
        drafted, accepted = _total(self.draft_tokens), _total(self.accepted_tokens)
        rate = round(accepted / drafted, 4) if drafted else None
        return {"draft_tokens": drafted, "accepted_tokens": accepted, "acceptance_rate": rate}

    def set_kv_cells(self, running: int, cached: int) -> None:
        self.kv_cells.labels(state="running").set(running)
        self.kv_cells.labels(state="cached").set(cached)

    def set_model_memory(self, model: str, memory: ModelMemory) -> None:
        self.model_memory.labels(model=model, part="weights").set(memory.weights_bytes)
        self.model_memory.labels(model=model, part="kv_cache").set(memory.kv_cache_bytes)
        self.kv_cells_total.set(memory.kv_cells)

    def clear_model_memory(self, model: str) -> None:
        """Drop an unloaded model's ``edge_model_memory_bytes`` series (absent ones too)."""
        for part in ("weights", "kv_cache"):
            with contextlib.suppress(KeyError):
                self.model_memory.remove(model, part)

    def record_completion(self, stats: CompletionStats) -> None:
        """Record one generation (finished or cancelled) that got to run."""
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.completion_tokens.inc(stats.completion_tokens)
        self.cache_hit_tokens.inc(stats.cached_tokens)
        if (
            stats.prompt_tokens
            and stats.cached_tokens >= CACHE_HIT_MIN_FRACTION * stats.prompt_tokens
        ):
            self.cache_hits.inc()
        else:
            self.cache_misses.inc()
        self.queue_wait.observe(stats.queue_wait_s)
        if stats.time_to_first_token_s is not None:
            self.time_to_first_token.observe(stats.time_to_first_token_s)
        if stats.completion_tokens >= 2 and stats.decode_s > 0:
            self.tokens_per_second.observe((stats.completion_tokens - 1) / stats.decode_s)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _total(counter: Counter) -> int:
    """A counter without labels, read from that one metric (``get_sample_value`` would
    collect every metric of the registry)."""
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                return int(sample.value)
    return 0


def _resident(*, peak: bool) -> float:
    memory = resident_memory()
    if memory is None:
        return float("nan")
    return float(memory.peak_bytes if peak else memory.current_bytes)
