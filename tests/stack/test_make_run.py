"""``make run`` in the background: ARGS reach the stack, and a signal to make stops it all.

GNU make passes SIGTERM on to the recipe it runs but not SIGINT (it waits for the
recipe): the stack's ``--stop-with-parent`` notices make handling SIGINT
(:mod:`scripts.stack.parent`). Tests run ``make -o setup run``: ``setup`` is a no-op
here once its stamps exist, but an edit to pyproject.toml by someone else in the same
checkout would make it reinstall ``.venv`` under a running test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scripts.stack.processes import die_with_parent
from tests.stack._procs import alive, wait_for
from tests.stack._tools import REPO_ROOT

READY_TIMEOUT_S = 90.0
GONE_WITHIN_S = 30.0


@pytest.mark.edge_model
@pytest.mark.redis
@pytest.mark.timeout(180)
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_make_run_in_the_background_stops_on_a_signal_to_make(signame: str, tmp_path: Path) -> None:
    make = shutil.which("make")
    assert make is not None, "make is not installed"
    args = f"--no-cloud --ports gateway=0,edge=0,redis=0 --run-dir '{tmp_path}'"
    process = subprocess.Popen(
        [make, "-o", "setup", "run", f"ARGS={args}"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # no terminal signal reaches it: only what the test sends
        preexec_fn=die_with_parent(signal.SIGKILL),
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and (line := process.stdout.readline()):
            output.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        text = "".join(output)
        assert "hybrid gateway ready after" in text, text
        # ARGS reached the stack: free ports, the test's run directory, no cloud.
        assert "cloud    off (--no-cloud)" in text
        assert not re.search(r"^  gateway  http://127\.0\.0\.1:8080$", text, re.M)
        assert (tmp_path / "logs" / "gateway.log").is_file()
        pids = [int(pid) for pid in re.findall(r": start\w* .*\(pid (\d+)\)", text)]
        assert len(pids) == 3, text  # redis, edge node, gateway
        stack_pid = _child_of(process.pid)

        process.send_signal(getattr(signal, signame))
        rest, _ = process.communicate(timeout=GONE_WITHIN_S)
        assert "stopped everything the stack had started" in rest, rest
        # make ends by the same signal, once its recipe has.
        assert process.returncode == -getattr(signal, signame), rest
        wait_for(lambda: not any(alive(pid) for pid in [*pids, stack_pid]), GONE_WITHIN_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _child_of(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children  # the recipe's exec made the stack make's own child
    return int(children[0])


# A parent that behaves as make does on SIGINT: it stops catching the signal and waits
# for its child. It catches SIGINT before the child starts, as make does.
_PARENT = textwrap.dedent(
    """\
    import signal, subprocess, sys
    signal.signal(signal.SIGINT, lambda signum, frame: signal.signal(signum, signal.SIG_DFL))
    subprocess.run([sys.executable, "-c", sys.argv[1]])
    """
)
_CHILD = textwrap.dedent(
    """\
    import time
    from scripts.stack.parent import ParentWatch
    watch = ParentWatch()
    print("watching", flush=True)
    while (reason := watch.stopping()) is None:
        time.sleep(0.02)
    print(reason, flush=True)
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/<pid>/status")
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("how", "reason"),
    [("SIGINT", r"\(pid \d+\) got SIGINT"), ("SIGKILL", r"\(pid \d+\) exited")],
)
def test_parent_watch_sees_the_parent_stop(how: str, reason: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _CHILD],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent(signal.SIGKILL),
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline() == "watching\n"
        parent.send_signal(getattr(signal, how))
        assert re.search(reason, parent.stdout.readline())
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
