"""The start-up self-check: a few greedy tokens decoded before the node says it is ready.

A model that loads can still fail at its first decode: llama.cpp's CPU kernels may fault
on this host (the AMX repacking crash, see :mod:`edge_node.repack`) or compute garbage (a
broken kernel or a corrupt file gives NaN logits). Found here, that is a log line naming
the cause and a non-zero exit at start-up, instead of ``/health`` saying 200 and the node
dying, or answering nonsense, at a user's first request. A fault that kills the process
outright cannot be caught in Python: the node logs what it is about to run first and
enables :mod:`faulthandler`, so its log still says where it died.

Runs on the engine's worker thread, which owns the model, before any request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .model import ChatModel
from .schema import PromptMessage

__all__ = ["SELF_CHECK_TOKENS", "SelfCheckFailed", "SelfCheckResult", "run_self_check"]

SELF_CHECK_TOKENS = 4
_PROMPT = (PromptMessage(role="user", content="Reply with one word: are you ready?"),)


class SelfCheckFailed(Exception):
    """The model loaded but cannot generate on this host; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SelfCheckResult:
    """What the check generated, for the start-up log."""

    prompt_tokens: int
    tokens: int
    text: str
    seconds: float


def run_self_check(model: ChatModel, max_tokens: int = SELF_CHECK_TOKENS) -> SelfCheckResult:
    """Evaluate a short prompt and decode up to ``max_tokens`` greedily, checking every
    step's logits are finite; raises SelfCheckFailed with the reason otherwise."""
    started = time.perf_counter()
    llm = model.llm
    try:
        prompt = model.prompt_tokens(_PROMPT)
        if len(prompt) + max_tokens > model.n_ctx:
            raise SelfCheckFailed(
                f"the context window of {model.n_ctx} tokens cannot hold the check's "
                f"{len(prompt)}-token prompt and {max_tokens} tokens: raise --n-ctx"
            )
        llm.reset()
        llm.eval(prompt)
        generated: list[int] = []
        while True:
            token = _greedy_token(model, step=len(generated))
            if model.is_end_of_generation(token) or len(generated) >= max_tokens:
                break
            generated.append(token)
            llm.eval([token])
    except SelfCheckFailed:
        raise
    except Exception as exc:  # whatever llama.cpp raised is the reason, said in words
        raise SelfCheckFailed(f"generation raised {type(exc).__name__}: {exc}") from exc
    finally:
        llm.reset()  # the first request starts from an empty context
    text = b"".join(model.piece(token) for token in generated).decode("utf-8", errors="replace")
    return SelfCheckResult(
        prompt_tokens=len(prompt),
        tokens=len(generated),
        text=text,
        seconds=time.perf_counter() - started,
    )


def _greedy_token(model: ChatModel, *, step: int) -> int:
    """The most likely next token after the last decode; its logits must be finite."""
    logits = model.last_logits()
    bad = int(np.count_nonzero(~np.isfinite(logits)))
    if bad:
        raise SelfCheckFailed(
            f"decode step {step} produced {bad} of {logits.size} non-finite logits "
            "(NaN or infinity): the CPU kernels or the model file are broken on this host"
        )
    return int(np.argmax(logits))
