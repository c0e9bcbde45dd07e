"""build_launch: profile in, vLLM argv and environment out (table-driven)."""

from __future__ import annotations

import pytest

from cloud_node.command import VLLM_SERVER_MODULE, build_launch
from cloud_node.profile import Profile

PY = "/venv/bin/python"
HEAD = (PY, "-m", VLLM_SERVER_MODULE)

CASES: list[tuple[str, Profile, tuple[str, ...], dict[str, str]]] = [
    (
        "minimal-gpu",
        Profile(build="gpu", model="Qwen/Qwen2.5-7B-Instruct"),
        ("--model", "Qwen/Qwen2.5-7B-Instruct", "--host", "127.0.0.1", "--port", "8002"),
        {},
    ),
    (
        "cpu-dev",
        Profile(
            build="cpu",
            model="/models/smollm2",
            served_model_name="cloud-smollm2-135m",
            dtype="bfloat16",
            max_model_len=2048,
            enable_prefix_caching=True,
            enforce_eager=True,
            cpu_kvcache_space_gib=1,
            env=(("HF_HUB_OFFLINE", "1"),),
        ),
        (
            "--model", "/models/smollm2", "--host", "127.0.0.1", "--port", "8002",
            "--served-model-name", "cloud-smollm2-135m", "--dtype", "bfloat16",
            "--max-model-len", "2048", "--enable-prefix-caching", "--enforce-eager",
        ),
        {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
    ),
    (
        "tensor-parallel-everything",
        Profile(
            build="gpu",
            model="m",
            host="0.0.0.0",
            port=9000,
            max_num_seqs=64,
            gpu_memory_utilization=0.9,
            tensor_parallel_size=4,
            enable_prefix_caching=False,
            enforce_eager=False,
            speculative_config='{"method":"ngram","num_speculative_tokens":4}',
            extra_args=("--seed", "7", "--disable-log-requests"),
        ),
        (
            "--model", "m", "--host", "0.0.0.0", "--port", "9000",
            "--max-num-seqs", "64", "--gpu-memory-utilization", "0.9",
            "--tensor-parallel-size", "4", "--no-enable-prefix-caching", "--no-enforce-eager",
            "--speculative-config", '{"method":"ngram","num_speculative_tokens":4}',
            "--seed", "7", "--disable-log-requests",
        ),
        {},
    ),
    (
        "api-key-goes-to-env-not-argv",
        Profile(build="gpu", model="m", api_key="s3cret"),
        ("--model", "m", "--host", "127.0.0.1", "--port", "8002"),
        {"VLLM_API_KEY": "s3cret"},
    ),
    (
        # vLLM 0.32 loads a tool-call parser only with --enable-auto-tool-choice, which in
        # turn needs the parser: one profile field gives both flags.
        "tool-call-parser",
        Profile(build="gpu", model="Qwen/Qwen2.5-7B-Instruct", tool_call_parser="hermes"),
        ("--model", "Qwen/Qwen2.5-7B-Instruct", "--host", "127.0.0.1", "--port", "8002",
         "--enable-auto-tool-choice", "--tool-call-parser", "hermes"),
        {},
    ),
    (
        "tool-strict-level",
        Profile(build="cpu", model="m", tool_call_parser="hermes", tool_strict_level="parameter"),
        ("--model", "m", "--host", "127.0.0.1", "--port", "8002", "--enable-auto-tool-choice",
         "--tool-call-parser", "hermes", "--tool-strict-level", "parameter"),
        {},
    ),
    (
        "whole-number-utilisation",
        Profile(build="gpu", model="m", gpu_memory_utilization=1.0),
        ("--model", "m", "--host", "127.0.0.1", "--port", "8002",
         "--gpu-memory-utilization", "1"),
        {},
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "args", "env"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_build_launch(profile: Profile, args: tuple[str, ...], env: dict[str, str]) -> None:
    spec = build_launch(profile, python=PY)
    assert spec.argv == HEAD + args
    assert dict(spec.env) == env


def test_api_key_never_appears_in_argv() -> None:
    spec = build_launch(Profile(build="gpu", model="m", api_key="s3cret"), python=PY)
    assert not any("s3cret" in arg for arg in spec.argv)


def test_unresolved_prepared_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unresolved model reference 'prepared:smollm2'"):
        build_launch(Profile(build="cpu", model="prepared:smollm2"), python=PY)


def test_launch_env_is_read_only() -> None:
    spec = build_launch(Profile(build="cpu", model="m", cpu_kvcache_space_gib=2), python=PY)
    with pytest.raises(TypeError):
        spec.env["VLLM_CPU_KVCACHE_SPACE"] = "8"  # type: ignore[index]
