"""``python -m edge_node``: serve one GGUF model over the OpenAI chat-completions API;
``python -m edge_node quantize ...`` makes GGUF variants (:mod:`edge_node.quantize`)."""

from __future__ import annotations

import faulthandler
import logging
import sys

from aiohttp import web

from .app import create_app
from .cli import parse_settings
from .keys import MODELS


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["quantize"]:
        from .quantize import main as quantize

        return quantize(args[1:])
    settings = parse_settings(args)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # A fatal signal inside llama.cpp (a CPU kernel faulting) prints the Python stack to
    # the log instead of the process vanishing without a word.
    faulthandler.enable()
    # The engine thread gives up the GIL in every llama.cpp call (a sampler, a token's
    # text, the decode) and must get it back from the event loop, which holds it up to
    # the switch interval (5 ms by default) while it serves the streams: with 8 sequences
    # that is over a dozen hand-overs per decoding step. A shorter interval keeps the
    # engine from waiting on the loop (one comparison at 8 streams: 294 -> 319 tokens per
    # CPU second).
    sys.setswitchinterval(0.0005)
    log = logging.getLogger("edge_node")

    def exit_on_failure(reason: str) -> None:
        log.error("exiting: the model cannot serve on this host: %s", reason)
        raise web.GracefulExit  # stops run_app from the event loop; main returns 1

    app = create_app(settings, on_failure=exit_on_failure)
    log.info(
        "serving %s as %r on http://%s:%d",
        settings.model_path,
        settings.served_model_name,
        settings.host,
        settings.port,
    )
    for name, path in settings.variants:
        log.info("variant %r: %s (loaded on demand)", name, path)
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
    # After shutdown the engine is closed; a load or self-check failure stays recorded.
    return 1 if app[MODELS].load_error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
