"""Hybrid edge-cloud LLM routing gateway.

Imports are lazy: importing a submodule (``gateway.policy.model``, ``gateway.errors``)
must not pay for the gateway's server stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import create_app
    from gateway.settings import Settings, settings_from_env

__all__ = ["Settings", "create_app", "settings_from_env"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from gateway.app import create_app

        return create_app
    if name in ("Settings", "settings_from_env"):
        from gateway import settings

        return getattr(settings, name)
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
