"""Which CPU code llama.cpp runs on this host, and loading it before the first ``Llama()``.

llama-cpp-python is built one of two ways, and the edge node runs on both:

* native (``make setup``: llama.cpp compiled on the machine that runs it, ``-march=native``):
  the CPU backend is linked into libggml and registers itself when ggml starts. Nothing
  to choose or load.
* dispatch (the Docker image: ``GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON``): one CPU
  backend per instruction-set level, ``libggml-cpu-<variant>.so`` (x64, sse42, sandybridge,
  ivybridge, piledriver, haswell, skylakex, cannonlake, cascadelake, icelake, cooperlake,
  zen4, alderlake, sapphirerapids on x86-64; armv8.0_1 ... armv9.2_2 on aarch64 Linux).
  libggml links none of them: ``llama_backend_init`` loads the best one with
  ``ggml_backend_load_all()``, which only looks in the executable's directory (python's
  ``bin/``), the current directory and a compile-time GGML_BACKEND_DIR, never where pip
  put the libraries, so a plain ``Llama()`` fails with "no backends are loaded".
  :func:`load_cpu_backend` loads them from where they are installed, whatever the prefix.

How the winner is chosen, and known. ggml's rule (``ggml_backend_load_best``) calls each
variant's exported ``ggml_backend_score()`` and loads the highest non-zero one. That
function is compiled from ``ggml-cpu/arch/<arch>/cpu-feats.cpp`` as a separate object
*without* the variant's ``-m`` flags and with LTO off (so no AVX-512 instruction can be
inlined into it); it reads CPUID (HWCAPs on ARM) and returns 0 if one of the variant's
instruction sets is missing, else the sum of one bit per set: safe on any CPU of the
architecture. This module lets ggml apply that rule (``ggml_backend_load_all_from_path``,
which unloads the losers again), then reads the result instead of predicting it: the
registered CPU backend (``ggml_backend_reg_by_name("CPU")``) is a static object inside the
library that won, and ``dladdr`` names the file that holds it. Only when nothing was
registered does it call every variant's score itself, to say in the error which variant
refused this CPU and which would not even ``dlopen`` (ggml's release build is silent).

No double registration: ``llama_backend_init`` only searches when no backend is registered
yet, and this module loads nothing when a CPU backend already is (a native build, or a
second call). ggml's registry itself ignores a library it already holds; only two
*different copies* of the variants (say a GGML_BACKEND_DIR baked into the image and the
package's own) could register two CPU backends, which is why the image bakes no
GGML_BACKEND_DIR.

Caveat from ggml: the x86 score checks CPUID only, not whether the OS enabled the AVX-512
register state (XCR0); a hypervisor that advertises AVX-512 but disables its state would
make the AVX-512 variants crash with SIGILL.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CpuBackend",
    "CpuBackendError",
    "best_variant",
    "build_of",
    "describe_scores",
    "load_cpu_backend",
    "parse_features",
    "variant_of",
]

log = logging.getLogger(__name__)

BuildKind = Literal["native", "dispatch"]

_VARIANT_PREFIX = "libggml-cpu-"
# ggml loads only files ending exactly in .so (not the .so.0 version links).
_VARIANT_SUFFIX = ".so"
_CPU_REG_NAME = b"CPU"


class CpuBackendError(RuntimeError):
    """ggml has no CPU backend this host can run; the message says what each variant did."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuBackend:
    """The llama.cpp CPU code this process runs."""

    build: BuildKind
    """CPU code compiled into libggml ("native") or variants chosen at run time ("dispatch")."""
    variant: str | None
    """The variant loaded on this host, e.g. ``"icelake"``; None for a native build."""
    features: tuple[str, ...]
    """What llama.cpp reports for its CPU backend (what the loaded code was compiled for)."""

    def describe(self) -> str:
        """One line for the start-up log, e.g. ``dispatch build, variant zen4 (AVX2 ...)``."""
        head = f"{self.build} build"
        if self.variant is not None:
            head += f", variant {self.variant}"
        return f"{head} ({' '.join(self.features) or 'no features reported'})"


# -- pure parts --------------------------------------------------------------------------


def variant_of(filename: str) -> str | None:
    """The variant a file name stands for (``libggml-cpu-zen4.so`` -> ``zen4``), else None.

    Mirrors ggml's match: prefix ``libggml-cpu-`` and extension exactly ``.so``; the base
    ``libggml-cpu.so`` and the ``.so.0`` version links are not variants.
    """
    if not (filename.startswith(_VARIANT_PREFIX) and filename.endswith(_VARIANT_SUFFIX)):
        return None
    name = filename[len(_VARIANT_PREFIX) : -len(_VARIANT_SUFFIX)]
    return name or None


def build_of(filenames: Iterable[str]) -> BuildKind:
    """``dispatch`` where the library directory holds CPU variants, ``native`` otherwise."""
    return "dispatch" if any(variant_of(name) for name in filenames) else "native"


def best_variant(scores: Sequence[tuple[str, int]]) -> str | None:
    """ggml's choice: the highest score above 0, the first of equals; None if all are 0."""
    best_name, best_score = None, 0
    for name, score in scores:
        if score > best_score:
            best_name, best_score = name, score
    return best_name


