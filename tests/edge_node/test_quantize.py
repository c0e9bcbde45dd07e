"""``python -m edge_node quantize`` with llama.cpp's quantizer on the real SmolLM2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from edge_node.model import load_model
from edge_node.self_check import run_self_check
from edge_node.settings import Settings
from tests.fixtures.edge import EDGE_TEST_N_THREADS
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.edge_model


def quantize(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_node", "quantize", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_an_untied_q4_0_variant_is_written_and_serves(model_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "variant.gguf"
    result = quantize(
        str(model_path), "--type", "Q4_0", "--untie-output", "--output-tensor-type", "Q4_0",
        "--output", str(target), "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {target}" in result.stdout
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(target).tensors}
    assert types["output.weight"] == "Q4_0"  # the untied copy, in a repackable type
    assert types["blk.0.ffn_up.weight"] == "Q4_0"
    assert not list(tmp_path.glob("*.partial"))
    model = load_model(
        Settings(model_path=target, n_ctx=256, parallel=1, n_threads=EDGE_TEST_N_THREADS)
    )
    try:
        assert run_self_check(model).tokens >= 1
    finally:
        model.close()


def test_an_unknown_type_is_a_usage_error(model_path: Path, tmp_path: Path) -> None:
    result = quantize(str(model_path), "--type", "Q9_9", "--output", str(tmp_path / "x.gguf"))
    assert result.returncode == 2
    assert "unknown llama.cpp file type 'Q9_9'" in result.stderr
    assert not (tmp_path / "x.gguf").exists()
