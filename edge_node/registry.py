"""Several GGUF variants of a model on one node, loaded on demand within a memory bound.

Every served model is a *variant* with its own :class:`~edge_node.engine.Engine`: its own
worker thread, llama.cpp context (continuous batching as configured) and admission queue.
``--model`` (named ``--served-model-name``, also reachable as ``edge``) is loaded at
start-up, and ``/health`` turns 200 once it passed its self-check, as on a one-model node;
every ``--variant NAME=PATH`` is loaded on the first request that names it, on its
engine's thread (never on the event loop), while that request waits. Each load runs the
self-check, so a variant that cannot generate on this host is never served.

The bound (``--max-loaded-mb``) on what the loaded variants hold, and which idle ones are
unloaded to make room, least recently used first, are :mod:`edge_node.variant_budget`'s;
when no room can be made the request is answered at once with 503, not queued.

Loads and unloads happen one at a time (an asyncio lock held until the load has settled),
so every decision sees the other variants loaded or gone. A load that fails is reported to
the requests waiting for it (503 ``unavailable``) and tried again at the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from .engine import Engine, EngineState, FailureHandler
from .errors import Unavailable
from .memory import default_max_loaded_bytes
from .metrics import EdgeMetrics
from .model import ModelLoader, load_model
from .responses import EdgeModelCard
from .settings import TIER_MODEL_NAME, Settings
from .variant_budget import GONE, MIB, Variant, VariantBudget, file_size

__all__ = ["ModelRegistry", "VariantMetrics"]

log = logging.getLogger(__name__)


class VariantMetrics:
    """Loads, unloads and the bound, on the node's registry (no global state)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.loads = Counter(
            "edge_variant_loads",
            "Loads of a variant started (the --model one at start-up, the others on demand).",
            ["model"],
            registry=registry,
        )
        self.evictions = Counter(
            "edge_variant_evictions",
            "Variants unloaded to make room for another (least recently used first).",
            ["model"],
            registry=registry,
        )
        self.loaded = Gauge(
            "edge_variant_loaded",
            "1 for each variant loaded now, 0 for the others (read at scrape time).",
            ["model"],
            registry=registry,
        )
        self.loaded_bytes = Gauge(
            "edge_variants_loaded_bytes",
            "Weights and KV caches of the loaded variants, counted against the bound.",
            registry=registry,
        )
        self.max_loaded_bytes = Gauge(
            "edge_variants_max_loaded_bytes",
            "The bound on edge_variants_loaded_bytes (--max-loaded-mb); 0 = none.",
            registry=registry,
        )


