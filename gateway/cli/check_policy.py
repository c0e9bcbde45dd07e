"""``python -m gateway check-policy FILE``: validate a policy before shipping it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.policy.errors import PolicyError
from gateway.routing.state import load_routing_state


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway check-policy", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, help="policy YAML files")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            state = load_routing_state(path)
        except PolicyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        policy = state.policy
        nodes = ", ".join(
            f"{tier}: {len(spec.nodes)} node(s)" for tier, spec in policy.tiers.items()
        )
        print(
            f"ok: {path} (version {policy.version}; {nodes}; classifier {state.classifier.name}; "
            f"cloud_above {policy.routing.cloud_above}; {len(policy.routing.rules)} rule(s))"
        )
    return 1 if failed else 0
