"""Profile files and overrides: valid ones load, invalid ones name the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_node.errors import CloudNodeError, ProfileError
from cloud_node.launcher import bundled_profiles, find_profile, plan_launch
from cloud_node.profile import Profile, apply_overrides, load_profile, parse_profile
from cloud_node.sources import MODEL_DIR_ENV, resolve_model_ref

BASE = "version: 1\nbuild: cpu\nmodel: /models/m\n"

# (id, YAML text, expected message, with the line where the bad key sits)
INVALID: list[tuple[str, str, str]] = [
    ("not-a-mapping", "- a\n- b\n", "p.yaml: expected a mapping of profile keys, got list"),
    ("missing-build", "version: 1\nmodel: m\n", "p.yaml: missing required key(s): build"),
    ("missing-all", "host: x\n", "missing required key(s): version, build, model"),
    ("null-build", "version: 1\nbuild:\nmodel: m\n", "p.yaml:2: build: must not be empty"),
    (
        "bad-version",
        "version: 2\nbuild: cpu\nmodel: m\n",
        "p.yaml:1: version: unsupported version 2",
    ),
    (
        "bad-build",
        "version: 1\nbuild: tpu\nmodel: m\n",
        "p.yaml:2: build: expected one of gpu, cpu, got 'tpu'",
    ),
    (
        "empty-model",
        "version: 1\nbuild: cpu\nmodel: ''\n",
        "p.yaml:3: model: expected a non-empty string",
    ),
    (
        "unknown-prepared",
        BASE.replace("/models/m", "prepared:llama"),
        "p.yaml:3: model: unknown prepared model 'prepared:llama'",
    ),
    (
        "typo-key",
        BASE + "max_model_length: 2048\n",
        "p.yaml:4: max_model_length: unknown key (did you mean 'max_model_len'?)",
    ),
    ("unknown-key", BASE + "colour: red\n", "p.yaml:4: colour: unknown key"),
    (
        "port-range",
        BASE + "port: 70000\n",
        "p.yaml:4: port: expected an integer between 1 and 65535, got 70000",
    ),
    ("port-bool", BASE + "port: yes\n", "p.yaml:4: port: expected an integer, got True"),
    ("port-string", BASE + "port: '8000'\n", "p.yaml:4: port: expected an integer, got '8000'"),
    (
        "max-model-len-zero",
        BASE + "max_model_len: 0\n",
        "p.yaml:4: max_model_len: expected an integer >= 1, got 0",
    ),
    ("dtype", BASE + "dtype: int8\n", "p.yaml:4: dtype: expected one of auto, half"),
    (
        "prefix-caching",
        BASE + "enable_prefix_caching: maybe\n",
        "p.yaml:4: enable_prefix_caching: expected true or false",
    ),
    (
        "gpu-util-range",
        "version: 1\nbuild: gpu\nmodel: m\ngpu_memory_utilization: 1.5\n",
        "p.yaml:4: gpu_memory_utilization: expected a fraction in (0, 1], got 1.5",
    ),
    (
        "gpu-util-and-kv-space",
        BASE + "gpu_memory_utilization: 0.5\ncpu_kvcache_space_gib: 2\n",
        "p.yaml:4: gpu_memory_utilization: set either gpu_memory_utilization (share of RAM",
    ),
    (
        "kvcache-on-gpu",
        "version: 1\nbuild: gpu\nmodel: m\ncpu_kvcache_space_gib: 4\n",
        "p.yaml:4: cpu_kvcache_space_gib: only valid for build 'cpu'",
    ),
    (
        "kvcache-float",
        BASE + "cpu_kvcache_space_gib: 1.5\n",
        "p.yaml:4: cpu_kvcache_space_gib: expected an integer, got 1.5",
    ),
    (
        "spec-config-list",
        BASE + "speculative_config: [1]\n",
        "p.yaml:4: speculative_config: expected a non-empty object",
    ),
    (
        "spec-config-json",
        BASE + "speculative_config: '{oops'\n",
        "p.yaml:4: speculative_config: invalid JSON",
    ),
    (
        "env-list",
        BASE + "env: [A]\n",
        "p.yaml:4: env: expected a mapping of variable names to values",
    ),
    ("env-name", BASE + "env: {'1BAD': x}\n", "p.yaml:4: env: invalid variable name '1BAD'"),
    (
        "env-reserved",
        BASE + "env: {VLLM_CPU_KVCACHE_SPACE: 4}\n",
        "p.yaml:4: env: VLLM_CPU_KVCACHE_SPACE: set the profile key cpu_kvcache_space_gib instead",
    ),
    ("env-nested", BASE + "env: {A: {b: 1}}\n", "p.yaml:4: env: A: expected a string or number"),
    (
        "extra-args",
        BASE + "extra_args: --enforce-eager\n",
        "p.yaml:4: extra_args: expected a list of strings",
    ),
    (
        "tool-call-parser-list",
        BASE + "tool_call_parser: [hermes]\n",
        "p.yaml:4: tool_call_parser: expected a non-empty string, got ['hermes']",
    ),
    (
        "tool-call-parser-flag",
        BASE + "tool_call_parser: '--enable-auto-tool-choice'\n",
        "p.yaml:4: tool_call_parser: expected a vLLM tool-call parser name such as hermes",
    ),
    (
        "tool-strict-level",
        BASE + "tool_call_parser: hermes\ntool_strict_level: strict\n",
        "p.yaml:5: tool_strict_level: expected one of auto, function, parameter, got 'strict'",
    ),
    (
        "tool-strict-level-without-parser",
        BASE + "tool_strict_level: parameter\n",
        "p.yaml:4: tool_strict_level: needs tool_call_parser",
    ),
    ("yaml-syntax", "version: 1\nbuild: [cpu\n", "p.yaml: invalid YAML"),
    # Read with the gateway's bounded, line-numbered loader (hybrid_common/yaml_lines.py).
    (
        "yaml-recursive-alias",
        BASE + "env: &e {A: *e}\n",
        "p.yaml: invalid YAML at line 4: an alias refers to its own anchor",
    ),
    ("yaml-control-character", BASE + "host: a\x07b\n", "p.yaml: invalid YAML at line 4: control"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_profile_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert message.replace("p.yaml", str(path)) in str(caught.value)


def test_missing_file_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "absent.yaml")


def test_full_profile_parses_into_typed_fields() -> None:
    profile = parse_profile(
        {
            "version": 1,
            "build": "gpu",
            "model": "m",
            "port": 9000,
            "gpu_memory_utilization": 1,
            "speculative_config": {"num_speculative_tokens": 4, "method": "ngram"},
            "env": {"B": 2, "A": True},
            "extra_args": ["--seed", "1"],
        },
        source="inline",
    )
    assert profile == Profile(
        build="gpu",
        model="m",
        port=9000,
        gpu_memory_utilization=1.0,
        speculative_config='{"method":"ngram","num_speculative_tokens":4}',
        env=(("A", "1"), ("B", "2")),
        extra_args=("--seed", "1"),
    )


@pytest.mark.parametrize("name", ["cpu", "gpu-dev", "gpu-single", "gpu-tensor-parallel"])
def test_bundled_profiles_are_valid(name: str) -> None:
    assert name in bundled_profiles()
    profile = load_profile(find_profile(name))
    assert profile.build == ("cpu" if name == "cpu" else "gpu")
    assert profile.served_model_name


def test_cpu_profile_matches_the_ci_settings() -> None:
    profile = load_profile(find_profile("cpu"))
    assert (profile.dtype, profile.max_model_len, profile.cpu_kvcache_space_gib) == (
        "bfloat16",
        2048,
        1,
    )
    assert profile.enforce_eager  # start-up time in CI; see the profile's comment
    assert profile.served_model_name != "smollm2-135m-instruct"  # the edge node's name


def test_gpu_dev_profile_is_a_small_loopback_server() -> None:
    profile = load_profile(find_profile("gpu-dev"))
    assert (profile.build, profile.model, profile.host) == ("gpu", "prepared:smollm2", "127.0.0.1")
    assert profile.max_model_len == 2048
    # Leaves most of the GPU to others; vLLM needs this share free to start at all.
    assert profile.gpu_memory_utilization is not None and profile.gpu_memory_utilization <= 0.3
    assert profile.enable_prefix_caching
    # auto: the checkpoint's bfloat16 where the GPU has it, float16 on older GPUs (an
    # explicit bfloat16 makes vLLM refuse compute capability < 8.0).
    assert profile.dtype == "auto"
    assert profile.served_model_name == load_profile(find_profile("cpu")).served_model_name


@pytest.mark.parametrize(
    ("name", "parser", "strict"),
    [("cpu", "hermes", "parameter"), ("gpu-dev", "hermes", "parameter"),
     ("gpu-single", "hermes", None), ("gpu-tensor-parallel", "hermes", None)],
)  # fmt: skip
def test_bundled_profiles_load_a_tool_call_parser(
    name: str, parser: str, strict: str | None
) -> None:
    """Qwen2.5's own format; for SmolLM2 the parser only lets vLLM force required and
    named tool calls (the policy's cloud tier declares those, not tool_choice "auto"),
    with the arguments pinned to the tools' schemas."""
    profile = load_profile(find_profile(name))
    assert (profile.tool_call_parser, profile.tool_strict_level) == (parser, strict)


def test_unknown_profile_name_lists_the_bundled_ones() -> None:
    with pytest.raises(
        ProfileError, match=r"no bundled profile of that name \(cpu, gpu-dev, gpu-single"
    ):
        find_profile("gpu-huge")


OVERRIDES: list[tuple[str, dict[str, object], str]] = [
    ("port", {"port": 0}, "command line: --port: expected an integer between 1 and 65535"),
    (
        "gpu-util-beside-kv-space",
        {"gpu_memory_utilization": 0.5},
        "command line: --gpu-memory-utilization: set either gpu_memory_utilization",
    ),
    (
        "spec-json",
        {"speculative_config": "[1, 2]"},
        "command line: --speculative-config: expected a non-empty object",
    ),
    (
        "served-name",
        {"served_model_name": " "},
        "command line: --served-model-name: expected a non-empty string",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"), [c[1:] for c in OVERRIDES], ids=[c[0] for c in OVERRIDES]
)
def test_invalid_override_names_the_flag(overrides: dict[str, object], message: str) -> None:
    base = load_profile(find_profile("cpu"))
    with pytest.raises(ProfileError) as caught:
        apply_overrides(base, overrides)
    assert message in str(caught.value)


def test_overrides_replace_fields_and_keep_the_rest() -> None:
    base = load_profile(find_profile("gpu-single"))
    changed = apply_overrides(
        base, {"port": 9100, "enable_prefix_caching": False, "speculative_config": '{"a": 1}'}
    )
    assert (changed.port, changed.enable_prefix_caching, changed.speculative_config) == (
        9100,
        False,
        '{"a":1}',
    )
    assert changed.model == base.model
    assert changed.gpu_memory_utilization == base.gpu_memory_utilization


def test_prepared_model_resolves_to_cache_or_env(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert resolve_model_ref("prepared:smollm2", env={}, home=home) == str(
        home / ".cache/hybrid-gateway/models/smollm2-135m-instruct"
    )
    assert resolve_model_ref("prepared:smollm2", env={MODEL_DIR_ENV: "/m"}, home=home) == "/m"
    assert resolve_model_ref("org/model", env={}, home=home) == "org/model"


def test_plan_launch_refuses_an_unprepared_model(tmp_path: Path) -> None:
    with pytest.raises(
        CloudNodeError, match=r"not prepared at .*cloud_node prepare --source smollm2"
    ):
        plan_launch(
            "cpu",
            overrides={},
            extra_args=[],
            env={MODEL_DIR_ENV: str(tmp_path / "nothing")},
            home=tmp_path,
            python="/py",
            installed="cpu",
        )


def test_plan_launch_appends_extra_args_after_profile_args(tmp_path: Path) -> None:
    profile, spec = plan_launch(
        "cpu",
        overrides={"port": 8123, "model": str(tmp_path)},
        extra_args=["--enforce-eager"],
        env={},
        home=tmp_path,
        python="/py",
        installed="cpu",
    )
    assert profile.model == str(tmp_path)
    assert spec.argv[-1] == "--enforce-eager"
    assert spec.argv[spec.argv.index("--port") + 1] == "8123"
