"""Figures, table and plots of ``bench/serving.py`` (kept apart: the sweep is the bench)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol


class _Result(Protocol):
    ok: bool
    ttft_s: float | None
    e2e_s: float
    completion_tokens: int
    decode_tps: float | None
    itl_s: list[float]


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99 (nearest rank) and the mean; NaN for no values."""
    if not values:
        nan = float("nan")
        return {"p50": nan, "p95": nan, "p99": nan, "mean": nan}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "mean": statistics.fmean(values)}


def level_summary(results: list[Any], wall_s: float) -> dict[str, Any]:
    ok: list[_Result] = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    return {
        "wall_s": wall_s,
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "completion_tokens": tokens,
        "total_tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "ttft_s": percentiles([r.ttft_s for r in ok if r.ttft_s is not None]),
        "e2e_s": percentiles([r.e2e_s for r in ok]),
        "itl_s": percentiles([gap for r in ok for gap in r.itl_s]),
        "request_tokens_per_s": percentiles([r.decode_tps for r in ok if r.decode_tps]),
    }


def by_concurrency(levels: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for level in levels:
        grouped[int(level["concurrency"])].append(level)
    return dict(sorted(grouped.items()))


def merged(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One level over its rounds: throughput is the median of the rounds', latencies are
    percentiles of every request of every round."""
    requests = [r for level in rounds for r in level["requests"] if r["ok"]]
    peaks = [level["peak_rss_bytes"] or 0 for level in rounds]
    per_cpu = [lv["tokens_per_cpu_s"] for lv in rounds if lv.get("tokens_per_cpu_s")]
    return {
        "rounds": len(rounds),
        "total_tokens_per_s": statistics.median(lv["total_tokens_per_s"] for lv in rounds),
        "total_tokens_per_s_rounds": [lv["total_tokens_per_s"] for lv in rounds],
        "ttft_s": percentiles([r["ttft_s"] for r in requests if r["ttft_s"] is not None]),
        "ttft_values": [r["ttft_s"] for r in requests if r["ttft_s"] is not None],
        "e2e_s": percentiles([r["e2e_s"] for r in requests]),
        "itl_s": percentiles([g for r in requests for g in r["itl_s"]]),
        "request_tokens_per_s": percentiles([r["decode_tps"] for r in requests if r["decode_tps"]]),
        "errors": sum(lv["errors"] for lv in rounds),
        "tokens_per_cpu_s": statistics.median(per_cpu) if per_cpu else None,
        "peak_rss_mb": max(peaks) / 2**20 if any(peaks) else None,
    }


def print_table(levels: dict[str, list[dict[str, Any]]]) -> None:
    header = (
        f"{'target':>8} {'c':>3} {'tok/s total':>11} {'tok/s/req p50':>13} "
        f"{'TTFT p50':>8} {'p95':>6} {'p99':>6} {'ITL p50 ms':>10} {'p99':>6} "
        f"{'e2e p50':>7} {'p95':>6} {'p99':>6} {'err':>3} {'peak RSS MB':>11} {'tok/CPU-s':>9}"
    )
    print("\n" + header)
    summary: dict[str, dict[int, dict[str, Any]]] = {}
    for name, target_levels in levels.items():
        summary[name] = {}
        for concurrency, rounds in by_concurrency(target_levels).items():
            m = summary[name][concurrency] = merged(rounds)
            rss = f"{m['peak_rss_mb']:.0f}" if m["peak_rss_mb"] else "-"
            cpu = f"{m['tokens_per_cpu_s']:.0f}" if m["tokens_per_cpu_s"] else "-"
            print(
                f"{name:>8} {concurrency:>3} {m['total_tokens_per_s']:>11.1f} "
                f"{m['request_tokens_per_s']['p50']:>13.1f} "
                f"{m['ttft_s']['p50']:>8.2f} {m['ttft_s']['p95']:>6.2f} {m['ttft_s']['p99']:>6.2f} "
                f"{m['itl_s']['p50'] * 1000:>10.1f} {m['itl_s']['p99'] * 1000:>6.0f} "
                f"{m['e2e_s']['p50']:>7.2f} {m['e2e_s']['p95']:>6.2f} {m['e2e_s']['p99']:>6.2f} "
                f"{m['errors']:>3} {rss:>11} {cpu:>9}"
            )
    batched, serial = summary.get("batched"), summary.get("serial")
    if batched and 1 in batched and 8 in batched:
        c1, c8 = batched[1]["total_tokens_per_s"], batched[8]["total_tokens_per_s"]
        print(f"\nbatched c8/c1 total tok/s: {c8 / c1:.2f}x ({c8:.1f} / {c1:.1f})")
        if serial and 8 in serial:
            s8 = serial[8]["total_tokens_per_s"]
            print(f"batched c8 / serial c8 total tok/s: {c8 / s8:.2f}x ({c8:.1f} / {s8:.1f})")
        print(f"batched p99 TTFT at c8: {batched[8]['ttft_s']['p99']:.2f} s")
        rounds = batched[8]["total_tokens_per_s_rounds"]
        print(f"batched c8 total tok/s by round: {', '.join(f'{r:.0f}' for r in rounds)}")
        # Each round's c8 over the same round's c1, minutes apart rather than a run apart:
        # the machine's drift moves both alike.
        c1_rounds = batched[1]["total_tokens_per_s_rounds"]  # fewer if the deadline cut a run
        paired = [r8 / r1 for r1, r8 in zip(c1_rounds, rounds, strict=False)]
        print(f"batched c8/c1 by round: {', '.join(f'{r:.2f}x' for r in paired)}")


def plot(levels: dict[str, list[dict[str, Any]]], directory: Path, command: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    note = f"command: {command}"
    paths = [directory / "serving_throughput_latency.png", directory / "serving_ttft.png"]

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, target_levels in levels.items():
        points = [(c, merged(r)) for c, r in by_concurrency(target_levels).items()]
        xs = [m["e2e_s"]["p99"] for _, m in points]
        ys = [m["total_tokens_per_s"] for _, m in points]
        ax.plot(xs, ys, marker="o", label=name)
        for (c, _), x, y in zip(points, xs, ys, strict=True):
            ax.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("p99 end-to-end latency (s)")
    ax.set_ylabel("total completion tokens/s")
    ax.set_title("Throughput against tail latency across concurrency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, note, fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    names = list(levels)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.5), sharey=True)
    axes_list = list(axes) if len(names) > 1 else [axes]
    for ax, name in zip(axes_list, names, strict=True):
        grouped = by_concurrency(levels[name])
        data = [merged(rounds)["ttft_values"] for rounds in grouped.values()]
        ax.boxplot(data, whis=(1, 99))
        ax.set_xticks(range(1, len(grouped) + 1), [str(c) for c in grouped])
        ax.set_yscale("log")
        ax.set_title(f"{name}: time to first token")
        ax.set_xlabel("concurrency (whiskers: p1-p99)")
        ax.grid(alpha=0.3, axis="y")
    axes_list[0].set_ylabel("TTFT (s)")
    fig.text(0.01, 0.01, note, fontsize=6)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths
