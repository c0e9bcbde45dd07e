"""Edge node: an OpenAI-compatible aiohttp server around one llama.cpp (GGUF) model."""

from .app import create_app
from .cli import parse_settings
from .settings import Settings

__all__ = ["Settings", "create_app", "parse_settings"]