class ModelRegistry:
    """The node's variants: which is loaded, loading on demand, unloading the least
    recently used idle ones to stay within the memory bound."""

    def __init__(
        self,
        settings: Settings,
        metrics: EdgeMetrics,
        loader: ModelLoader = load_model,
        *,
        on_failure: FailureHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._counters = VariantMetrics(metrics.registry)
        self._loader = loader
        self._clock = clock
        self.default = settings.served_model_name
        self.created = int(time.time())
        self._budget = VariantBudget(
            settings.max_loaded_bytes
            if settings.max_loaded_bytes is not None
            else default_max_loaded_bytes(),
            settings.retry_after_s,
        )
        self._variants: dict[str, Variant] = {}
        paths = ((settings.served_model_name, settings.model_path), *settings.variants)
        for name, path in paths:
            own = dataclasses.replace(
                settings, model_path=path, served_model_name=name, variants=()
            )
            self._variants[name] = Variant(name=name, settings=own, file_bytes=file_size(path))
        # The --model variant: its failure to load is the node's (the server exits on it).
        self._startup = Engine(
            self._variants[self.default].settings, metrics, loader, on_failure=on_failure
        )
        self._variants[self.default].engine = self._startup
        self._lock = asyncio.Lock()
        self._unloading: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- state ----------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        """The node's state: the start-up load's until it is ready, then ready until
        shutdown (unloading the ``--model`` variant later does not change it)."""
        if self._closed:
            return EngineState.CLOSED
        startup = self._startup.state
        return (
            startup if startup in (EngineState.LOADING, EngineState.FAILED) else (EngineState.READY)
        )

    @property
    def load_error(self) -> str | None:
        """Why the start-up load or self-check failed, if it did."""
        return self._startup.load_error

    def require_started(self) -> None:
        """503 while the start-up load runs, after it failed, or while shutting down."""
        if self.state is EngineState.READY:
            return
        if self._closed:
            retry = self._settings.retry_after_s
            raise Unavailable("The edge node is shutting down.", retry_after_s=retry)
        self._startup.require_ready()

    @property
    def max_loaded_bytes(self) -> int | None:
        return self._budget.max_loaded_bytes

    def loaded_bytes(self) -> int:
        return self._budget.loaded_bytes(self._variants.values())

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start loading the ``--model`` variant in its worker thread; returns at once."""
        self._counters.loads.labels(model=self.default).inc()
        for name in self._variants:
            self._counters.loaded.labels(model=name).set(0)
        self._startup.start()

    async def aclose(self) -> None:
        """Refuse new work, then close every engine (their requests end as on a one-model node)."""
        self._closed = True
        engines = [v.engine for v in self._variants.values() if v.engine is not None]
        await asyncio.gather(*(engine.aclose() for engine in engines))
        await self._settle_unloads()

    # -- serving ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, model: str) -> AsyncIterator[Engine]:
        """The ready engine of the variant ``model`` names (``edge``: the ``--model`` one),
        loaded first if need be, and kept loaded until the block ends.

        ``model`` must be one this node accepts (:func:`edge_node.schema.check_model`).
        """
        variant = self._variants[self.default if model == TIER_MODEL_NAME else model]
        variant.users += 1
        variant.last_used = self._clock()
        try:
            yield await self._ready(variant)
        finally:
            variant.users -= 1
            variant.last_used = self._clock()

    async def _ready(self, variant: Variant) -> Engine:
        self.require_started()
        engine = variant.engine
        if engine is None or engine.state in GONE:
            engine = await self._load(variant)
        await engine.settled.wait()  # returns at once when settled
        engine.require_ready()
        return engine

    async def _load(self, variant: Variant) -> Engine:
        async with self._lock:
            engine = variant.engine
            if engine is not None and engine.state not in GONE:
                return engine  # loaded by another request while this one waited
            self.require_started()
            budget = self._budget
            budget.remember_kv_cache(self._variants.values())
            await self._settle_unloads()
            needed = budget.estimate(variant)
            for victim in budget.victims(variant, needed, self._variants.values()):
                self._unload(victim)
            await self._settle_unloads()
            log.info(
                "loading variant %s (%s, about %d MiB with its KV cache; %d of %s MiB loaded)",
                variant.name,
                variant.settings.model_path,
                needed // MIB,
                self.loaded_bytes() // MIB,
                "unbounded" if self.max_loaded_bytes is None else self.max_loaded_bytes // MIB,
            )
            engine = variant.engine = Engine(variant.settings, self._metrics, self._loader)
            self._counters.loads.labels(model=variant.name).inc()
            engine.start()
            # Held until settled, so the next decision sees this variant's real size.
            await engine.settled.wait()
            return engine

    def _unload(self, variant: Variant) -> None:
        """Take the variant out now; its engine closes in a task (awaited by the next load)."""
        engine = variant.engine
        assert engine is not None
        variant.engine = None
        self._counters.evictions.labels(model=variant.name).inc()
        log.info("unloading variant %s (least recently used, idle) to make room", variant.name)
        task = asyncio.create_task(self._close(variant.name, engine))
        self._unloading.add(task)
        task.add_done_callback(self._unloading.discard)

    async def _close(self, name: str, engine: Engine) -> None:
        await engine.aclose()
        self._metrics.clear_model_memory(name)

    async def _settle_unloads(self) -> None:
        # asyncio.wait: a cancelled waiter leaves the closes running (the next load waits).
        if self._unloading:
            await asyncio.wait(set(self._unloading))

    # -- reports ------------------------------------------------------------------------

    def cards(self) -> list[EdgeModelCard]:
        """``/v1/models``: every variant, loaded or not, with its sizes."""
        cards: list[EdgeModelCard] = []
        for variant in self._variants.values():
            card: EdgeModelCard = {
                "id": variant.name,
                "object": "model",
                "created": self.created,
                "owned_by": "edge-node",
                "loaded": variant.loaded,
                "file_bytes": variant.file_bytes,
            }
            engine = variant.engine
            if variant.loaded and engine is not None and engine.n_ctx is not None:
                card["max_model_len"] = engine.n_ctx
                if engine.memory is not None:
                    card["memory_bytes"] = engine.memory.total_bytes
            cards.append(card)
        return cards

    def status(self) -> dict[str, object]:
        """``/health``'s load figures: an engine's own report with ``running``, ``queued``
        and ``kv_cells`` summed over the loaded variants (``capacity`` is each variant's),
        then per variant with the bound."""
        engines = self._engines()
        running = sum(engine.running for engine in engines)
        queued = sum(engine.queued for engine in engines)
        status = (engines[0] if engines else self._startup).status()
        status.update(running=running, queued=queued)
        status.pop("kv_cells", None)
        cells = _kv_cells(engines)
        if cells is not None:
            status["kv_cells"] = dict(zip(("running", "cached", "total"), cells, strict=True))
        models: dict[str, object] = {}
        for variant in self._variants.values():
            engine = variant.engine
            entry: dict[str, object] = {
                "state": "unloaded" if engine is None else engine.state.value,
                "file_bytes": variant.file_bytes,
            }
            if variant.loaded and engine is not None:
                entry["running"] = engine.running
                entry["queued"] = engine.queued
                if engine.memory is not None:
                    entry["memory_bytes"] = engine.memory.total_bytes
            models[variant.name] = entry
        status["variants"] = {
            "max_loaded_bytes": self.max_loaded_bytes,
            "loaded_bytes": self.loaded_bytes(),
            "models": models,
        }
        return status

    def model_memory(self) -> dict[str, dict[str, int]]:
        """Weights and KV cache of each loaded variant (``/health``'s ``memory.models``)."""
        memory: dict[str, dict[str, int]] = {}
        for variant in self._variants.values():
            engine = variant.engine
            if variant.loaded and engine is not None and engine.memory is not None:
                memory[variant.name] = {
                    "weights_bytes": engine.memory.weights_bytes,
                    "kv_cache_bytes": engine.memory.kv_cache_bytes,
                    "kv_bytes_per_cell": engine.memory.kv_bytes_per_cell,
                }
        return memory

    def refresh_metrics(self) -> None:
        """Set the variant gauges; with several variants, also the node-wide gauges that
        each engine sets to its own figure (KV cells, prompt cache, model loaded) to the
        sum over the loaded variants. Called before each scrape."""
        counters = self._counters
        for variant in self._variants.values():
            counters.loaded.labels(model=variant.name).set(1 if variant.loaded else 0)
        counters.loaded_bytes.set(self.loaded_bytes())
        counters.max_loaded_bytes.set(self.max_loaded_bytes or 0)
        if len(self._variants) == 1:
            return  # the one engine's own figures are the node's
        metrics, engines = self._metrics, self._engines()
        metrics.model_loaded.set(1 if self.state is EngineState.READY else 0)
        running, cached, total = _kv_cells(engines) or (0, 0, 0)
        metrics.set_kv_cells(running, cached)
        metrics.kv_cells_total.set(total)
        caches = [cache for engine in engines if (cache := engine.prompt_cache) is not None]
        metrics.cache_bytes.set(sum(cache.size_bytes for cache in caches))
        metrics.cache_entries.set(sum(len(cache) for cache in caches))

    def _engines(self) -> list[Engine]:
        return [v.engine for v in self._variants.values() if v.loaded and v.engine is not None]


def _kv_cells(engines: list[Engine]) -> tuple[int, int, int] | None:
    """KV cells (running, cached, total) summed over the engines that report them; None
    when none does yet."""
    cells = [c for engine in engines if (c := engine.kv_cells()) is not None]
    if not cells:
        return None
    running, cached, total = (sum(column) for column in zip(*cells, strict=True))
    return running, cached, total
