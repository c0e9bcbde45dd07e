"""The cloud node: a launcher for vLLM's own OpenAI-compatible server.

Nothing here re-implements serving. ``serve`` turns a validated profile into vLLM's
command line and execs it; ``prepare`` makes a safetensors checkpoint from a GGUF model
shipped in a PyPI package, for machines that cannot reach a model hub. Importing this
package needs only the standard library and PyYAML, so the gateway's environment can too.
"""

from cloud_node.builds import check_build, classify_build, detect_build, detect_build_of
from cloud_node.command import VLLM_SERVER_MODULE, LaunchSpec, build_launch
from cloud_node.dev import DEV_PROFILES, dev_profile
from cloud_node.errors import BuildMismatch, CloudNodeError, PrepareError, ProfileError
from cloud_node.prepare import MARKER_NAME, PrepareResult, prepare_model
from cloud_node.profile import Build, Profile, apply_overrides, load_profile, parse_profile
from cloud_node.sources import SOURCES, ModelSource, default_model_dir, resolve_model_ref

__all__ = [
    "DEV_PROFILES",
    "MARKER_NAME",
    "SOURCES",
    "VLLM_SERVER_MODULE",
    "Build",
    "BuildMismatch",
    "CloudNodeError",
    "LaunchSpec",
    "ModelSource",
    "PrepareError",
    "PrepareResult",
    "Profile",
    "ProfileError",
    "apply_overrides",
    "build_launch",
    "check_build",
    "classify_build",
    "default_model_dir",
    "detect_build",
    "detect_build_of",
    "dev_profile",
    "load_profile",
    "parse_profile",
    "prepare_model",
    "resolve_model_ref",
]
