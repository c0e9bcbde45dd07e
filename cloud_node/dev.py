"""The profile that development, the tests and ``make run`` use, and the build a host needs.

Both development profiles serve the checkpoint that ``cloud_node prepare`` makes, under the
name the routing policy lists (``cloud-smollm2-135m``), on loopback; they differ only in
what the vLLM build needs. The profile follows the build *installed* in the vLLM
environment (see ``builds.detect_build_of``), never a guess from the hardware: a guess
that disagrees with the installation ends in the launcher's BuildMismatch.

Which build a host *should* have is the rule ``scripts/setup_venvs.sh vllm`` applies
when it creates that environment: the GPU build when ``nvidia-smi -L`` succeeds, the
CPU build otherwise. ``host_build`` states it once, for the tests that check the
installation against it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping

from cloud_node.errors import BuildMismatch
from cloud_node.profile import Build

__all__ = ["DEV_PROFILES", "SETUP_COMMAND", "dev_profile", "host_build", "nvidia_smi_exit"]

#: Bundled profile per build that serves ``prepared:smollm2`` as ``cloud-smollm2-135m``.
DEV_PROFILES: Mapping[Build, str] = {"cpu": "cpu", "gpu": "gpu-dev"}
#: Creates ``.venv-vllm`` with the build this host needs (run from the repository root).
SETUP_COMMAND = "scripts/setup_venvs.sh vllm"
NVIDIA_SMI_TIMEOUT_S = 20.0


def dev_profile(build: Build | None, *, python: str) -> str:
    """The development profile for the build installed for ``python``; BuildMismatch if none."""
    if build is None:
        raise BuildMismatch(
            f"vLLM is not installed for {python}: create the vLLM environment with "
            f"`{SETUP_COMMAND}` (or `make setup`), which installs the build this machine needs"
        )
    return DEV_PROFILES[build]


def host_build(nvidia_smi_exit_status: int | None) -> Build:
    """The build setup_venvs.sh installs: ``gpu`` when ``nvidia-smi -L`` exited 0, else ``cpu``.

    ``None`` stands for no ``nvidia-smi`` on PATH (or one that could not run at all).
    """
    return "gpu" if nvidia_smi_exit_status == 0 else "cpu"


def nvidia_smi_exit(timeout_s: float = NVIDIA_SMI_TIMEOUT_S) -> int | None:
    """Exit status of ``nvidia-smi -L``; None when it is missing, cannot start, or hangs."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return None
    try:
        result = subprocess.run(
            [command, "-L"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        # A driver that hangs cannot serve vLLM either.
        return None
    return result.returncode
