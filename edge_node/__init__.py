"""Edge node: an OpenAI-compatible aiohttp server around one llama.cpp (GGUF) model."""

from .app import create_app
from .settings import Settings, parse_settings

__all__ = ["Settings", "create_app", "parse_settings"]
