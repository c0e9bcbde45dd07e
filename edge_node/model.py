"""The loaded GGUF model: llama.cpp context, chat template from the GGUF metadata, tokens.

``llama_cpp`` is imported lazily so that importing the package (for settings, the CLI's
``--help`` or the tests' helpers) never loads the native library.

Thread-safety: ``prompt_tokens`` only renders the Jinja template and runs llama.cpp's
tokenizer, which reads the immutable vocabulary, so it may run on any thread while the
engine's worker decodes. Everything touching ``llm``'s context (generation, KV state)
belongs to the engine's single worker thread.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jinja2

from .errors import ContextLengthExceeded, InvalidRequest
from .schema import PromptMessage
from .settings import Settings

log = logging.getLogger(__name__)

# Used only when a GGUF carries no chat template (SmolLM2's does).
_FALLBACK_TEMPLATE_NAME = "chatml"


class ChatModel:
    """A llama.cpp model plus its chat template; owned by the engine worker thread."""

    def __init__(self, llm: Any, *, name: str) -> None:
        from llama_cpp import llama_chat_format, llama_cpp

        self.llm = llm
        self.name = name
        self.n_ctx: int = int(llm.n_ctx())
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._is_eog: Callable[[Any, int], bool] = llama_cpp.llama_vocab_is_eog

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            log.warning(
                "%s has no chat template in its metadata; using %s", name, _FALLBACK_TEMPLATE_NAME
            )
            template = llama_chat_format.CHATML_CHAT_TEMPLATE
        eos_id, bos_id = int(llm.token_eos()), int(llm.token_bos())
        # The same formatter llama-cpp-python's create_chat_completion builds from the GGUF.
        self._formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(eos_id),
            bos_token=self._token_text(bos_id),
            stop_token_ids=[eos_id],
        )
        # No token is longer than this, so a prompt of more than n_ctx * this many bytes
        # cannot fit and is refused without tokenizing megabytes (seconds of CPU).
        self.max_token_bytes = _longest_token_bytes(self._vocab, int(llm.n_vocab()))

    def _token_text(self, token: int) -> str:
        if token == -1:
            return ""
        data: bytes = self.llm.detokenize([token], special=True)
        return data.decode("utf-8", errors="replace")

    def prompt_tokens(self, messages: Sequence[PromptMessage]) -> list[int]:
        """Render the chat template and tokenize it; template errors are the client's (400)."""
        try:
            # Plain dicts: llama-cpp-python's per-role TypedDicts add nothing here.
            payload: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
            result = self._formatter(messages=payload)
        except (jinja2.TemplateError, ValueError, TypeError) as exc:
            # Templates reject shapes they do not know (e.g. non-alternating roles).
            raise InvalidRequest(
                f"The chat template rejected the messages: {exc}", param="messages"
            ) from exc
        prompt = result.prompt.encode("utf-8")
        if len(prompt) > self.n_ctx * self.max_token_bytes:
            at_least = len(prompt) // self.max_token_bytes
            raise ContextLengthExceeded(prompt_tokens=at_least, n_ctx=self.n_ctx, at_least=True)
        tokens: list[int] = self.llm.tokenize(
            prompt, add_bos=not result.added_special, special=True
        )
        return tokens

    def is_end_of_generation(self, token: int) -> bool:
        """True for EOS/EOT-like tokens (``<|im_end|>`` for SmolLM2)."""
        return bool(self._is_eog(self._vocab, token))

    def piece(self, token: int) -> bytes:
        """The bytes of one generated token (special tokens render as nothing)."""
        data: bytes = self.llm.detokenize([token])
        return data

    def close(self) -> None:
        """Free the native model and context."""
        self.llm.close()


def _longest_token_bytes(vocab: Any, n_vocab: int) -> int:
    # llama_token_to_piece directly: Llama.detokenize caps pieces at 32 bytes, and
    # SmolLM2 has tokens of 81.
    from llama_cpp import llama_cpp

    size = 256
    buffer = ctypes.create_string_buffer(size)
    longest = 1
    for token in range(n_vocab):
        length = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, True)
        longest = max(longest, abs(length))  # negative: the piece needs -length bytes
    return longest


def load_model(settings: Settings) -> ChatModel:
    """Load the GGUF named in settings; blocking (seconds), so call it off the event loop."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(settings.model_path),
        n_ctx=settings.n_ctx,
        n_batch=settings.n_batch,
        n_threads=settings.n_threads,
        n_threads_batch=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        verbose=settings.log_level == "DEBUG",
    )
    return ChatModel(llm, name=settings.served_model_name)


ModelLoader = Callable[[Settings], ChatModel]
"""The seam the app loads its model through (tests wrap the real loader to time it)."""
