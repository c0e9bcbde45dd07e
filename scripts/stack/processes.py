"""Child processes of the stack: start one in its own process group, stop the group, probe.

Children are signalled by process group, because vLLM forks an engine-core process that
must go with its server. On Linux they also get SIGTERM when the stack dies without
cleaning up (SIGKILL), so a killed stack leaves no servers holding the ports.

The test fixtures and the benchmarks start their servers with the same two helpers:
:func:`die_with_parent` for the server itself, and :class:`GroupWatchdog` for a server that
forks children of its own (vLLM's engine core), which the kernel's parent-death signal
does not reach.
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
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.stack import logs

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 20.0


@dataclass(slots=True, kw_only=True)
class Service:
    """A process the stack started: its name for people, its PID (= process group), its log,
    what started it (to start it again), and the watchdog that stops its group if the stack
    dies without stopping it."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    started_at: float
    """``time.monotonic()`` when the current process started."""
    watchdog: GroupWatchdog | None = None
    ready: Callable[[], bool] | None = None
    """Whether the service answers again after a restart (None: once it runs)."""
    vital: bool = False
    """Nothing works without it: giving up on restarting it ends the stack."""
    restarts: int = 0
    _stopped: bool = False

    def stop(self) -> None:
        """Stop the process group (bounded), then release the watchdog; idempotent."""
        if self._stopped:
            return
        stop_group(self.process)
        if self.watchdog is not None:
            self.watchdog.disarm()
        self._stopped = True

    def restart(self) -> None:
        """Stop what is left of the group, then start the same argv, env and cwd again."""
        self.stop()
        self.process, self.watchdog = _launch(
            self.name, self.argv, log_path=self.log_path, cwd=self.cwd, env=self.env
        )
        self.started_at = time.monotonic()
        self.restarts += 1
        self._stopped = False

    def exited(self) -> int | None:
        return self.process.poll()

    def tail(self, lines: int = 30) -> str:
        """The end of the log, indented, for error messages."""
        return logs.tail(self.log_path, lines)


def spawn(
    name: str, argv: Sequence[str], *, log_path: Path, cwd: Path, env: Mapping[str, str]
) -> Service:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log_path``.

    The log is rotated first when it is too large, and the child writes a separator line
    with the time and its PID before the program starts (:mod:`scripts.stack.logs`).
    """
    process, watchdog = _launch(name, argv, log_path=log_path, cwd=cwd, env=env)
    return Service(
        name=name,
        process=process,
        log_path=log_path,
        argv=tuple(argv),
        env=dict(env),
        cwd=cwd,
        started_at=time.monotonic(),
        watchdog=watchdog,
    )


def _launch(
    name: str, argv: Sequence[str], *, log_path: Path, cwd: Path, env: Mapping[str, str]
) -> tuple[subprocess.Popen[bytes], GroupWatchdog]:
    logs.rotate(log_path)
    stay_with_parent, mark_start = die_with_parent(), logs.start_marker(name)

    def preexec() -> None:
        stay_with_parent()
        mark_start()

    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )
    # The kernel's parent-death signal reaches only the leader: a vLLM still loading, or its
    # engine core, would outlive a killed stack. The watchdog stops the whole group.
    return process, GroupWatchdog(process.pid)


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


def answers_200(url: str) -> Callable[[], bool]:
    """A check: a GET of ``url`` answers 200."""
    return lambda: http_get(url)[0] == 200


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


def die_with_parent(signum: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``signum`` when its parent dies without stopping it.

    Linux's ``PR_SET_PDEATHSIG`` (elsewhere nothing). It survives ``exec`` but not
    ``fork``: a server's own children need a :class:`GroupWatchdog`. And the kernel sends it
    when the *thread* that started the child ends: start children from a thread that
    outlives them (the main thread, or an event loop's worker threads, which live until
    the loop closes). Make one per ``Popen``: it checks that this process is still there.
    """
    parent = os.getpid()

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(signum))
            if os.getppid() != parent:  # the parent died before prctl took effect
                os.kill(os.getpid(), signum)

    return preexec


# The watchdog's whole program: it runs as ``python -I -S -c`` (no site, starts in ~20 ms).
_WATCHDOG = """\
import os, signal, sys, time
pgid, grace_s = int(sys.argv[1]), float(sys.argv[2])
if sys.stdin.buffer.read(1):
    sys.exit(0)  # disarmed: the owner stopped the group itself


def signal_group(signum):
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


if signal_group(signal.SIGTERM):
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and signal_group(0):
        time.sleep(0.1)
    signal_group(signal.SIGKILL)
"""


class GroupWatchdog:
    """Stops a process group when this process dies without stopping it (even by SIGKILL).

    A small process of its own session (no terminal signal reaches it) reads a pipe whose
    only writer is this process. End of file without a word means this process is gone:
    the watchdog sends the group SIGTERM, and SIGKILL ``grace_s`` later if any of it is
    left. Unlike ``PR_SET_PDEATHSIG`` it reaches the whole group, grandchildren included,
    whichever thread started it. Call :meth:`disarm` once the group has been stopped.
    """

    def __init__(self, pgid: int, *, grace_s: float = 10.0) -> None:
        self.pgid = pgid
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(pgid), str(grace_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def disarm(self, timeout_s: float = 5.0) -> None:
        """The group was stopped by its owner: the watchdog exits without signalling it."""
        stdin = self._process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                stdin.write(b"x")
                stdin.flush()
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
