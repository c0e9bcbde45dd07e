"""Hybrid edge-cloud LLM routing gateway."""

from gateway.app import create_app
from gateway.settings import Settings, settings_from_env

__all__ = ["Settings", "create_app", "settings_from_env"]
__version__ = "0.1.0"
