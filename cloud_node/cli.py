"""Command line: ``python -m cloud_node serve|prepare|profiles``.

``serve`` flags override profile fields of the same name; everything after ``--`` goes to
vLLM verbatim, for the many vLLM options that have no profile field.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cloud_node.builds import detect_build
from cloud_node.errors import CloudNodeError
from cloud_node.launcher import bundled_profiles, describe, exec_launch, plan_launch
from cloud_node.prepare import prepare_model
from cloud_node.sources import SOURCES, default_model_dir

__all__ = ["main", "parse_args"]

# Flags whose values replace the profile field of the same name (dashes for underscores).
OVERRIDE_FLAGS = (
    "host",
    "port",
    "model",
    "served_model_name",
    "max_model_len",
    "max_num_seqs",
    "gpu_memory_utilization",
    "tensor_parallel_size",
    "enable_prefix_caching",
    "enforce_eager",
    "speculative_config",
    "api_key",
    "cpu_kvcache_space_gib",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cloud_node", description="Run and prepare the vLLM cloud node."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="start vLLM's OpenAI server from a profile",
        description="Start vLLM's OpenAI server. Arguments after -- go to vLLM unchanged.",
    )
    serve.add_argument(
        "--profile", required=True, help="profile YAML file, or a bundled profile name"
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--model", help="checkpoint dir, Hugging Face id, or prepared:NAME")
    serve.add_argument("--served-model-name")
    serve.add_argument("--max-model-len", type=int)
    serve.add_argument("--max-num-seqs", type=int)
    serve.add_argument("--gpu-memory-utilization", type=float)
    serve.add_argument("--tensor-parallel-size", type=int)
    serve.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction)
    serve.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction)
    serve.add_argument("--speculative-config", metavar="JSON", help="passed to vLLM as is")
    serve.add_argument("--api-key", help="also read from the VLLM_API_KEY variable by vLLM")
    serve.add_argument("--cpu-kvcache-space-gib", type=int)
    serve.add_argument(
        "--dry-run",
        action="store_true",
        help="print the command and exit, without checking the installed vLLM build",
    )

    prepare = commands.add_parser(
        "prepare", help="convert a packaged GGUF model into a checkpoint vLLM serves"
    )
    prepare.add_argument("--source", choices=sorted(SOURCES), default="smollm2")
    prepare.add_argument(
        "--out", type=Path, help="checkpoint dir (default: $CLOUD_NODE_MODEL_DIR or the cache)"
    )
    prepare.add_argument("--gguf", type=Path, help="GGUF file to use instead of the package's")

    commands.add_parser("profiles", help="list the bundled profiles")
    return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split off the arguments after ``--`` (for vLLM), then parse the rest."""
    args = list(argv)
    extra: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, extra = args[:cut], args[cut + 1 :]
    namespace = _parser().parse_args(args)
    if extra and namespace.command != "serve":
        _parser().error("arguments after -- are only accepted by serve")
    return namespace, extra


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print one line and return 2."""
    namespace, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if namespace.command == "serve":
            return _serve(namespace, extra)
        if namespace.command == "prepare":
            return _prepare(namespace)
        print("\n".join(bundled_profiles()))
        return 0
    except CloudNodeError as exc:
        print(f"cloud_node: error: {exc}", file=sys.stderr)
        return 2


def _serve(namespace: argparse.Namespace, extra: list[str]) -> int:
    overrides = {
        name: getattr(namespace, name)
        for name in OVERRIDE_FLAGS
        if getattr(namespace, name) is not None
    }
    check = not namespace.dry_run
    profile, spec = plan_launch(
        namespace.profile,
        overrides=overrides,
        extra_args=extra,
        env=os.environ,
        home=Path.home(),
        python=sys.executable,
        installed=detect_build() if check else None,
        check=check,
    )
    print(f"cloud_node: {profile.build} profile, model {profile.model}", flush=True)
    print(f"cloud_node: {describe(spec)}", flush=True)
    if namespace.dry_run:
        return 0
    exec_launch(spec)
    return 1  # not reached: exec_launch replaces the process or raises


def _prepare(namespace: argparse.Namespace) -> int:
    source = SOURCES[namespace.source]
    out_dir = namespace.out or default_model_dir(source, env=os.environ, home=Path.home())
    result = prepare_model(
        source=source,
        out_dir=Path(out_dir).expanduser().absolute(),
        gguf_path=namespace.gguf,
        log=lambda line: print(line, flush=True),
    )
    print(result.out_dir)
    return 0
