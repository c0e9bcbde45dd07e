"""The report of ``python -m gateway train --report DIR``, prepared in memory.

Nothing is written until every file is ready (``train`` writes nothing when anything fails):
:func:`render_report` returns the files' bytes, :func:`write_files` puts them in place.

- ``report.json``: the held-out figures (APGR, CPT(50%), CPT(80%) of the trained model,
  length and random), the operating point for the target edge share, the selection table;
- ``report.md``: the same in words, with the command that produced it;
- ``accuracy_vs_cloud_share.png``: the accuracy-vs-cloud-share curves on the held-out slice;
- ``decisions.jsonl``: the trained model's decision on every held-out line (line number,
  score, tier at the reported ``cloud_above``): ``python -m gateway classify`` with a
  policy naming the weights reproduces them.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gateway.routing.training.dataset import Array

PLOT_NAME = "accuracy_vs_cloud_share.png"


def render_plot(
    curves: Mapping[str, tuple[Array, Array]],
    edge_accuracy: float,
    cloud_accuracy: float,
    *,
    title: str,
) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, (xs, ys) in curves.items():
        ax.plot(100 * xs, ys, marker="o", markersize=3, label=label)
    ax.axhline(edge_accuracy, color="grey", linestyle=":", linewidth=1)
    ax.axhline(cloud_accuracy, color="grey", linestyle="--", linewidth=1)
    ax.text(101, edge_accuracy, "edge only", va="center", fontsize=8)
    ax.text(101, cloud_accuracy, "cloud only", va="center", fontsize=8)
    ax.set_xlabel("share of requests sent to the cloud (%)")
    ax.set_ylabel("accuracy (held-out slice)")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, 112)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    # No creation time or version in the file: the same input gives the same bytes.
    fig.savefig(out, format="png", metadata={"Software": None})
    plt.close(fig)
    return out.getvalue()


def render_markdown(summary: Mapping[str, object]) -> str:
    held = summary["held_out"]
    assert isinstance(held, dict)
    lines = [
        f"# Routing classifier trained on {summary['data']}",
        "",
        f"Command: `{summary['command']}`",
        "",
        f"- weights: `{summary['weights']}` (version `{summary['version']}`)",
        f"- labelled lines: {summary['lines']}; fitted on {summary['train_lines']}, "
        f"held out {held['lines']} (by request hash)",
        f"- model chosen by cross-validation: **{summary['chosen']}**",
        "",
        f"## Held-out slice ({held['lines']} lines, edge accuracy {held['edge_accuracy']}, "
        f"cloud accuracy {held['cloud_accuracy']})",
        "",
        "| router | APGR | CPT(50%) | CPT(80%) |",
        "|---|---:|---:|---:|",
    ]
    routers = held["routers"]
    assert isinstance(routers, dict)
    for name, m in routers.items():
        lines.append(
            f"| {name} | {_fmt(m['apgr'], '.3f')} | {_fmt(m['cpt50'], '.1f', '%')} "
            f"| {_fmt(m['cpt80'], '.1f', '%')} |"
        )
    op = summary["operating_point"]
    assert isinstance(op, dict)
    lines += [
        "",
        f"![accuracy vs share of cloud calls]({PLOT_NAME})",
        "",
        "## Threshold",
        "",
        f"To keep {op['target_edge_share']:.0%} of requests like the held-out ones at the edge, "
        "set "
        f"`routing.cloud_above: {op['cloud_above']}` (it keeps {op['edge_share']:.1%} there on the "
        f"held-out slice, at accuracy {op['accuracy']}; length at the same share: "
        f"{op['length_accuracy']}).",
        "",
        "```yaml",
        "routing:",
        f"  cloud_above: {op['cloud_above']}",
        f"  classifier: {{kind: learned, model: {summary['weights']}}}",
        "```",
        "",
    ]
    if held.get("note"):
        lines += [f"Note: {held['note']}", ""]
    return "\n".join(lines)


def _fmt(value: object, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def render_report(
    summary: Mapping[str, object],
    decisions: Sequence[Mapping[str, object]],
    plot: bytes,
) -> dict[str, bytes]:
    return {
        "report.json": (json.dumps(summary, indent=1, ensure_ascii=False) + "\n").encode(),
        "report.md": render_markdown(summary).encode(),
        PLOT_NAME: plot,
        "decisions.jsonl": "".join(json.dumps(d) + "\n" for d in decisions).encode(),
    }


def write_files(files: Mapping[Path, bytes]) -> None:
    """All the files or none: each is written under a temporary name first, and only when
    every one is written are they renamed into place (a reader never sees half a file,
    and a failure, a report directory that cannot be made say, leaves nothing behind)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, content in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.partial")
            staged.append((partial, path))
            partial.write_bytes(content)
    except OSError:
        for partial, _ in staged:
            partial.unlink(missing_ok=True)
        raise
    for partial, path in staged:
        os.replace(partial, path)


def operating_point_accuracy(scores: Array, threshold: float, edge: Array, cloud: Array) -> float:
    cloud_rows = scores > threshold
    return float(np.where(cloud_rows, cloud, edge).mean())


__all__ = ["PLOT_NAME", "operating_point_accuracy", "render_plot", "render_report", "write_files"]
