"""The tables of ``bench/overhead.py``: per cell and target, then the CPU ratios.

CPU per request and req/s are per round (median, and min-max across rounds); latencies
pool every round's requests; "added" is the target's percentile minus direct's. The ratio
is a gateway's CPU per request over the bare proxy's in the same round, and its spread
across rounds is the honest error bar of a run on a shared machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from _overhead_load import Cell, Sample


def percentile_ms(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def spread(values: Sequence[float], digits: int = 2) -> str:
    """``median (min-max)``."""
    if not values:
        return "-"
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def cpu_per_request(samples: Sequence[Sample]) -> list[float]:
    return [s.cpu_ms_per_request for s in samples if s.cpu_ms_per_request is not None]


def ratios(gateway: Sequence[Sample], proxy: Sequence[Sample]) -> list[float]:
    """Gateway CPU per request over the proxy's (or another's), round by round."""
    pairs = zip(cpu_per_request(gateway), cpu_per_request(proxy), strict=True)
    return [g / p for g, p in pairs if p > 0]


def differences(target: Sequence[Sample], other: Sequence[Sample]) -> list[float]:
    """Target CPU per request minus the other's, round by round."""
    pairs = zip(cpu_per_request(target), cpu_per_request(other), strict=True)
    return [t - o for t, o in pairs]


Combine = Callable[[Sequence[Sample], Sequence[Sample]], list[float]]
"""Round-by-round figures of a target's samples against another's: :func:`ratios` or
:func:`differences`."""


def print_paired(
    title: str,
    cells: Sequence[Cell],
    pairs: Sequence[tuple[str, str]],
    samples: dict[tuple[Cell, str], list[Sample]],
    *,
    combine: Combine,
    digits: int,
) -> None:
    """A table, one column per (target, other) pair, headed by the target: per cell the
    median (min-max) across rounds of ``combine(target's samples, other's samples)``."""
    print(f"\n{title}\n")
    print("| cell | " + " | ".join(t for t, _ in pairs) + " |")
    print("|---|" + "---:|" * len(pairs))
    for cell in cells:
        row = [
            spread(combine(samples.get((cell, t), []), samples.get((cell, o), [])), digits)
            for t, o in pairs
        ]
        print(f"| {cell.label} | " + " | ".join(row) + " |")


def print_report(
    cells: Sequence[Cell],
    targets: Sequence[str],
    samples: dict[tuple[Cell, str], list[Sample]],
    rounds: int,
    requests: int,
) -> None:
    print(f"\n{rounds} rounds x {requests} requests per target and cell; latency = whole answer")
    print("CPU per request and req/s: median (min-max) across rounds; latencies: all rounds\n")
    print(
        "| cell | target | CPU ms/request | req/s | p50 ms | p99 ms "
        "| added p50 | added p99 | first chunk p50 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for cell in cells:
        direct = [x for s in samples.get((cell, "direct"), []) for x in s.latencies_s]
        for name in targets:
            got = samples.get((cell, name), [])
            if not got:
                continue
            lat = [x for s in got for x in s.latencies_s]
            first = [x for s in got for x in s.first_chunk_s]
            p50, p99 = percentile_ms(lat, 0.5), percentile_ms(lat, 0.99)
            added = (
                ("-", "-")
                if name == "direct"
                else (
                    f"{p50 - percentile_ms(direct, 0.5):+.2f}",
                    f"{p99 - percentile_ms(direct, 0.99):+.2f}",
                )
            )
            first_p50 = f"{percentile_ms(first, 0.5):.2f}" if first else "-"
            print(
                f"| {cell.label} | {name} | {spread(cpu_per_request(got), 3)} "
                f"| {spread([s.rps for s in got], 0)} | {p50:.2f} | {p99:.2f} "
                f"| {added[0]} | {added[1]} | {first_p50} |"
            )
    print_paired(
        "Gateway CPU per request / bare proxy CPU per request, same round: median (min-max)",
        cells,
        [(t, "bare proxy") for t in targets if t.startswith("gateway")],
        samples,
        combine=ratios,
        digits=2,
    )
    print_against_baseline(cells, targets, samples)
    print_keys_cost(cells, targets, samples)


def print_keys_cost(
    cells: Sequence[Cell], targets: Sequence[str], samples: dict[tuple[Cell, str], list[Sample]]
) -> None:
    """With ``--keys``: the CPU a key with limits and a budget adds per request, gateway+keys
    minus gateway in the same round (both sessions off)."""
    pairs = [(f"gateway+keys{s}", f"gateway{s}") for s in ("", "[base]")]
    pairs = [(k, g) for k, g in pairs if k in targets and g in targets]
    if pairs:
        print_paired(
            "CPU ms per request added by keys, limits and budgets (same round): median (min-max)",
            cells,
            pairs,
            samples,
            combine=differences,
            digits=3,
        )


def print_against_baseline(
    cells: Sequence[Cell], targets: Sequence[str], samples: dict[tuple[Cell, str], list[Sample]]
) -> None:
    """With ``--baseline-tree``: each gateway's CPU per request over its ``[base]`` twin's,
    round by round (the two ran on the same core in the same minutes)."""
    pairs = [(t, f"{t}[base]") for t in targets if f"{t}[base]" in targets]
    if pairs:
        print_paired(
            "CPU per request, this tree / [base] tree, same round: median (min-max)",
            cells,
            pairs,
            samples,
            combine=ratios,
            digits=3,
        )
