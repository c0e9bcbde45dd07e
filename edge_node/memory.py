"""What the node holds in memory: the process's resident set, and per loaded model its
weights and KV cache.

Resident memory comes from ``/proc/self/status`` (``VmRSS`` now, ``VmHWM`` the peak),
so it is read only on Linux; elsewhere it is unknown (``None``). A model's weights are
``llama_model_size``; its KV cache is cells x bytes per cell, with K and V stored as
16-bit floats (llama.cpp's default cache type, which the node does not change) for every
layer and KV head. ``MemAvailable`` (``/proc/meminfo``) sizes the default bound on the
variants a node keeps loaded (:mod:`edge_node.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_KV_ELEMENT_BYTES = 2  # f16 K and V


@dataclass(frozen=True, slots=True, kw_only=True)
class ResidentMemory:
    current_bytes: int
    peak_bytes: int


def resident_memory(status: Path = _STATUS) -> ResidentMemory | None:
    """The process's resident set now and at its peak, or None where /proc is missing."""
    fields = _proc_kb_fields(status, {"VmRSS", "VmHWM"})
    if fields is None or "VmRSS" not in fields:
        return None
    return ResidentMemory(
        current_bytes=fields["VmRSS"], peak_bytes=fields.get("VmHWM", fields["VmRSS"])
    )


def _proc_kb_fields(path: Path, names: set[str]) -> dict[str, int] | None:
    """The ``Name: N kB`` lines of a /proc file among ``names``, in bytes; None where the
    file cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in names:
            fields[name] = int(value.split()[0]) * 1024  # reported in kB
    return fields


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelMemory:
    """The bytes one loaded model takes: weights, and the KV cache of its context."""

    weights_bytes: int
    kv_cells: int
    kv_bytes_per_cell: int

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv_cells * self.kv_bytes_per_cell

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes


def model_memory(llm: Any) -> ModelMemory:
    """Sizes of a loaded ``llama_cpp.Llama`` (weights and its context's KV cache)."""
    from llama_cpp import llama_cpp

    model = llm.model
    n_layer = llama_cpp.llama_model_n_layer(model)
    n_head = max(1, llama_cpp.llama_model_n_head(model))
    n_head_kv = llama_cpp.llama_model_n_head_kv(model)
    head_dim = llama_cpp.llama_model_n_embd(model) // n_head
    return ModelMemory(
        weights_bytes=int(llama_cpp.llama_model_size(model)),
        kv_cells=int(llm.n_ctx()),
        kv_bytes_per_cell=n_layer * 2 * n_head_kv * head_dim * _KV_ELEMENT_BYTES,
    )


_MEMINFO = Path("/proc/meminfo")
DEFAULT_LOADED_SHARE = 0.5
"""Share of the memory available at start-up that loaded variants may take by default."""


def available_memory_bytes(meminfo: Path = _MEMINFO) -> int | None:
    """Memory the kernel says new allocations can take without swapping (``MemAvailable``),
    or None where /proc is missing."""
    fields = _proc_kb_fields(meminfo, {"MemAvailable"})
    return None if fields is None else fields.get("MemAvailable")


def default_max_loaded_bytes(meminfo: Path = _MEMINFO) -> int | None:
    """The default bound on loaded variants: half of what is available now, so the node
    leaves room for the prompt cache, llama.cpp's compute buffers and the rest of the
    host; None (no bound) where the available memory cannot be read."""
    available = available_memory_bytes(meminfo)
    return None if available is None else int(available * DEFAULT_LOADED_SHARE)
