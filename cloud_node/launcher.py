"""From a profile reference to a running vLLM server.

``plan_launch`` does every check (profile, overrides, installed build, prepared model)
and returns the command; ``exec_launch`` replaces this process with it. Exec rather than a
child process: SIGTERM from an orchestrator and SIGINT from a terminal reach vLLM itself,
with the PID the caller started, so there is no supervisor to forward signals, to die
alone and leave an orphaned server behind, or to hide vLLM's exit status.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from cloud_node.builds import check_build
from cloud_node.command import LaunchSpec, build_launch
from cloud_node.errors import CloudNodeError, ProfileError
from cloud_node.prepare import MARKER_NAME
from cloud_node.profile import Build, Profile, apply_overrides, load_profile
from cloud_node.sources import PREPARED_PREFIX, resolve_model_ref

__all__ = ["bundled_profiles", "describe", "exec_launch", "find_profile", "plan_launch"]


def bundled_profiles() -> list[str]:
    """Names of the profiles shipped in ``cloud_node/profiles/``."""
    folder = resources.files("cloud_node") / "profiles"
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )


def find_profile(ref: str) -> Path:
    """A profile file path, or the name of a bundled profile (``cpu``, ``gpu-single``...)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if ref in bundled_profiles():
        return Path(str(resources.files("cloud_node") / "profiles" / f"{ref}.yaml"))
    names = ", ".join(bundled_profiles())
    raise ProfileError(
        f"{ref}: no such profile file, and no bundled profile of that name ({names})"
    )


def plan_launch(
    profile_ref: str,
    *,
    overrides: Mapping[str, object],
    extra_args: Sequence[str],
    env: Mapping[str, str],
    home: Path,
    python: str,
    installed: Build | None,
    check: bool = True,
) -> tuple[Profile, LaunchSpec]:
    """Validate everything that can be checked before vLLM starts, and build its command."""
    profile = apply_overrides(load_profile(find_profile(profile_ref)), overrides)
    if extra_args:
        profile = dataclasses.replace(profile, extra_args=(*profile.extra_args, *extra_args))
    model = resolve_model_ref(profile.model, env=env, home=home)
    if check:
        check_build(wanted=profile.build, installed=installed, python=python)
        if profile.model.startswith(PREPARED_PREFIX) and not (Path(model) / MARKER_NAME).is_file():
            source = profile.model.removeprefix(PREPARED_PREFIX)
            raise CloudNodeError(
                f"model {profile.model!r} is not prepared at {model}: run "
                f"`{python} -m cloud_node prepare --source {source}` first, or pass --model"
            )
    profile = dataclasses.replace(profile, model=model)
    return profile, build_launch(profile, python=python)


def describe(spec: LaunchSpec) -> str:
    """The command as a shell line, variables first; the API key's value is masked."""
    shown = {k: ("***" if k == "VLLM_API_KEY" else v) for k, v in sorted(spec.env.items())}
    assignments = [f"{k}={shlex.quote(v)}" for k, v in shown.items()]
    return " ".join([*assignments, shlex.join(spec.argv)])


def exec_launch(spec: LaunchSpec) -> None:
    """Replace this process with vLLM's server; returns only by raising."""
    env = {**os.environ, **spec.env}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(spec.argv[0], list(spec.argv), env)
    except OSError as exc:
        raise CloudNodeError(f"cannot start {spec.argv[0]}: {exc.strerror or exc}") from exc
