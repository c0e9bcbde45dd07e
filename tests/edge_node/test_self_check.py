"""The start-up self-check: a node whose model cannot generate exits with the reason.

A model that loads but cannot generate on this host is made for real: a copy of the
SmolLM2 GGUF whose final norm weights are NaN, so every logit llama.cpp computes is NaN
(what a faulty CPU kernel or a corrupt file gives).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from gguf import GGUFReader

from edge_node.model import load_model
from edge_node.self_check import SELF_CHECK_TOKENS, SelfCheckFailed, run_self_check
from edge_node.settings import Settings
from tests.edge_node.conftest import NodeFactory
from tests.fixtures.edge import EDGE_TEST_N_THREADS, start_edge_node, stop_edge_node

pytestmark = pytest.mark.edge_model


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default GGUF with ``output_norm.weight`` (float32) overwritten by NaNs."""
    from edge_node.settings import default_model_path

    source = default_model_path()
    assert source is not None
    path = tmp_path_factory.mktemp("models") / "nan-logits.gguf"
    shutil.copyfile(source, path)
    tensor = next(t for t in GGUFReader(path).tensors if t.name == "output_norm.weight")
    assert tensor.tensor_type.name == "F32"
    nans = np.full(int(tensor.n_elements), np.nan, dtype=np.float32).tobytes()
    assert len(nans) == tensor.n_bytes
    with path.open("r+b") as file:
        file.seek(tensor.data_offset)
        file.write(nans)
    return path


def _settings(model_path: Path, **fields: object) -> Settings:
    return Settings(model_path=model_path, n_threads=EDGE_TEST_N_THREADS, **fields)  # type: ignore[arg-type]


def test_the_real_model_passes(model_path: Path) -> None:
    model = load_model(_settings(model_path))
    try:
        result = run_self_check(model)
        assert 1 <= result.tokens <= SELF_CHECK_TOKENS
        assert result.text.strip()
        assert model.llm.n_tokens == 0  # the first request starts from an empty context
    finally:
        model.close()


def test_nan_logits_fail_with_the_reason(nan_model: Path) -> None:
    model = load_model(_settings(nan_model))
    try:
        with pytest.raises(SelfCheckFailed, match=r"decode step 0 produced 49152 of 49152 non-"):
            run_self_check(model)
    finally:
        model.close()


def test_an_error_raised_by_llama_cpp_is_the_reason(model_path: Path) -> None:
    # A context too small for the check's prompt: llama_decode itself refuses.
    model = load_model(_settings(model_path, n_ctx=16, n_batch=16, parallel=1))
    try:
        with pytest.raises(SelfCheckFailed, match="generation raised"):
            run_self_check(model)
    finally:
        model.close()


def test_a_window_too_small_for_the_check_fails_it_in_the_batching_engine(
    model_path: Path,
) -> None:
    # The batching engine's context is larger than one sequence's window: the check
    # must still refuse a window that cannot hold its prompt.
    model = load_model(_settings(model_path, n_ctx=16, parallel=2))
    try:
        with pytest.raises(SelfCheckFailed, match="context window of 16 tokens"):
            run_self_check(model)
    finally:
        model.close()


def test_a_node_that_fails_the_check_exits_non_zero_with_the_reason(
    nan_model: Path, tmp_path: Path
) -> None:
    log_path = tmp_path / "edge.log"
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="edge node exited with 1 at start-up") as caught:
        process, _ = start_edge_node(log_path, extra_args=["--model", str(nan_model)])
        stop_edge_node(process)  # only reached if it wrongly became healthy
    assert time.monotonic() - started < 60
    log = log_path.read_text(errors="replace")
    assert "self-check: decoding 4 tokens" in log  # said before running it
    assert "self-check failed: decode step 0 produced 49152 of 49152 non-finite logits" in log
    assert "exiting: the model cannot serve on this host: self-check failed" in log
    assert "Traceback" not in log
    assert "self-check failed" in str(caught.value)  # the log tail reaches the caller


def test_a_healthy_node_logs_its_repacking_and_check(tmp_path: Path) -> None:
    log_path = tmp_path / "edge.log"
    process, _ = start_edge_node(log_path)
    try:
        log = log_path.read_text(errors="replace")
    finally:
        stop_edge_node(process)
    assert process.returncode == 0
    assert "cpu backend: native build (" in log and "; weight repacking " in log
    assert "self-check passed: " in log


async def test_in_process_the_failure_is_on_health_and_reported(
    start_node: NodeFactory, http: aiohttp.ClientSession, nan_model: Path
) -> None:
    node = await start_node(model_path=nan_model, wait_ready=False)
    deadline = time.monotonic() + 60
    while True:
        async with http.get(f"{node.url}/health") as response:
            assert response.status == 503
            body = await response.json()
        if body["status"] == "failed":
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
    assert body["error"].startswith("self-check failed: decode step 0 produced")
    async with http.post(
        f"{node.url}/v1/chat/completions",
        json={"model": "edge", "messages": [{"role": "user", "content": "hi"}]},
    ) as response:
        assert response.status == 503
        assert "self-check failed" in (await response.json())["error"]["message"]
