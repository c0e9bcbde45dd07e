"""Which CPU code llama.cpp runs: the pure rules in tables, then the installed build for real."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from edge_node.backends import (
    CpuBackend,
    _variant_dir,
    best_variant,
    build_of,
    describe_scores,
    load_cpu_backend,
    parse_features,
    variant_of,
)

# -- file names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "variant"),
    [
        ("libggml-cpu-zen4.so", "zen4"),
        ("libggml-cpu-x64.so", "x64"),
        ("libggml-cpu-armv8.2_1.so", "armv8.2_1"),
        ("libggml-cpu-sapphirerapids.so", "sapphirerapids"),
        ("libggml-cpu.so", None),  # the native build's CPU backend
        ("libggml-cpu.so.0", None),
        ("libggml-cpu-haswell.so.0", None),  # ggml loads only names ending in .so
        ("libggml-cpu-.so", None),
        ("libggml-base.so", None),
        ("libggml-cuda.so", None),
        ("ggml-cpu-haswell.dll", None),
    ],
)
def test_variant_of_a_file_name(filename: str, variant: str | None) -> None:
    assert variant_of(filename) == variant


@pytest.mark.parametrize(
    ("filenames", "build"),
    [
        (["libggml.so", "libggml-base.so", "libggml-cpu.so", "libllama.so"], "native"),
        (["libggml-cpu.so.0", "libggml-cpu.so.0.25.3"], "native"),
        ([], "native"),
        (["libggml-cpu-x64.so", "libggml-cpu-haswell.so", "libggml-cpu-zen4.so"], "dispatch"),
        (["libggml-cpu-armv8.0_1.so"], "dispatch"),
    ],
)
def test_build_from_the_files_in_the_library_directory(filenames: list[str], build: str) -> None:
    assert build_of(filenames) == build


def test_variants_are_found_where_the_wheel_installs_them(tmp_path: Path) -> None:
    """llama_cpp/lib holds libggml; ggml's install rule puts the variants in <prefix>/bin."""
    library_dir = tmp_path / "llama_cpp" / "lib"
    library_dir.mkdir(parents=True)
    (library_dir / "libggml.so").write_bytes(b"")
    assert _variant_dir(library_dir) == library_dir  # no variants anywhere: native
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "libggml-cpu-x64.so").write_bytes(b"")
    assert _variant_dir(library_dir) == tmp_path / "bin"
    (library_dir / "libggml-cpu-x64.so").write_bytes(b"")
    assert _variant_dir(library_dir) == library_dir  # beside libggml wins


# -- scores (as ggml_backend_score() returned them on an AMD EPYC Zen 5 host) ----------

ZEN5_SCORES = [
    ("alderlake", 128),
    ("haswell", 64),
    ("sapphirerapids", 0),
    ("sse42", 5),
    ("x64", 1),
    ("zen4", 1984),
]


@pytest.mark.parametrize(
    ("scores", "best"),
    [
        (ZEN5_SCORES, "zen4"),
        ([("x64", 1)], "x64"),
        ([("x64", 0), ("haswell", 0)], None),
        ([], None),
        ([("a", 5), ("b", 5)], "a"),  # ggml keeps the first of equal scores
        ([("a", 1), ("b", 7), ("c", 3)], "b"),
    ],
)
def test_best_variant_follows_ggml(scores: list[tuple[str, int]], best: str | None) -> None:
    assert best_variant(scores) == best


@pytest.mark.parametrize(
    ("scores", "errors", "text"),
    [
        ([], {}, "no libggml-cpu-*.so variant found"),
        (
            [("sapphirerapids", 0)],
            {"x64": "libgomp.so.1: cannot open shared object file"},
            "sapphirerapids: unsupported by this CPU; "
            "x64: cannot be loaded (libgomp.so.1: cannot open shared object file)",
        ),
        (
            [("haswell", 0), ("x64", 1)],
            {},
            "haswell: unsupported by this CPU; x64: score 1; "
            "x64 scored best but ggml did not register it",
        ),
    ],
)
def test_the_reason_no_cpu_backend_loaded(
    scores: list[tuple[str, int]], errors: dict[str, str], text: str
) -> None:
    assert describe_scores(scores, errors) == text


# -- llama_print_system_info() ---------------------------------------------------------


@pytest.mark.parametrize(
    ("info", "features"),
    [
        (
            "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | LLAMAFILE = 1 | REPACK = 1 | ",
            ("SSE3", "SSSE3", "AVX", "AVX2", "LLAMAFILE", "REPACK"),
        ),
        (  # aarch64: counts are not features
            "CPU : NEON = 1 | ARM_FMA = 1 | SVE = 1 | SVE_CNT = 16 | DOTPROD = 1 | ",
            ("NEON", "ARM_FMA", "SVE", "DOTPROD"),
        ),
        (  # one section per registered backend; only the CPU's
            "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | CPU : AVX2 = 1 | FMA = 1 | ",
            ("AVX2", "FMA"),
        ),
        ("CPU : AVX = 1 | BLAS : ACCELERATE = 1 | ", ("AVX",)),
        ("CPU : AVX = 0 | AVX2 = 1 | ", ("AVX2",)),
        ("", ()),
        ("CPU : ", ()),
    ],
)
def test_features_from_system_info(info: str, features: tuple[str, ...]) -> None:
    assert parse_features(info) == features


@pytest.mark.parametrize(
    ("backend", "line"),
    [
        (
            CpuBackend(build="dispatch", variant="zen4", features=("AVX2", "AVX512")),
            "dispatch build, variant zen4 (AVX2 AVX512)",
        ),
        (
            CpuBackend(build="native", variant=None, features=("AVX2", "REPACK")),
            "native build (AVX2 REPACK)",
        ),
        (
            CpuBackend(build="native", variant=None, features=()),
            "native build (no features reported)",
        ),
    ],
)
def test_start_up_log_line(backend: CpuBackend, line: str) -> None:
    assert backend.describe() == line


# -- the installed llama-cpp-python ----------------------------------------------------

# ggml's feature name -> the /proc/cpuinfo flag of the same instruction set (x86-64).
_CPUINFO_FLAG = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}
# Sets every compiler that builds llama.cpp enables under -march=native where the CPU has them.
_NATIVE_IFF = ("SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "AVX512")


def _cpu_flags() -> frozenset[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def test_the_installed_build_is_native_and_loaded_once() -> None:
    backend = load_cpu_backend()
    assert backend.build == "native"  # make setup compiles llama.cpp for this machine
    assert backend.variant is None
    assert backend.features
    assert load_cpu_backend() is backend


@pytest.mark.skipif(platform.machine() != "x86_64", reason="compares x86-64 cpuinfo flags")
def test_native_features_match_this_cpu() -> None:
    features = set(load_cpu_backend().features)
    flags = _cpu_flags()
    for feature, flag in _CPUINFO_FLAG.items():
        if feature in features:  # compiled for it, so the CPU must have it
            assert flag in flags, f"llama.cpp reports {feature}, /proc/cpuinfo has no {flag}"
    for feature in _NATIVE_IFF:  # and -march=native used what the CPU has
        assert (feature in features) == (_CPUINFO_FLAG[feature] in flags), feature
