"""``python -m gateway classify --policy FILE``: dry-run routing decisions on JSONL requests.

Reads one chat request per line on stdin (``{"id": ..., "messages": [...], "max_tokens"?,
"model"?, "headers"?}``) and writes one JSON line per request on stdout:
``{"id", "tier", "score", "reason", "reason_kind", "prompt_tokens", "signals",
"decision_us"}``, where ``decision_us`` is the time ``decide()`` took (classifier
included). A line that cannot be decided gets ``{"id", "line", "error": {"message",
"code", "param"}}`` instead, and the exit status is 1 once all lines are done.

With ``--target-edge-share X`` a calibration summary goes to stderr as one JSON line,
``{"calibration": {...}}``: the ``cloud_above`` threshold that keeps a share X of the
given requests' scores at the edge (score <= threshold), and the share it really keeps.
Rules and pins in the policy act before the score, so the summary also counts how many
requests the score decided under the policy as it stands.

Exit status: 0 all lines decided; 1 some lines were bad; 2 bad arguments or policy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gateway.errors import GatewayError, InvalidRequest
from gateway.http.validation import parse_chat_request
from gateway.policy.errors import PolicyError
from gateway.policy.model import Policy
from gateway.routing.classifier import Classifier
from gateway.routing.decide import AUTO_MODEL, RoutingRequest, decide
from gateway.routing.needs import request_needs
from gateway.routing.state import load_routing_state


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """The threshold that keeps ``target_edge_share`` of the scores at the edge."""

    target_edge_share: float
    cloud_above: float
    edge_share: float
    """The share that ``score <= cloud_above`` really keeps at the edge (ties can't split)."""


def calibrate(scores: Sequence[float], target_edge_share: float) -> Calibration:
    """Threshold for the policy's rule ``cloud if score > cloud_above`` on these scores."""
    if not scores:
        raise ValueError("no scores to calibrate on")
    ranked = sorted(scores)
    n = len(ranked)
    k = round(target_edge_share * n)
    if k <= 0:
        # Nothing at the edge: just below the lowest score, but cloud_above cannot go below 0.
        threshold = max(0.0, ranked[0] - 1e-4)
    elif k >= n:
        threshold = ranked[-1]
    elif ranked[k - 1] < ranked[k]:
        # Midway between the last edge score and the first cloud score: robust to rounding.
        threshold = (ranked[k - 1] + ranked[k]) / 2
    else:
        # A tie across the boundary: the whole tie goes to the edge.
        threshold = ranked[k - 1]
    threshold = round(threshold, 5)
    kept = sum(1 for s in ranked if s <= threshold)
    return Calibration(
        target_edge_share=target_edge_share, cloud_above=threshold, edge_share=kept / n
    )


def _request(line: bytes) -> tuple[object, RoutingRequest]:
    """(id, routing request) for one JSONL line; raises GatewayError for bad input."""
    # The server's own admission check, so a line fails here exactly when the HTTP API
    # would answer 400 (it also turns invalid UTF-8 and deep nesting into InvalidJSON);
    # but a line need not name a model: the dry run routes it as "auto".
    body = parse_chat_request(line, default_model=AUTO_MODEL)
    raw: dict[str, object] = dict(body)
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise InvalidRequest("headers must be an object of strings.", param="headers")
    return raw.get("id"), RoutingRequest(
        messages=body["messages"],
        max_tokens=body.get("max_tokens") or body.get("max_completion_tokens"),
        model=body.get("model", "auto"),
        headers={k.lower(): v for k, v in headers.items()},
        needs=request_needs(body),  # as the server does: tools, response_format, images, ...
    )


def _line_id(line: bytes) -> object:
    """The id of a line that failed validation, when the line is at least a JSON object."""
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return doc.get("id") if isinstance(doc, dict) else None


def run(
    lines: Iterable[bytes],
    out: TextIO,
    *,
    policy: Policy,
    classifier: Classifier,
) -> tuple[list[float], int, int]:
    """Decide every line; returns (scores, requests decided by score, bad lines)."""
    scores: list[float] = []
    by_score = 0
    bad = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            request_id, request = _request(line)
            started = time.perf_counter_ns()
            decision = decide(policy, classifier, request)
            elapsed_us = (time.perf_counter_ns() - started) / 1000
        except GatewayError as exc:
            bad += 1
            error = {"message": exc.message, "code": exc.code, "param": exc.param}
            record: dict[str, object] = {"id": _line_id(line), "line": number, "error": error}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            continue
        scores.append(decision.score)
        by_score += decision.reason_kind == "score"
        record = {
            "id": request_id,
            "tier": decision.tier,
            "score": decision.score,
            "reason": decision.reason,
            "reason_kind": decision.reason_kind,
            "prompt_tokens": decision.complexity.prompt_tokens,
            "signals": list(decision.complexity.signals),
            "decision_us": round(elapsed_us, 1),
        }
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return scores, by_score, bad


def _share(value: str) -> float:
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return share


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway classify",
        description="Dry-run routing decisions for JSONL chat requests on stdin.",
        epilog="Exit status: 0 all decided, 1 some lines bad, 2 bad arguments or policy.",
    )
    parser.add_argument("--policy", type=Path, required=True, help="policy YAML")
    parser.add_argument(
        "--target-edge-share",
        type=_share,
        metavar="X",
        help="also print (stderr, one JSON line) the cloud_above that keeps share X at the edge",
    )
    args = parser.parse_args(argv)
    try:
        state = load_routing_state(args.policy)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The first decision would otherwise pay for loading the tokenizer (about 0.3 s).
    state.classifier.classify([{"role": "user", "content": "warm up"}], max_tokens=None)

    # Bytes, not text: a line that is not UTF-8 becomes an error line for that line rather
    # than a UnicodeDecodeError that ends the whole run.
    try:
        scores, by_score, bad = run(
            sys.stdin.buffer, sys.stdout, policy=state.policy, classifier=state.classifier
        )
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly. Point stdout at devnull so the
        # interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if args.target_edge_share is not None:
        summary: dict[str, object] = {
            "requests": len(scores),
            "bad_lines": bad,
            "decided_by_score": by_score,
            "classifier": state.classifier.name,
            "policy_cloud_above": state.policy.routing.cloud_above,
        }
        if scores:
            calibration = calibrate(scores, args.target_edge_share)
            summary |= {
                "target_edge_share": calibration.target_edge_share,
                "cloud_above": calibration.cloud_above,
                "edge_share": round(calibration.edge_share, 4),
            }
        print(json.dumps({"calibration": summary}), file=sys.stderr)
    return 1 if bad else 0
