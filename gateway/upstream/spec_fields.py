"""Completing a ``chat.completion`` body with what OpenAI's schema requires of it.

OpenAI's published OpenAPI schema (``CreateChatCompletionResponse``, shipped in
``tests/schemas/``) requires fields that OpenAI-compatible servers often leave out:
llama.cpp and the edge node send no ``logprobs``, few servers send ``refusal``, and
strict clients (generated from that schema) reject a body without them. The gateway
answers with one shape whichever node wrote the answer, so both the assembler of
streamed answers (:mod:`gateway.upstream.aggregate`) and the plain pass-through path
(:mod:`gateway.upstream.completion`) run their body through :func:`complete_spec_fields`.

Rules: a required field that is missing (or null where the schema forbids null) gets the
value OpenAI itself sends in that case; every field already there is kept as it is,
including fields the schema does not know (``reasoning_content``, vLLM's ``stop_reason``,
...). Values of the wrong type are not repaired: they are the node's answer.
"""

from __future__ import annotations

import time
import uuid

FINISHED = "stop"
"""The finish reason of an answer that ended without naming one: the gateway only
assembles answers that ended (a broken one is continued or fails), and OpenAI's schema
allows no null finish reason in a ``chat.completion``."""


def complete_spec_fields(body: dict[str, object], *, model: str) -> bool:
    """Fill in the fields of ``body`` that the schema requires and it lacks; True if any.

    ``model`` names the answering model where the body does not. A body without a
    ``choices`` list is not a completion at all and is left as it is.
    """
    choices = body.get("choices")
    if not isinstance(choices, list):
        return False
    changed = False
    defaults: dict[str, object] = {
        "object": "chat.completion",
        "model": model,
    }
    for name, value in defaults.items():
        if not isinstance(body.get(name), str):
            body[name] = value
            changed = True
    if not isinstance(body.get("id"), str):
        body["id"] = f"chatcmpl-{uuid.uuid4().hex}"
        changed = True
    if "created" not in body or body["created"] is None:
        body["created"] = int(time.time())
        changed = True
    for position, choice in enumerate(choices):
        if isinstance(choice, dict):
            changed = _complete_choice(choice, position) or changed
    return changed


def _complete_choice(choice: dict[str, object], position: int) -> bool:
    changed = False
    if "index" not in choice:
        choice["index"] = position
        changed = True
    if choice.get("finish_reason") is None:
        choice["finish_reason"] = FINISHED
        changed = True
    logprobs = choice.get("logprobs")
    if "logprobs" not in choice:
        choice["logprobs"] = None
        changed = True
    elif isinstance(logprobs, dict):
        # Both lists are required (nullable): a node that sent only content tokens.
        for name in ("content", "refusal"):
            if name not in logprobs:
                logprobs[name] = None
                changed = True
    message = choice.get("message")
    if not isinstance(message, dict):
        message = choice["message"] = {}
        changed = True
    return _complete_message(message) or changed


def _complete_message(message: dict[str, object]) -> bool:
    changed = False
    if "role" not in message:
        message["role"] = "assistant"
        changed = True
    for name in ("content", "refusal"):  # required, nullable
        if name not in message:
            message[name] = None
            changed = True
    if "annotations" not in message:
        message["annotations"] = []  # what OpenAI sends when it cites nothing
        changed = True
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                changed = _complete_tool_call(call) or changed
    return changed


def _complete_tool_call(call: dict[str, object]) -> bool:
    changed = False
    if not isinstance(call.get("id"), str):
        # The client sends the id back with the tool's result; any unique id serves.
        call["id"] = f"call_{uuid.uuid4().hex[:24]}"
        changed = True
    if "type" not in call:
        call["type"] = "function"
        changed = True
    function = call.get("function")
    if isinstance(function, dict):
        for name in ("name", "arguments"):
            if name not in function:
                function[name] = ""  # a call without arguments sends none
                changed = True
    return changed


__all__ = ["FINISHED", "complete_spec_fields"]
