"""Weight repacking is decided from the host's CPU flags: off on AMX CPUs unless opted in.

The decision is table-tested for every kind of CPU the node can meet (Intel with AMX,
Intel/AMD without, ARM, unknown); the real llama.cpp load checks that the decision is
what llama.cpp is given, on this machine's CPU.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_node.cli import parse_settings
from edge_node.repack import (
    RepackMode,
    decide_repack,
    parse_cpu_flags,
    read_cpu_flags,
)
from edge_node.settings import Settings

SAPPHIRE_RAPIDS = "fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8"
EPYC_ZEN4 = "fpu sse2 avx avx2 avx512f avx512_bf16 avx512_vnni"
SKYLAKE = "fpu sse2 avx avx2 fma"

CPUINFO_X86 = f"""processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: {SAPPHIRE_RAPIDS}

processor\t: 1
flags\t\t: {SAPPHIRE_RAPIDS}
"""
CPUINFO_ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp sve i8mm bf16
CPU implementer\t: 0x41
"""


def flags(text: str) -> frozenset[str]:
    return frozenset(text.split())


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (CPUINFO_X86, flags(SAPPHIRE_RAPIDS)),
        (CPUINFO_ARM, frozenset(CPUINFO_ARM.split("Features\t: ")[1].split("\n")[0].split())),
        ("processor\t: 0\nmodel name\t: something\n", frozenset()),
        ("", frozenset()),
    ],
    ids=["x86", "arm", "no-flags-line", "empty"],
)
def test_parse_cpu_flags(cpuinfo: str, expected: frozenset[str]) -> None:
    assert parse_cpu_flags(cpuinfo) == expected


DECISIONS: list[tuple[RepackMode, str, bool, str]] = [
    ("auto", SAPPHIRE_RAPIDS, False, "auto: the CPU has AMX (amx_bf16 amx_int8 amx_tile)"),
    ("auto", EPYC_ZEN4, True, "auto: no AMX on this CPU"),
    ("auto", SKYLAKE, True, "auto: no AMX on this CPU"),
    ("auto", "fp asimd sve i8mm bf16", True, "auto: no AMX on this CPU"),
    ("auto", "", True, "auto: CPU flags unknown, llama.cpp's default"),
    ("on", SAPPHIRE_RAPIDS, True, "--weight-repack on"),
    ("off", EPYC_ZEN4, False, "--weight-repack off"),
    ("off", "", False, "--weight-repack off"),
]


@pytest.mark.parametrize(
    ("mode", "cpu", "enabled", "reason"),
    DECISIONS,
    ids=["amx", "zen4", "avx2", "arm", "unknown", "amx-opt-in", "forced-off", "unknown-off"],
)
def test_decide_repack(mode: RepackMode, cpu: str, enabled: bool, reason: str) -> None:
    decision = decide_repack(mode, flags(cpu))
    assert decision.enabled is enabled
    assert decision.reason.startswith(reason)
    assert decision.describe().startswith("on (" if enabled else "off (")


def test_amx_decision_tells_how_to_opt_in() -> None:
    assert "--weight-repack on" in decide_repack("auto", flags(SAPPHIRE_RAPIDS)).reason


def test_read_cpu_flags_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_cpu_flags(tmp_path / "absent") == frozenset()


def test_this_hosts_flags_are_read() -> None:
    if not Path("/proc/cpuinfo").is_file():
        pytest.fail("the tests run on Linux hosts, which have /proc/cpuinfo", pytrace=False)
    host = read_cpu_flags()
    assert host, "no flags parsed from /proc/cpuinfo"
    decision = decide_repack("auto", host)
    assert decision.enabled is not any(flag.startswith("amx") for flag in host)


# -- settings ------------------------------------------------------------------------


def test_weight_repack_from_command_line_and_environment() -> None:
    assert parse_settings([], {}).weight_repack == "auto"
    assert parse_settings([], {"EDGE_NODE_WEIGHT_REPACK": "OFF"}).weight_repack == "off"
    assert parse_settings(["--weight-repack", "on"], {}).weight_repack == "on"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            ["--weight-repack", "amx"],
            {},
            "argument --weight-repack: expected one of auto, on, off, got 'amx'",
        ),
        ([], {"EDGE_NODE_WEIGHT_REPACK": "yes"}, "EDGE_NODE_WEIGHT_REPACK='yes' is not a valid"),
    ],
)
def test_bad_weight_repack_is_a_usage_error(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_settings(argv, env)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_settings_reject_an_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weight_repack must be one of auto, on, off"):
        Settings(model_path=tmp_path / "m.gguf", weight_repack="maybe")  # type: ignore[arg-type]


# -- the real llama.cpp load ------------------------------------------------------------


@pytest.mark.edge_model
@pytest.mark.parametrize("mode", ["on", "off"])
def test_llama_cpp_is_given_the_decision(mode: RepackMode, model_path: Path) -> None:
    """llama.cpp's own load log shows whether it considered the CPU_REPACK buffer."""
    script = (
        "from pathlib import Path\n"
        "from edge_node.model import load_model\n"
        "from edge_node.settings import Settings\n"
        f"settings = Settings(model_path=Path({str(model_path)!r}), n_threads=1,\n"
        f"                    weight_repack={mode!r}, log_level='DEBUG')\n"
        "model = load_model(settings)\n"
        "print('use_extra_bufts =', model.llm.model_params.use_extra_bufts, flush=True)\n"
        "model.close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"use_extra_bufts = {mode == 'on'}" in result.stdout
    # Verbose llama.cpp names the extra buffer types when it may place weights in them;
    # x86 CPUs below AVX2 have none, so there is nothing to see there.
    has_extra_bufts = bool({"avx2", "asimd"} & read_cpu_flags())
    named = re.search(r"\b(CPU_REPACK|AMX)\b", result.stderr) is not None
    assert named is (mode == "on" and has_extra_bufts), result.stderr[-3000:]