def describe_scores(scores: Sequence[tuple[str, int]], errors: Mapping[str, str]) -> str:
    """What each variant did, for the error that says no CPU backend could be loaded."""
    if not scores and not errors:
        return "no libggml-cpu-*.so variant found"
    parts = [f"{name}: {f'score {s}' if s else 'unsupported by this CPU'}" for name, s in scores]
    parts += [f"{name}: cannot be loaded ({error})" for name, error in errors.items()]
    best = best_variant(scores)
    if best is not None:
        parts.append(f"{best} scored best but ggml did not register it")
    return "; ".join(parts)


def parse_features(system_info: str, backend: str = "CPU") -> tuple[str, ...]:
    """The ``= 1`` features of one backend in ``llama_print_system_info()``'s text.

    The text is ``"CPU : SSE3 = 1 | AVX = 1 | ... | "``, one ``NAME : `` section per
    registered backend; counts such as ``SVE_CNT = 16`` are not features and are skipped.
    """
    features: list[str] = []
    section: str | None = None
    for item in system_info.split("|"):
        head, sep, rest = item.partition(" : ")
        if sep:
            section, item = head.strip(), rest
        name, sep, value = item.partition("=")
        if sep and section == backend and value.strip() == "1":
            features.append(name.strip())
    return tuple(features)


# -- loading -----------------------------------------------------------------------------


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _file_containing(address: int) -> Path | None:
    """The shared object that holds ``address`` (``dladdr``; in libc since glibc 2.34)."""
    try:
        dladdr = ctypes.CDLL(None).dladdr
    except AttributeError:
        dladdr = ctypes.CDLL("libdl.so.2").dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    dladdr.restype = ctypes.c_int
    info = _DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return Path(os.fsdecode(info.dli_fname))


class _Ggml:
    """The ggml functions of the libggml that libllama is linked to.

    Resolved through libllama's own handle, never by opening ``libggml.so`` by path: pip
    installs the ``libggml.so``/``.so.0`` links as separate copies, and a second copy would
    be a second ggml with its own, empty, backend registry.
    """

    def __init__(self, libllama: ctypes.CDLL) -> None:
        self.reg_by_name = libllama.ggml_backend_reg_by_name
        self.reg_by_name.argtypes = [ctypes.c_char_p]
        self.reg_by_name.restype = ctypes.c_void_p
        self.load_all_from_path = libllama.ggml_backend_load_all_from_path
        self.load_all_from_path.argtypes = [ctypes.c_char_p]
        self.load_all_from_path.restype = None

    def cpu_reg(self) -> int | None:
        address: int | None = self.reg_by_name(_CPU_REG_NAME)
        return address

    def library_dir(self) -> Path:
        address = ctypes.cast(self.load_all_from_path, ctypes.c_void_p).value
        path = _file_containing(address) if address else None
        if path is None:
            raise CpuBackendError("cannot tell which libggml llama.cpp is linked to (dladdr)")
        return path.parent


def _variant_dir(library_dir: Path) -> Path:
    """Where the CPU variants are: beside libggml, or where ggml's CMake installs them.

    llama-cpp-python copies only its known targets into ``llama_cpp/lib``; the variants are
    MODULE libraries that ggml's own install rule puts in ``<prefix>/bin``, and the wheel's
    prefix is site-packages.
    """
    candidates = (library_dir, library_dir.parent.parent / "bin")
    for directory in candidates:
        if build_of(_listing(directory)) == "dispatch":
            return directory
    return library_dir


def _listing(directory: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in directory.iterdir() if entry.is_file())
    except OSError:
        return []


def _score_variants(directory: Path) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """Each variant's ``ggml_backend_score()`` on this CPU (see the module docstring)."""
    scores: list[tuple[str, int]] = []
    errors: dict[str, str] = {}
    for filename in _listing(directory):
        name = variant_of(filename)
        if name is None:
            continue
        try:
            score_fn = ctypes.CDLL(str(directory / filename)).ggml_backend_score
        except (OSError, AttributeError) as exc:
            errors[name] = str(exc)
            continue
        score_fn.argtypes = []
        score_fn.restype = ctypes.c_int
        scores.append((name, int(score_fn())))
    return scores, errors


def _system_info() -> str:
    from llama_cpp import llama_cpp

    info: bytes = llama_cpp.llama_print_system_info()
    return info.decode("utf-8", errors="replace")


def _libllama() -> Any:
    from llama_cpp import llama_cpp

    return llama_cpp._lib


_lock = threading.Lock()


def load_cpu_backend() -> CpuBackend:
    """Load ggml's backends once (the best CPU variant on a dispatch build); call before
    the first ``Llama()``. Raises CpuBackendError where no CPU variant can run here."""
    with _lock:  # ggml's registry is not thread-safe
        return _load_once()


@functools.cache
def _load_once() -> CpuBackend:
    ggml = _Ggml(_libllama())
    directory = _variant_dir(ggml.library_dir())
    if ggml.cpu_reg() is None:  # a dispatch build that nothing has loaded yet
        ggml.load_all_from_path(os.fsencode(directory))
    reg = ggml.cpu_reg()
    if reg is None:
        scores, errors = _score_variants(directory)
        raise CpuBackendError(
            f"llama.cpp has no CPU backend that runs on this host "
            f"({directory}: {describe_scores(scores, errors)})"
        )
    loaded = _file_containing(reg)
    return CpuBackend(
        build=build_of(_listing(directory)),
        variant=variant_of(loaded.name) if loaded is not None else None,
        features=parse_features(_system_info()),
    )
