"""Prompt-lookup speculative decoding on the edge node: acceptance rate and decode speed,
speculation off against on, on repetitive and non-repetitive prompts.

    python bench/speculative.py [--model PATH ...] [--max-tokens 128] [--rounds 3]
                                [--n-threads 1] [--draft-tokens 4] [--lookup-ngram 3]
                                [--lookup-ngram-min 2] [--deadline-s 170]

For each model it starts two edge nodes with the same settings (batching engine,
``--parallel 2``), one with ``--speculative off`` and one with ``--speculative
prompt-lookup``, and sends each prompt to both, one request at a time (so the nodes never
compete for the cores), greedy, alternating which node goes first from one request to the
next. Per request it records the completion tokens, the decode time (first to last
streamed chunk), the node's ``llama_decode`` steps, and on the speculating node the draft
and accepted tokens (deltas of ``/metrics``: requests run one at a time, so the deltas
are the request's). Per kind of prompt it prints the acceptance rate, decode tokens per
step, decode tokens/s on each node, the median of the per-request on/off speed ratios
(each pair measured back to back, which cancels most of the drift of a shared machine),
and how many answers were identical (they must all be: greedy speculation changes no
token). Last, per model, what a step of 1 + k tokens of one sequence costs against a
one-token step (in-process ``llama_decode``): speculation pays only where that cost grows
much slower than k.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import sse_events
from edge_node.settings import default_model_path
from tests.fixtures.edge import EDGE_MODEL_NAME, start_edge_node, stop_edge_node
from tests.helpers import scrape_metrics

# Answers that copy much of their prompt: a list repeated with one change, a record
# returned with one field changed, a sentence written out again with a typo fixed. (Chosen
# so that SmolLM2-135M does copy: asked to rename a function or to quote a sentence, it
# rewrote the code and discussed the sentence instead.)
REPETITIVE = (
    "Repeat this list exactly, but replace 'pears' with 'plums':\n"
    "1. apples\n2. pears\n3. cherries\n4. grapes\n5. lemons\n6. oranges\n7. peaches",
    "Change the age to 31 and return the whole JSON object:\n"
    '{"name": "Alice Smith", "age": 30, "city": "Paris", "email": "alice@example.com", '
    '"phone": "555-0100", "job": "engineer"}',
    "Fix the spelling mistake and write the sentence out again: "
    '"The quick brown fox jumpd over the lazy dog while the farmer watched from the old '
    'wooden fence."',
)
# Open questions: the answer shares little with the prompt.
OPEN = (
    "Why do leaves change colour in autumn?",
    "Give some advice to someone starting to learn the piano.",
    "What makes a good cup of coffee?",
)
KINDS = {"repetitive": REPETITIVE, "open": OPEN}


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    name: str
    url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    kind: str
    prompt: int
    node: str
    text: str
    tokens: int
    decode_s: float
    steps: float
    drafted: float
    accepted: float


COUNTERS = (
    "edge_decode_steps_total",
    "edge_speculative_draft_tokens_total",
    "edge_speculative_accepted_tokens_total",
)


async def counters(node: Node) -> list[float]:
    """The node's :data:`COUNTERS`, from one scrape (0 for one it does not export)."""
    metrics = await scrape_metrics(node)
    return [metrics.get(name) for name in COUNTERS]


