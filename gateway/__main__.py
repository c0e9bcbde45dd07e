"""Command line: ``python -m gateway {serve,classify,train,check-policy,shadow} ...``."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

COMMANDS = {
    "serve": "gateway.cli.serve",
    "classify": "gateway.cli.classify",
    "train": "gateway.cli.train",
    "check-policy": "gateway.cli.check_policy",
    "shadow": "gateway.cli.shadow",
    "keys": "gateway.cli.keys",
    "usage": "gateway.cli.usage",
}

USAGE = """usage: python -m gateway COMMAND [options]

commands:
  serve          run the gateway (GATEWAY_* environment variables, see README)
  classify       dry-run routing decisions for JSONL requests on stdin
  train          fit the routing classifier on labelled JSONL traffic
  check-policy   validate policy YAML files
  shadow export  write shadowed requests and both answers as JSONL to label
  keys           create, list, show, update and revoke API keys (kept in Redis)
  usage          requests, tokens, cost and what routing saved, per key and tier
"""


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], list(argv[1:])
    module = COMMANDS.get(command)
    if module is None:
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    # Imported on demand: `classify` should not pay for aiohttp, nor `serve` for the CLI tools.
    run: Callable[[Sequence[str]], int] = importlib.import_module(module).main
    try:
        return run(rest)
    except BrokenPipeError:
        # The reader left (`... | head`): not an error of ours. Python's own advice: point
        # stdout at /dev/null, so the flush at exit does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
