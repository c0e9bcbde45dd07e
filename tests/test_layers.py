"""The import graph points one way, and the images carry what their code imports.

Read from the source with ``ast`` (every ``import``, at any depth: ``TYPE_CHECKING`` blocks
and function-level imports count too, since they are still dependencies):

- ``hybrid_common`` (what the gateway and the nodes share) imports none of them.
- ``edge_node`` and ``cloud_node`` import nothing from ``gateway`` (nor from each other).
- ``gateway.policy`` is the gateway's bottom layer: of the gateway it imports only itself
  and the base modules, which import nothing above them either.
- ``gateway.upstream``, ``gateway.sessions`` and ``gateway.settings`` import neither
  ``gateway.routing`` nor ``gateway.http``; ``gateway.routing`` imports neither
  ``gateway.http`` nor ``gateway.upstream``.
- ``gateway.upstream.http1`` (the HTTP client for nodes) imports of the gateway only
  itself and ``gateway.upstream.loop_timeout``.

And, in a fresh interpreter, the policy's values and the retry rules load neither tiktoken
nor the YAML parser.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

PACKAGES = ("gateway", "edge_node", "cloud_node", "hybrid_common")

BASE = ("gateway.errors", "gateway.text", "gateway.tokens")
"""The gateway's modules below the policy: the error tree, text scrubbing, token counts."""


@dataclass(frozen=True, slots=True)
class Import:
    source: str
    path: Path
    line: int
    target: str

    def __str__(self) -> str:
        return (
            f"{self.path.relative_to(REPO_ROOT)}:{self.line}: {self.source} imports {self.target}"
        )


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _modules() -> dict[str, Path]:
    found = {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }
    assert set(PACKAGES) <= set(found), f"a package is missing: {set(PACKAGES) - set(found)}"
    return found


def _resolve(module: str, path: Path, level: int, name: str | None) -> str:
    """The absolute name ``from <level dots><name>`` means inside ``module``."""
    if not level:
        return name or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, name] if name else base)


@functools.cache
def _imports() -> tuple[Import, ...]:
    """Every import of a project module by a project module."""
    modules = _modules()
    found: list[Import] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path, node.level, node.module)
                # `from gateway.upstream import client` imports the module gateway.upstream.client.
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
                targets = [t for t in targets if t == base or t in modules]
            else:
                continue
            for target in targets:
                if target.split(".")[0] in PACKAGES:
                    found.append(Import(module, path, node.lineno, target))
    return tuple(found)


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _offending(source: Callable[[str], bool], allowed: Callable[[str], bool]) -> list[str]:
    return [str(i) for i in _imports() if source(i.source) and not allowed(i.target)]


def _not(*prefixes: str) -> Callable[[str], bool]:
    return lambda target: not _within(target, prefixes)


# (what the rule says, which modules it binds, which imports they may make)
RULES: list[tuple[str, Callable[[str], bool], Callable[[str], bool]]] = [
    (
        "hybrid_common imports none of gateway, edge_node, cloud_node",
        lambda m: _within(m, ["hybrid_common"]),
        lambda t: _within(t, ["hybrid_common"]),
    ),
    (
        "edge_node imports nothing from gateway or cloud_node",
        lambda m: _within(m, ["edge_node"]),
        _not("gateway", "cloud_node"),
    ),
    (
        "cloud_node imports nothing from gateway or edge_node",
        lambda m: _within(m, ["cloud_node"]),
        _not("gateway", "edge_node"),
    ),
    (
        "gateway.policy is a base layer: of the gateway only itself and the base modules",
        lambda m: _within(m, ["gateway.policy"]),
        lambda t: _within(t, ["gateway.policy", *BASE, "hybrid_common"]),
    ),
    (
        "the base modules import only each other",
        lambda m: _within(m, BASE),
        lambda t: _within(t, [*BASE, "hybrid_common"]),
    ),
    (
        "upstream, sessions and settings import neither routing nor http",
        lambda m: _within(m, ["gateway.upstream", "gateway.sessions", "gateway.settings"]),
        _not("gateway.routing", "gateway.http"),
    ),
    (
        "shadow (background re-asks of the cloud) imports neither routing nor http",
        lambda m: _within(m, ["gateway.shadow"]),
        _not("gateway.routing", "gateway.http"),
    ),
    (
        "upstream.http1 (the HTTP client for nodes) knows nothing of chat: of the gateway, "
        "only itself and loop_timeout",
        lambda m: _within(m, ["gateway.upstream.http1"]),
        lambda t: (
            not _within(t, ["gateway", "hybrid_common"])
            or _within(t, ["gateway.upstream.http1", "gateway.upstream.loop_timeout"])
        ),
    ),
    (
        "routing imports neither http nor upstream",
        lambda m: _within(m, ["gateway.routing"]),
        _not("gateway.http", "gateway.upstream"),
    ),
]


