"""The loaded GGUF model: llama.cpp context, chat template from the GGUF metadata, tokens.

``llama_cpp`` is imported lazily so that importing the package (for settings, the CLI's
``--help`` or the tests' helpers) never loads the native library.

Thread-safety: ``prompt_tokens`` only renders the Jinja template and runs llama.cpp's
tokenizer, which reads the immutable vocabulary, so it may run on any thread while the
engine's worker decodes. Everything touching ``llm``'s context (generation, KV state)
belongs to the engine's single worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import numpy.typing as npt

from .backends import load_cpu_backend
from .errors import ContextLengthExceeded, InvalidRequest
from .repack import RepackDecision, decide_repack, read_cpu_flags
from .schema import PromptMessage
from .settings import Settings

log = logging.getLogger(__name__)

# Used only when a GGUF carries no chat template (SmolLM2's does).
_FALLBACK_TEMPLATE_NAME = "chatml"


class ChatModel:
    """A llama.cpp model plus its chat template; owned by the engine worker thread."""

    def __init__(self, llm: Any, *, name: str, n_ctx: int | None = None) -> None:
        from llama_cpp import llama_chat_format, llama_cpp

        self.llm = llm
        self.name = name
        # The context window of one request. The batching engine's llama.cpp context is
        # larger (its KV pool holds every sequence): then the window is given.
        self.n_ctx: int = int(n_ctx) if n_ctx else int(llm.n_ctx())
        self.kv_cells: int = int(llm.n_ctx())
        self.n_vocab: int = int(llm.n_vocab())
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
        self.max_token_bytes = _longest_token_bytes(self._vocab, self.n_vocab)

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

    def last_logits(self) -> npt.NDArray[np.float32]:
        """The logits of the last decoded token (a view of llama.cpp's buffer)."""
        from llama_cpp import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        logits: npt.NDArray[np.float32] = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        return logits

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
    """Load the GGUF named in settings; blocking (seconds), so call it off the event loop.

    For the batching engine (``parallel > 1``) the context has ``parallel`` sequences and
    ``kv_cells_for(window)`` KV cells, with flash attention. By default each sequence has
    its own stream of ``kv_cells / parallel`` cells, which is also its context window;
    with ``kv_unified`` the sequences share one pool, and flash attention's CPU kernel then
    skips the other sequences' cells instead of computing and masking them.

    Why streams by default: with a shared pool a sequence's cells sit among the others',
    and llama.cpp's attention then adds the same terms in another order than in a lone
    run, so a greedy answer can flip at a near-tie (seen with SmolLM2 on 2 of 4 prompts).
    With one stream per sequence every answer is bit for bit the answer it gets alone
    (tests/edge_node/test_batching.py checks it).
    """
    from llama_cpp import Llama, llama_cpp

    backend = load_cpu_backend()  # before the first Llama(): a dispatch build loads it here
    repack = decide_repack(settings.weight_repack, read_cpu_flags())
    log.info("cpu backend: %s; weight repacking %s", backend.describe(), repack.describe())
    window: int | None = None
    n_ctx = settings.n_ctx
    if settings.batching:
        window = settings.n_ctx or training_context(settings.model_path)
        n_ctx = settings.kv_cells_for(window)
        per_sequence = n_ctx if settings.kv_unified else n_ctx // settings.parallel
        if per_sequence < window:
            log.warning(
                "the context window is cut to %d tokens: the KV cells (--kv-cells %d) give "
                "each of the %d sequences no more",
                per_sequence,
                n_ctx,
                settings.parallel,
            )
            window = per_sequence
        log.info(
            "continuous batching: %d sequences, %d KV cells (%s), window %d tokens",
            settings.parallel,
            n_ctx,
            "one shared pool" if settings.kv_unified else "one stream per sequence",
            window,
        )
    sequences = (settings.parallel, settings.kv_unified) if settings.batching else None
    with _model_params(repack, sequences):
        llm = Llama(
            model_path=str(settings.model_path),
            n_ctx=n_ctx,
            n_batch=settings.n_batch,
            n_threads=settings.n_threads,
            n_threads_batch=settings.n_threads,
            n_gpu_layers=settings.n_gpu_layers,
            flash_attn=settings.batching,
            verbose=settings.log_level == "DEBUG",
        )
    if window is not None:  # llama.cpp may round the cells: a sequence gets no more
        window = min(window, int(llama_cpp.llama_n_ctx_seq(llm.ctx)))
    return ChatModel(llm, name=settings.served_model_name, n_ctx=window)


def training_context(path: Path) -> int:
    """The model's training context length, read without loading its weights."""
    from llama_cpp import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ValueError(f"llama.cpp could not read {path}")
    try:
        return int(llama_cpp.llama_model_n_ctx_train(model))
    finally:
        llama_cpp.llama_model_free(model)


# Serialises the patch below: nodes started side by side in one process (tests) load
# their models on their own threads.
_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _model_params(repack: RepackDecision, sequences: tuple[int, bool] | None) -> Iterator[None]:
    """Make ``Llama()`` load with ``use_extra_bufts`` as decided and, for the batching
    engine, a context of ``sequences = (n, unified)`` sequences.

    llama-cpp-python (0.3.x) has no arguments for these: ``Llama.__init__`` starts from
    ``llama_model_default_params()`` and ``llama_context_default_params()`` and sets only
    the fields it knows. So for the duration of one construction those functions return
    defaults with these applied; ``llm.model_params`` and ``llm.context_params`` then
    show what llama.cpp was given.
    """
    from llama_cpp import llama_cpp

    model_defaults = llama_cpp.llama_model_default_params
    context_defaults = llama_cpp.llama_context_default_params

    def with_decision() -> Any:
        params = model_defaults()
        params.use_extra_bufts = repack.enabled
        return params

    def with_sequences() -> Any:
        params = context_defaults()
        if sequences is not None:
            params.n_seq_max, params.kv_unified = sequences
        return params

    with _PARAMS_LOCK:
        llama_cpp.llama_model_default_params = with_decision
        llama_cpp.llama_context_default_params = with_sequences
        try:
            yield
        finally:
            llama_cpp.llama_model_default_params = model_defaults
            llama_cpp.llama_context_default_params = context_defaults


ModelLoader = Callable[[Settings], ChatModel]
"""The seam the app loads its model through (tests wrap the real loader to time it)."""
