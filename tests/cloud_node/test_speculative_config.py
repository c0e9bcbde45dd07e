"""The documented ``--speculative-config`` example (vLLM's n-gram speculation): it reaches
vLLM's argv unchanged, and vLLM's own argument parser and engine configuration accept it
(a model directory holding only ``config.json``: no weights are loaded, no GPU needed)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_node.command import VLLM_SERVER_MODULE
from tests.fixtures.vllm import REPO_ROOT, vllm_env

EXAMPLE = '{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_max":4}'
DOCS = REPO_ROOT / "docs" / "cloud.md"

# SmolLM2-135M's Hugging Face config: all vLLM reads to build its engine configuration.
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}

# Run in .venv-vllm: vLLM's own server parser, its serve-argument checks, and the engine
# configuration built from them (what the server does before it loads the model).
CHECK = """
import json, sys
from vllm.engine.arg_utils import EngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

args = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])
validate_parsed_serve_args(args)
parsed = dict(args.speculative_config)
spec = EngineArgs.from_cli_args(args).create_engine_config().speculative_config
print(json.dumps({
    "parsed": parsed,
    "method": spec.method,
    "num_speculative_tokens": spec.num_speculative_tokens,
    "prompt_lookup_min": spec.prompt_lookup_min,
    "prompt_lookup_max": spec.prompt_lookup_max,
}))
"""


def dry_run_argv(model: Path, speculative_config: str) -> list[str]:
    """The vLLM server arguments ``cloud_node serve --profile cpu --dry-run`` prints."""
    result = subprocess.run(
        [sys.executable, "-m", "cloud_node", "serve", "--profile", "cpu", "--dry-run",
         "--model", str(model), "--speculative-config", speculative_config],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout.splitlines()[-1].removeprefix("cloud_node: "))
    return command[command.index(VLLM_SERVER_MODULE) + 1 :]


def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "smollm2-config-only"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    return path


def test_the_example_is_documented() -> None:
    assert f"--speculative-config '{EXAMPLE}'" in DOCS.read_text()


def test_the_example_reaches_the_vllm_argv_unchanged(tmp_path: Path) -> None:
    argv = dry_run_argv(tmp_path, EXAMPLE)
    assert argv[argv.index("--speculative-config") + 1] == EXAMPLE
    # Spacing and key order are normalised, the object is not: the same text reaches vLLM.
    spaced = '{"prompt_lookup_max": 4, "method": "ngram", "num_speculative_tokens": 4}'
    argv = dry_run_argv(tmp_path, spaced)
    assert argv[argv.index("--speculative-config") + 1] == EXAMPLE


def run_vllm_check(vllm_python: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(vllm_python), "-c", CHECK, *argv],
        cwd=REPO_ROOT, env=vllm_env(), capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


@pytest.mark.vllm
def test_vllm_accepts_the_example(vllm_python: Path, tmp_path: Path) -> None:
    result = run_vllm_check(vllm_python, dry_run_argv(model_dir(tmp_path), EXAMPLE))
    assert result.returncode == 0, result.stderr[-3000:]
    checked = json.loads(result.stdout.splitlines()[-1])
    assert checked == {
        "parsed": json.loads(EXAMPLE),
        "method": "ngram",
        "num_speculative_tokens": 4,
        "prompt_lookup_min": 4,  # vLLM's default: the max when only the max is given
        "prompt_lookup_max": 4,
    }


@pytest.mark.vllm
def test_vllm_refuses_a_misspelt_key(vllm_python: Path, tmp_path: Path) -> None:
    # The launcher passes the object on as is: vLLM is the one that knows its keys.
    wrong = EXAMPLE.replace("prompt_lookup_max", "prompt_lookup_maximum")
    argv = dry_run_argv(model_dir(tmp_path), wrong)
    assert argv[argv.index("--speculative-config") + 1] == wrong
    result = run_vllm_check(vllm_python, argv)
    assert result.returncode != 0
    assert "prompt_lookup_maximum" in result.stderr
