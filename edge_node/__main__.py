"""``python -m edge_node``: serve one GGUF model over the OpenAI chat-completions API."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from .app import create_app
from .engine import EngineState
from .keys import ENGINE
from .settings import parse_settings


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    app = create_app(settings)
    logging.getLogger("edge_node").info(
        "serving %s as %r on http://%s:%d",
        settings.model_path,
        settings.served_model_name,
        settings.host,
        settings.port,
    )
    # handler_cancellation: a client that disconnects cancels its handler, which frees its
    # slot in the admission queue and stops its generation at the next token.
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        handler_cancellation=True,
        access_log=None,
        print=None,
    )
    return 1 if app[ENGINE].state is EngineState.FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
