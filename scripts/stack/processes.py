"""Child processes of the stack: start one in its own process group, stop the group, probe.

Children are signalled by process group, because vLLM forks an engine-core process that
must go with its server. On Linux they also get SIGTERM when the stack dies without
cleaning up (SIGKILL), so a killed stack leaves no servers holding the ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 20.0


@dataclass(slots=True, kw_only=True)
class Service:
    """A process the stack started: its name for people, its PID (= process group), its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def exited(self) -> int | None:
        return self.process.poll()

    def tail(self, lines: int = 30) -> str:
        """The end of the log, indented, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


def spawn(
    name: str, argv: Sequence[str], *, log_path: Path, cwd: Path, env: Mapping[str, str]
) -> Service:
    """Start ``argv`` in a new session, stdout and stderr to ``log_path`` (truncated)."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return Service(name=name, process=process, log_path=log_path)


def stop_group(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group, SIGKILL it after ``timeout_s``, and reap the leader."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)
    # Children that outlive their leader (vLLM's engine core mid-shutdown) go too.
    _signal_group(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ignore a second Ctrl-C while stopping: the stop is bounded and must finish."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` (SO_REUSEADDR, as aiohttp and redis use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at ``url`` within a second."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def http_get(url: str) -> tuple[int | None, bytes | None]:
    """Status and body of a GET; (None, None) while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return None, None


# vLLM's prefix, e.g. "(EngineCore pid=123) INFO 11-22 11:47:16 [utils.py:347] ".
_LOG_PREFIX = re.compile(r"^(\(\w+ pid=\d+\) )?[A-Z]+ \d\d-\d\d [\d:]+ \[[^\]]*\] ")


def last_log_line(path: Path, width: int = 90) -> str:
    """The newest non-empty line of a log, without vLLM's prefix, cut to ``width``."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - 4096))
            lines = [ln for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    last = _LOG_PREFIX.sub("", lines[-1].strip()) if lines else ""
    return last if len(last) <= width else last[: width - 1] + "…"


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the stack dies without stopping us."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
