"""What the stack starts: ports, options, and the two ways a start-up ends early."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from scripts.stack.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUN_DIR = REPO_ROOT / ".run"
DEFAULT_POLICY = REPO_ROOT / "policies" / "default.yaml"
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup_venvs.sh"
# vLLM on 2 CPU cores: 1.5-4 minutes (torch.compile on a cold cache), plus the first
# checkpoint conversion (about 45 s). A GPU start downloads nothing for the default model.
DEFAULT_STARTUP_TIMEOUT_S = 900.0
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    """When the stack restarts a service that died by itself, and when it gives up on it.

    A run *failed quickly* when the service never became ready or died less than
    ``stable_after_s`` after it did. The n-th quick failure in a row waits
    ``first_delay_s * 2**(n-1)`` (1, 2, 4, 8, 16 s), capped at ``max_delay_s``, before the
    restart; after ``max_quick_failures`` in a row the stack gives up on the service. A
    failure after a stable run starts the count again at one.
    """

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    stable_after_s: float = 60.0
    max_quick_failures: int = 6

    def delay_s(self, failures: int) -> float:
        """The wait before restarting after ``failures`` quick failures in a row (>= 1)."""
        return float(min(self.first_delay_s * 2 ** max(failures - 1, 0), self.max_delay_s))

    def gives_up(self, failures: int) -> bool:
        return failures >= self.max_quick_failures


class StackError(Exception):
    """The stack could not start; the message says what to do about it."""


class StackCancelled(Exception):
    """``start_stack``'s ``cancelled`` callback asked to give up; nothing is left running."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ports:
    """Loopback ports of the stack's processes; 0 picks a free port at start-up."""

    gateway: int = 8080
    edge: int = 8001
    cloud: int = 8002
    redis: int = 6379

    @classmethod
    def parse(cls, text: str) -> Ports:
        """``gateway=9080,edge=9001``: the named ports change, the others keep their defaults."""
        names = {f.name for f in fields(cls)}
        values: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, number = item.partition("=")
            if not sep or name.strip() not in names:
                raise ValueError(f"{item!r}: expected NAME=PORT with NAME in {sorted(names)}")
            try:
                port = int(number)
            except ValueError:
                raise ValueError(f"{item!r}: {number!r} is not a port number") from None
            if not 0 <= port <= 65535:
                raise ValueError(f"{item!r}: a port is between 0 and 65535")
            values[name.strip()] = port
        return cls(**values)

    def resolved(self) -> Ports:
        """A copy where every 0 is replaced by a distinct port that is free right now."""
        values = {f.name: int(getattr(self, f.name)) for f in fields(self)}
        for name, port in values.items():
            while port == 0 or (getattr(self, name) == 0 and port in _others(values, name)):
                port = free_port()
            values[name] = port
        return Ports(**values)


def _others(values: Mapping[str, int], name: str) -> set[int]:
    return {port for key, port in values.items() if key != name}


@dataclass(frozen=True, slots=True, kw_only=True)
class StackConfig:
    """What to start. ``redis_url`` names a server to use; when it (or the default
    ``redis://127.0.0.1:<ports.redis>``) does not answer, a local one is started."""

    ports: Ports = field(default_factory=Ports)
    cloud: bool = True
    run_dir: Path = DEFAULT_RUN_DIR
    logs_dir: Path | None = None
    policy: Path = DEFAULT_POLICY
    redis_url: str | None = None
    cloud_profile: str | None = None
    """A cloud_node profile (file or bundled name); None: cpu or gpu-dev, per vLLM build."""
    cloud_model: str | None = None
    """What vLLM serves; None: the SmolLM2 checkpoint that ``cloud_node prepare`` makes."""
    external_cloud: tuple[str, str] | None = None
    """(url, served model) of a cloud node already running: no vLLM is started."""
    vllm_python: Path = VLLM_PYTHON
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    progress_every_s: float = PROGRESS_EVERY_S
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    @property
    def logs(self) -> Path:
        return self.logs_dir if self.logs_dir is not None else self.run_dir / "logs"

    @property
    def starts_vllm(self) -> bool:
        return self.cloud and self.external_cloud is None
