"""The variants a node serves, and the memory bound their loading keeps to.

The bound (``--max-loaded-mb``, default half the memory available at start-up) counts each
loaded variant's weights and KV cache (:class:`~edge_node.memory.ModelMemory`, the
``edge_model_memory_bytes`` gauge). A variant not loaded yet is counted as its file size
plus the KV cache of a variant loaded before: variants of one model share its
architecture, and llama.cpp's KV cache is f16 whatever the weights' type. Before a load
that would go over the bound, the least recently used variants that no request is using
(none generating, queued, or being tokenized) are unloaded, oldest first. When that cannot
make room, because the other loaded variants are in use, the request is answered at once
with 503 ``overloaded`` and ``Retry-After``, not queued: a variant in use may stay busy for
as long as its traffic lasts, and the gateway fails over on a 503. A variant larger than the
bound on its own is 503 ``unavailable``. The registry (:mod:`edge_node.registry`) applies
these decisions, one load or unload at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .engine import Engine, EngineState
from .errors import Overloaded, Unavailable
from .settings import Settings

__all__ = ["GONE", "MIB", "Variant", "VariantBudget", "file_size"]

MIB = 2**20
GONE = (EngineState.FAILED, EngineState.CLOSED)
"""Engine states that hold no memory: the variant must be loaded again to serve."""


@dataclass(slots=True, eq=False, kw_only=True)
class Variant:
    """One served model and its engine while loaded (or loading)."""

    name: str
    settings: Settings
    file_bytes: int
    engine: Engine | None = None
    users: int = 0
    """Requests holding the variant (waiting for its load, tokenizing, queued, generating)."""
    last_used: float = 0.0

    @property
    def loaded(self) -> bool:
        return self.engine is not None and self.engine.state is EngineState.READY


class VariantBudget:
    """What each variant counts against the bound, and which idle ones to unload for a load."""

    def __init__(self, max_loaded_bytes: int | None, retry_after_s: int) -> None:
        self.max_loaded_bytes = max_loaded_bytes
        self._retry_after_s = retry_after_s
        self._kv_cache_bytes = 0  # of a variant seen loaded: the estimate for the others

    def estimate(self, variant: Variant) -> int:
        """What loading the variant will take: its file plus a known variant's KV cache."""
        return variant.file_bytes + self._kv_cache_bytes

    def remember_kv_cache(self, variants: Iterable[Variant]) -> None:
        """Keep a loaded variant's KV cache size: the estimate for the variants not loaded."""
        for variant in variants:
            engine = variant.engine
            if variant.loaded and engine is not None and engine.memory is not None:
                self._kv_cache_bytes = engine.memory.kv_cache_bytes
                return

    def bytes_of(self, variant: Variant) -> int:
        """What the variant holds now (its estimate while it loads; 0 when not loaded)."""
        engine = variant.engine
        if engine is None or engine.state in GONE:
            return 0
        if engine.memory is None:
            return self.estimate(variant)
        return engine.memory.total_bytes

    def loaded_bytes(self, variants: Iterable[Variant]) -> int:
        return sum(self.bytes_of(variant) for variant in variants)

    def victims(self, variant: Variant, needed: int, variants: Iterable[Variant]) -> list[Variant]:
        """The least recently used idle variants whose unloading makes room for ``needed``
        bytes, or an error when there is no such set (nothing is unloaded then)."""
        bound, retry = self.max_loaded_bytes, self._retry_after_s
        if bound is None:
            return []
        if needed > bound:
            raise Unavailable(
                f"The variant {variant.name!r} needs about {needed // MIB} MiB (weights and "
                f"KV cache), more than this node keeps loaded ({bound // MIB} MiB, "
                "--max-loaded-mb).",
                retry_after_s=retry,
            )
        others = [v for v in variants if v is not variant and self.bytes_of(v)]
        total = sum(self.bytes_of(v) for v in others)
        idle = sorted(
            (v for v in others if v.users == 0 and v.engine is not None and not v.engine.admitted),
            key=lambda v: v.last_used,
        )
        victims: list[Variant] = []
        for candidate in idle:
            if total + needed <= bound:
                break
            victims.append(candidate)
            total -= self.bytes_of(candidate)
        if total + needed > bound:
            busy = ", ".join(repr(v.name) for v in others if v not in victims)
            raise Overloaded(
                f"Loading the variant {variant.name!r} needs about {needed // MIB} MiB; "
                f"this node keeps {bound // MIB} MiB loaded and the variants holding the "
                f"rest ({busy}) are in use. Retry later or use another node.",
                retry_after_s=retry,
            )
        return victims


def file_size(path: Path) -> int:
    """The variant file's size, 0 when missing (its load then fails with llama.cpp's message)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
