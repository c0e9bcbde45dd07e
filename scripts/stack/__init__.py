"""``make run``: redis, one edge node, one cloud node and the gateway, on this machine.

``python -m scripts.stack [--ports gateway=8080,edge=8001,cloud=8002,redis=6379]
[--no-cloud | --cloud-url URL=MODEL] [--logs DIR]`` starts every process in a session
(process group) of its own, each appending to ``.run/logs/<name>.log``, waits until the
gateway's ``/readyz`` reports every node healthy, prints how to call it, and runs until
Ctrl-C or SIGTERM, which stop what it started in reverse order. Meanwhile a process that
dies by itself is reported and restarted with backoff, the others running on.
``start_stack(StackConfig(...))`` starts the same for tests and returns a :class:`Stack`
(a context manager); :class:`~scripts.stack.supervisor.Supervisor` restarts.

Modules: ``config`` (ports, options, restart policy, errors), ``processes`` (starting,
signalling and probing child processes), ``logs`` (appended, rotated logs), ``services``
(one start-up step per service), ``startup`` (the :class:`Stack`, waiting for
readiness), ``supervisor`` (restarts), ``parent`` (stopping with ``make``), ``banner``
and ``__main__`` (the command line).
"""

from scripts.stack.config import Ports, StackCancelled, StackConfig, StackError
from scripts.stack.processes import free_port, port_is_free, redis_answers
from scripts.stack.startup import Stack, start_stack

__all__ = [
    "Ports",
    "Stack",
    "StackCancelled",
    "StackConfig",
    "StackError",
    "free_port",
    "port_is_free",
    "redis_answers",
    "start_stack",
]
