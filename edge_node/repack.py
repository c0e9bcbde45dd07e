"""Whether llama.cpp may repack the model's weights for this CPU, decided at run time.

At load time llama.cpp can copy weights into "extra buffer types": layouts made for a
CPU's matrix instructions (the AMX tile buffer on Intel Sapphire/Granite Rapids, and
interleaved Q4_0/IQ4_NL/Q8_0 layouts for AVX2, AVX-512 and NEON). On AMX hosts, often
virtualised ones, the AMX path faults inside ``llama_decode`` (ggml-org/llama.cpp#20824):
the node dies at the first request with a segmentation fault. Loading with
``use_extra_bufts = false`` keeps the plain layout and answers correctly.

So ``auto`` (the default) turns repacking off where the CPU reports AMX and leaves it on
everywhere else, where the interleaved layouts are stable and can be faster; ``on`` is
the explicit opt-in for AMX hosts where it is known to work, ``off`` the way out of any
other repacking fault. The decision reads the CPU's flags, never the build machine's, so
one install (or image) behaves right on every host it lands on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

__all__ = [
    "REPACK_MODES",
    "RepackDecision",
    "RepackMode",
    "decide_repack",
    "parse_cpu_flags",
    "read_cpu_flags",
]

RepackMode = Literal["auto", "on", "off"]
REPACK_MODES: tuple[RepackMode, ...] = get_args(RepackMode)

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo names the CPU's features "flags" on x86 and "Features" on ARM.
_FLAG_FIELDS = ("flags", "features")


@dataclass(frozen=True, slots=True, kw_only=True)
class RepackDecision:
    """Whether to load with llama.cpp's extra (repacked) weight buffers, and why."""

    enabled: bool
    reason: str

    def describe(self) -> str:
        """One phrase for the start-up log, e.g. ``off (auto: the CPU has AMX ...)``."""
        return f"{'on' if self.enabled else 'off'} ({self.reason})"


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text (lower case)."""
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in _FLAG_FIELDS:
            return frozenset(value.lower().split())
    return frozenset()


def read_cpu_flags(path: Path = CPUINFO) -> frozenset[str]:
    """This host's CPU flags; empty where /proc/cpuinfo does not exist (macOS, Windows)."""
    try:
        return parse_cpu_flags(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def _amx(flags: Iterable[str]) -> list[str]:
    return sorted(flag for flag in flags if flag.startswith("amx"))


def decide_repack(mode: RepackMode, flags: frozenset[str]) -> RepackDecision:
    """Repacking for ``mode`` on a CPU with ``flags`` (see the module docstring)."""
    if mode == "on":
        return RepackDecision(enabled=True, reason="--weight-repack on")
    if mode == "off":
        return RepackDecision(enabled=False, reason="--weight-repack off")
    amx = _amx(flags)
    if amx:
        return RepackDecision(
            enabled=False,
            reason=(
                f"auto: the CPU has AMX ({' '.join(amx)}), where llama.cpp's repacked AMX "
                "weights crash; --weight-repack on to opt in"
            ),
        )
    if not flags:
        return RepackDecision(enabled=True, reason="auto: CPU flags unknown, llama.cpp's default")
    return RepackDecision(enabled=True, reason="auto: no AMX on this CPU")