async def one(
    http: aiohttp.ClientSession, node: Node, kind: str, index: int, content: str, max_tokens: int
) -> Run:
    before = await counters(node)
    body = {
        "model": EDGE_MODEL_NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first: float | None = None
    last = 0.0
    parts: list[str] = []
    tokens = 0
    async with http.post(f"{node.url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for event in sse_events(response):
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
            choices = event.get("choices") or []
            text = choices[0].get("delta", {}).get("content") if choices else None
            if text:
                last = time.perf_counter()
                first = first or last
                parts.append(text)
    after = await counters(node)
    steps, drafted, accepted = (b - a for a, b in zip(before, after, strict=True))
    return Run(
        kind=kind,
        prompt=index,
        node=node.name,
        text="".join(parts),
        tokens=tokens,
        decode_s=0.0 if first is None else last - first,
        steps=steps,
        drafted=drafted,
        accepted=accepted,
    )


async def measure(nodes: list[Node], args: argparse.Namespace, deadline: float) -> list[Run]:
    runs: list[Run] = []
    turn = 0
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for node in nodes:  # warm-up: first-request costs stay out of the figures
            await one(http, node, "warm-up", 0, "Say hello.", 8)
        for _ in range(args.rounds):
            for kind, prompts in KINDS.items():
                for index, content in enumerate(prompts):
                    if time.monotonic() > deadline:
                        print("deadline reached: stopping early", flush=True)
                        return runs
                    order = nodes if turn % 2 == 0 else nodes[::-1]
                    turn += 1
                    for node in order:
                        runs.append(await one(http, node, kind, index, content, args.max_tokens))
    return runs


def tps(runs: list[Run]) -> float:
    seconds = sum(r.decode_s for r in runs)
    return sum(r.tokens - 1 for r in runs) / seconds if seconds else float("nan")


def report(model: str, runs: list[Run]) -> None:
    print(f"\nmodel: {model}")
    print(
        f"{'prompt':<13} {'tokens':>6} {'drafted':>8} {'accepted':>8} "
        f"{'tok/s off':>9} {'tok/s on':>8}"
    )
    for kind, prompts in KINDS.items():
        for index in range(len(prompts)):
            mine = [r for r in runs if (r.kind, r.prompt) == (kind, index)]
            off = [r for r in mine if r.node == "off"]
            on = [r for r in mine if r.node == "on"]
            if not off or not on:
                continue
            print(
                f"{kind + ' ' + str(index):<13} {on[0].tokens:>6} "
                f"{sum(r.drafted for r in on):>8.0f} {sum(r.accepted for r in on):>8.0f} "
                f"{tps(off):>9.1f} {tps(on):>8.1f}"
            )
    print(
        f"{'kind':<11} {'requests':>8} {'drafted':>8} {'accepted':>8} {'accept%':>8} "
        f"{'tok/step off':>12} {'tok/step on':>11} {'tok/s off':>9} {'tok/s on':>8} "
        f"{'on/off (median)':>15} {'identical':>9}"
    )
    for kind in KINDS:
        off = [r for r in runs if r.kind == kind and r.node == "off"]
        on = [r for r in runs if r.kind == kind and r.node == "on"]
        pairs = list(zip(off, on, strict=False))
        if not pairs:
            continue
        drafted = sum(r.drafted for r in on)
        accepted = sum(r.accepted for r in on)
        ratios = [tps([b]) / tps([a]) for a, b in pairs if a.decode_s and b.decode_s]
        same = sum(a.text == b.text for a, b in pairs)
        step_off = sum(r.tokens for r in off) / max(1.0, sum(r.steps for r in off))
        step_on = sum(r.tokens for r in on) / max(1.0, sum(r.steps for r in on))
        rate = f"{100 * accepted / drafted:.0f}%" if drafted else "-"
        ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
        print(
            f"{kind:<11} {len(pairs):>8} {drafted:>8.0f} {accepted:>8.0f} {rate:>8} "
            f"{step_off:>12.2f} {step_on:>11.2f} {tps(off):>9.1f} {tps(on):>8.1f} "
            f"{ratio:>15} {same:>6}/{len(pairs)}"
        )


def step_costs(model: str, n_threads: int, repeats: int = 30) -> None:
    """What a verification step costs: one sequence's ``llama_decode`` of 1 + k tokens with
    logits at each, in-process, after a 40-token prompt (median of ``repeats``)."""
    from llama_cpp import Llama, llama_cpp

    llm = Llama(
        model_path=model,
        n_ctx=512,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        flash_attn=True,
        verbose=False,
    )
    ctx, memory = llm.ctx, llama_cpp.llama_get_memory(llm.ctx)
    batch = llama_cpp.llama_batch_init(64, 0, 1)
    prompt = llm.tokenize(b"A prompt of a few dozen tokens, so that attention has some work. " * 3)

    def decode(tokens: list[int], start: int) -> None:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, True
        batch.n_tokens = len(tokens)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    try:
        decode(prompt[:40], 0)
        single = 0.0
        print("tokens per step  ms per step  ms per token  step cost / one-token step")
        for rows in (1, 2, 3, 5, 9):
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                decode(prompt[:rows], 40)
                times.append(time.perf_counter() - started)
                llama_cpp.llama_memory_seq_rm(memory, 0, 40, -1)
            ms = 1000 * statistics.median(times)
            single = single or ms
            print(f"{rows:>15} {ms:>12.2f} {ms / rows:>13.2f} {ms / single:>27.2f}")
    finally:
        llama_cpp.llama_batch_free(batch)
        llm.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="GGUF path; repeatable")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-threads", type=int, default=1)
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--lookup-ngram", type=int, default=3)
    parser.add_argument("--lookup-ngram-min", type=int, default=2)
    parser.add_argument("--deadline-s", type=float, default=170)
    return parser.parse_args()


async def main() -> int:
    args = parse_args()
    command = "python bench/speculative.py " + " ".join(sys.argv[1:])
    print(f"command: {command.strip()}", flush=True)
    deadline = time.monotonic() + args.deadline_s
    models = args.model or [str(default_model_path())]
    logs = Path(tempfile.mkdtemp(prefix="speculative-bench-"))
    for model in models:
        common = ["--model", model, "--parallel", "2", "--n-threads", str(args.n_threads)]
        spec = ["--speculative", "prompt-lookup", "--draft-tokens", str(args.draft_tokens)]
        spec += ["--lookup-ngram", str(args.lookup_ngram)]
        spec += ["--lookup-ngram-min", str(args.lookup_ngram_min)]
        started = []
        try:
            nodes = []
            for name, extra in (("off", []), ("on", spec)):
                process, node = start_edge_node(
                    logs / f"{Path(model).stem}-{name}.log", extra_args=[*common, *extra]
                )
                started.append(process)
                nodes.append(Node(name=name, url=node.url))
            runs = await measure(nodes, args, deadline)
        finally:
            for process in started:
                stop_edge_node(process)
        report(model, runs)
        print(f"\nverification step cost, in-process, --n-threads {args.n_threads}:")
        step_costs(model, args.n_threads)
    print(f"\ncommand: {command.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