@pytest.mark.parametrize(("rule", "source", "allowed"), RULES, ids=[r[0] for r in RULES])
def test_imports_point_one_way(
    rule: str, source: Callable[[str], bool], allowed: Callable[[str], bool]
) -> None:
    assert any(source(i.source) for i in _imports()), f"the rule binds no module: {rule}"
    offending = _offending(source, allowed)
    assert not offending, f"{rule}; offending imports:\n" + "\n".join(offending)


def test_the_graph_is_read_whole() -> None:
    """The reader itself: relative imports resolve, and known edges are seen."""
    edges = {(i.source, i.target) for i in _imports()}
    assert ("edge_node.tracing", "hybrid_common.otel") in edges
    assert ("gateway.upstream.retry", "gateway.policy.fallback") in edges
    assert ("edge_node.settings", "edge_node.tracing") in edges  # `from .tracing import`
    assert _resolve("edge_node.app", REPO_ROOT / "edge_node/app.py", 1, "errors") == (
        "edge_node.errors"
    )
    assert _resolve("gateway.http", REPO_ROOT / "gateway/http/__init__.py", 2, "errors") == (
        "gateway.errors"
    )


@pytest.mark.parametrize(
    "module",
    [
        "gateway.upstream.retry",
        "gateway.policy",
        "gateway.policy.model",
        "gateway.policy.capabilities",
        "gateway.policy.answer_budget",
        "hybrid_common.protocol",
        "hybrid_common.errors",
    ],
)
def test_the_lower_layers_load_neither_tiktoken_nor_yaml(module: str) -> None:
    """Token counting (0.3 s of encoding load) and the YAML parser belong to the layers
    that use them; a module that only reads the policy's values pays for neither."""
    probe = (
        f"import sys, {module}\n"
        "print(','.join(sorted(m for m in ('tiktoken', 'yaml') if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"import {module} loaded: {done.stdout.strip()}"


def test_the_parser_does_load_yaml() -> None:
    """The probe above can fail: the parser's module loads the YAML parser."""
    probe = "import sys, gateway.policy.parse; print('yaml' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "True"


def _copied(dockerfile: str) -> set[str]:
    text = (REPO_ROOT / "docker" / dockerfile).read_text(encoding="utf-8")
    return set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))


def _needs(package: str) -> set[str]:
    """``package`` and every project package it imports, directly or not."""
    needed, todo = {package}, [package]
    while todo:
        current = todo.pop()
        for i in _imports():
            top = i.target.split(".")[0]
            if i.source.split(".")[0] == current and top not in needed:
                needed.add(top)
                todo.append(top)
    return needed


def test_the_package_and_the_images_carry_every_package() -> None:
    """pyproject installs every package; the images that ``pip install .`` copy them all,
    and the cloud node's image (no install, PYTHONPATH) copies what cloud_node imports."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in include} >= set(PACKAGES), include
    for dockerfile in ("gateway.Dockerfile", "edge.Dockerfile"):
        missing = set(PACKAGES) - _copied(dockerfile)
        assert not missing, f"docker/{dockerfile} does not COPY {sorted(missing)}"
    needed = _needs("cloud_node")
    assert "hybrid_common" in needed
    missing = needed - _copied("cloud-cpu.Dockerfile")
    assert not missing, f"docker/cloud-cpu.Dockerfile does not COPY {sorted(missing)}"


def test_every_source_directory_is_a_package() -> None:
    """setuptools installs only directories with an ``__init__.py``: one without it works
    from a checkout (a namespace package) and is missing from the wheel and the images."""
    directories = {path.parent for path in _modules().values()}
    missing = sorted(
        str(d.relative_to(REPO_ROOT)) for d in directories if not (d / "__init__.py").exists()
    )
    assert not missing, f"no __init__.py in {missing}"
