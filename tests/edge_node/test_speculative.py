"""Prompt-lookup speculative decoding: the proposer and acceptance rule (pure), the options,
and the batching engine with the real model, speculation on against off, token for token."""

from __future__ import annotations

import queue
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge_node.batching import BatchOptions, BatchRunner
from edge_node.cli import parse_settings
from edge_node.generation import Delta, Finished, GenerationParams, PromptEvaluated, Started
from edge_node.jobs import Event, Failed, Job
from edge_node.model import ChatModel, load_model
from edge_node.schema import PromptMessage, Sampling
from edge_node.settings import Settings, default_model_path
from edge_node.speculative import PromptLookup, SpeculationOptions, verify_drafts
from tests.edge_node.conftest import NodeFactory, chat_body
from tests.fixtures.edge import EDGE_TEST_N_THREADS

# SmolLM2 copies this list back (its answer is mostly drafts that are accepted).
REPEAT = (
    "Repeat this list exactly, but replace 'pears' with 'plums':\n"
    "1. apples\n2. pears\n3. cherries\n4. grapes\n5. lemons\n6. oranges\n7. peaches"
)
OPEN = "Why do leaves change colour in autumn?"
SPEC = SpeculationOptions(draft_tokens=4, max_ngram=3, min_ngram=2)

# -- the proposer ----------------------------------------------------------------------


def test_the_longest_suffix_that_occurred_before_proposes_what_followed_it() -> None:
    # Suffix (7, 8, 9): seen once, followed by 1, 2. Its 2-gram (8, 9) also occurred
    # later, followed by 5: the 3-gram wins.
    lookup = PromptLookup([7, 8, 9, 1, 2, 3, 8, 9, 5, 6, 7, 8, 9], max_ngram=3)
    assert lookup.propose(2) == [1, 2]


def test_the_latest_occurrence_of_an_ngram_wins() -> None:
    lookup = PromptLookup([4, 5, 10, 4, 5, 20, 4, 5], max_ngram=2)
    assert lookup.propose(1) == [20]


def test_no_earlier_occurrence_proposes_nothing() -> None:
    assert PromptLookup([1, 2, 3, 4], max_ngram=3).propose(4) == []
    assert PromptLookup([], max_ngram=3).propose(4) == []
    assert PromptLookup([9], max_ngram=3).propose(4) == []  # a suffix never matches itself


def test_the_proposal_is_bounded_by_the_limit() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 6, 7, 1, 2], max_ngram=2)
    assert lookup.propose(3) == [3, 4, 5]
    assert lookup.propose(0) == []


def test_a_match_near_the_end_proposes_only_the_tokens_there_are() -> None:
    lookup = PromptLookup([1, 2, 3, 1, 2], max_ngram=2)
    assert lookup.propose(8) == [3, 1, 2]  # up to the context's end, no further


def test_suffixes_shorter_than_min_ngram_propose_nothing() -> None:
    context = [1, 2, 3, 9, 2]  # only the 1-gram (2) occurred before
    assert PromptLookup(context, max_ngram=3, min_ngram=1).propose(2) == [3, 9]
    assert PromptLookup(context, max_ngram=3, min_ngram=2).propose(2) == []


def test_appended_tokens_are_indexed() -> None:
    lookup = PromptLookup([1, 2, 3], max_ngram=2)
    assert lookup.propose(2) == []
    lookup.extend([4, 2])
    assert lookup.propose(2) == [3, 4]
    lookup.append(3)  # suffix (2, 3) now: followed by 4 before
    assert lookup.propose(2) == [4, 2]
    assert len(lookup) == 6


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"draft_tokens": 0, "max_ngram": 3}, "draft_tokens must be in 1..32"),
        ({"draft_tokens": 33, "max_ngram": 3}, "draft_tokens must be in 1..32"),
        ({"draft_tokens": 4, "max_ngram": 9}, "n-gram sizes"),
        ({"draft_tokens": 4, "max_ngram": 2, "min_ngram": 3}, "n-gram sizes"),
        ({"draft_tokens": 4, "max_ngram": 2, "min_ngram": 0}, "n-gram sizes"),
    ],
)
def test_speculation_options_are_validated(options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpeculationOptions(**options)


# -- the acceptance rule -----------------------------------------------------------------


def taker(samples: list[int | None]) -> tuple[list[int], Any]:
    """A ``take`` that returns scripted samples and records the positions it was asked."""
    asked: list[int] = []

    def take(i: int) -> int | None:
        asked.append(i)
        return samples[i]

    return asked, take


def test_drafts_are_accepted_while_the_samples_match() -> None:
    asked, take = taker([5, 6, 0, 8])
    assert verify_drafts([5, 6, 7], take) == 2
    assert asked == [0, 1, 2]  # the differing sample is taken (it is the model's token)


def test_all_drafts_accepted_takes_one_more_token() -> None:
    asked, take = taker([5, 6, 7, 8])
    assert verify_drafts([5, 6, 7], take) == 3
    assert asked == [0, 1, 2, 3]


def test_a_first_mismatch_accepts_nothing() -> None:
    asked, take = taker([1, 6, 7, 8])
    assert verify_drafts([5, 6, 7], take) == 0
    assert asked == [0]


def test_a_sequence_that_ends_stops_the_run() -> None:
    asked, take = taker([5, None, 7, 8])  # ended at its second token (stop string, ...)
    assert verify_drafts([5, 6, 7], take) == 1
    assert asked == [0, 1]


# -- options -------------------------------------------------------------------------------


def settings(model_path: Path, **fields: Any) -> Settings:
    return Settings(model_path=model_path, **fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"speculative": "prompt-lookup", "parallel": 1}, "needs the batching engine"),
        ({"speculative": "ngram"}, "speculative must be one of off, prompt-lookup"),
        ({"speculative": "prompt-lookup", "draft_tokens": 0}, "draft_tokens must be in 1..32"),
        ({"draft_tokens": 33}, "draft_tokens must be in 1..32"),
        ({"lookup_ngram": 0}, "lookup_ngram must be in 1..8"),
        ({"lookup_ngram": 9}, "lookup_ngram must be in 1..8"),
        (
            {"lookup_ngram": 2, "lookup_ngram_min": 3},
            r"lookup_ngram_min must be in 1..lookup_ngram",
        ),
        ({"lookup_ngram_min": 0}, r"lookup_ngram_min must be in 1..lookup_ngram"),
    ],
)
def test_invalid_speculation_settings_are_refused(
    model_path: Path, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        settings(model_path, **fields)


def test_speculation_is_off_by_default(model_path: Path) -> None:
    assert settings(model_path).speculation is None
    assert parse_settings([], {}).speculation is None


def test_speculation_options_from_the_command_line_and_environment() -> None:
    env = {"EDGE_NODE_SPECULATIVE": "prompt-lookup", "EDGE_NODE_DRAFT_TOKENS": "6"}
    parsed = parse_settings(["--lookup-ngram", "4", "--lookup-ngram-min", "1"], env)
    assert parsed.speculation == SpeculationOptions(draft_tokens=6, max_ngram=4, min_ngram=1)
    assert parse_settings(["--speculative", "prompt-lookup"], {}).speculation == SPEC


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--speculative", "prompt-lookup", "--parallel", "1"], "needs the batching engine"),
        (["--speculative", "medusa"], "expected one of off, prompt-lookup, got 'medusa'"),
        (["--draft-tokens", "0"], "draft_tokens must be in 1..32, got 0"),
    ],
)
def test_the_command_line_names_a_bad_speculation_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(argv, {})
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


# -- the batching engine with the real model ----------------------------------------------


class Recorder:
    """The engine as the runner sees it (``JobHost``), keeping every event of every job."""

    def __init__(self) -> None:
        self.events: dict[Job, list[Event]] = defaultdict(list)

    def begin(self, job: Job) -> float | None:
        return 0.0

    def emit(self, job: Job, event: Started | PromptEvaluated | Delta) -> None:
        self.events[job].append(event)

    def flush(self) -> None:
        pass

    def finish(self, job: Job, last: Finished | Failed, queue_wait_s: float) -> None:
        self.events[job].append(last)

    def kv_changed(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Answer:
    """What a client sees of one job: its deltas, one per emitted token, and its end."""

    deltas: tuple[str, ...]
    finish_reason: str
    completion_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.deltas)


@dataclass(frozen=True, slots=True)
class Run:
    answers: list[Answer]
    drafted: int
    accepted: int


@pytest.fixture(scope="module")
def model() -> Iterator[ChatModel]:
    """One batching context (4 sequences) that every runner of this module reuses."""
    model_path = default_model_path()
    assert model_path is not None
    loaded = load_model(
        Settings(model_path=model_path, n_ctx=1024, parallel=4, n_threads=EDGE_TEST_N_THREADS)
    )
    yield loaded
    loaded.close()


def params(model: ChatModel, content: str, max_tokens: int, **fields: Any) -> GenerationParams:
    sampling = Sampling(**{"temperature": 0.0, **fields.pop("sampling", {})})
    return GenerationParams(
        prompt_tokens=tuple(model.prompt_tokens([PromptMessage(role="user", content=content)])),
        max_tokens=max_tokens,
        stop=tuple(fields.pop("stop", ())),
        sampling=sampling,
        ignore_eos=False,
    )


def run(model: ChatModel, requests: list[GenerationParams], spec: bool) -> Run:
    """Decode the requests together in one batching runner until all have finished."""
    host = Recorder()
    drafts: list[tuple[int, int]] = []
    options = BatchOptions(
        parallel=4,
        kv_cells=model.kv_cells,
        n_batch=512,
        prefill_chunk=128,
        prompt_cache_bytes=0,
        shared_kv=False,
        speculation=SPEC if spec else None,
    )
    runner = BatchRunner(model, host, options, on_draft=lambda d, a: drafts.append((d, a)))
    jobs = [Job(p) for p in requests]
    pending: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
    for job in [*jobs, None]:
        pending.put(job)
    runner.run(pending)
    from llama_cpp import llama_cpp

    # The cells llama.cpp holds are exactly the tokens the slots say they hold: the
    # rejected drafts' cells were removed.
    memory = llama_cpp.llama_get_memory(model.llm.ctx)
    held = sum(llama_cpp.llama_memory_seq_pos_max(memory, s) + 1 for s in range(4))
    assert held == sum(runner.slots.cells())
    answers = []
    for job in jobs:
        events = host.events[job]
        last = events[-1]
        assert isinstance(last, Finished), last
        deltas = tuple(e.text for e in events if isinstance(e, Delta))
        answers.append(Answer(deltas, last.finish_reason, last.completion_tokens))
    return Run(answers, sum(d for d, _ in drafts), sum(a for _, a in drafts))


@pytest.mark.edge_model
def test_greedy_answers_are_token_for_token_the_same_with_speculation(model: ChatModel) -> None:
    for content, max_tokens in ((REPEAT, 48), (OPEN, 32)):
        request = params(model, content, max_tokens)
        off, on = run(model, [request], spec=False), run(model, [request], spec=True)
        assert on.answers == off.answers
        assert off.drafted == 0
        if content == REPEAT:
            assert on.accepted > 0, "the copied list should have accepted drafts"
            assert on.accepted <= on.drafted


@pytest.mark.edge_model
def test_stop_strings_and_max_tokens_end_exactly_where_they_do_without_speculation(
    model: ChatModel,
) -> None:
    full = run(model, [params(model, REPEAT, 48)], spec=False).answers[0]
    assert "4. grapes" in full.text
    stop = params(model, REPEAT, 48, stop=["grapes"])
    short = params(model, REPEAT, 7)
    for request in (stop, short):
        off, on = run(model, [request], spec=False), run(model, [request], spec=True)
        assert on.answers == off.answers
        assert on.accepted > 0, "the end came inside a run of accepted drafts"
    stopped, limited = (run(model, [r], spec=True).answers[0] for r in (stop, short))
    assert stopped.text == full.text[: full.text.index("grapes")]
    assert stopped.finish_reason == "stop"
    assert (limited.finish_reason, limited.completion_tokens) == ("length", 7)
    assert limited.deltas == full.deltas[:7]


@pytest.mark.edge_model
def test_interleaved_requests_with_speculation_answer_as_they_do_alone(model: ChatModel) -> None:
    requests = [
        params(model, REPEAT, 40),
        params(model, OPEN, 24),
        params(model, "List five colours.", 24, stop=["3."]),
        params(model, REPEAT, 30, sampling={"temperature": 0.9, "seed": 7, "top_p": 0.8}),
    ]
    alone = [run(model, [request], spec=False).answers[0] for request in requests]
    plain = run(model, requests, spec=False)
    together = run(model, requests, spec=True)
    assert together.accepted > 0
    # Token for token what the same batch gives without speculation, sampled one included.
    assert together.answers == plain.answers
    # And the greedy ones are their lone answers. (The sampled one is not compared with
    # its lone run: llama.cpp's prompt evaluation is not bit for bit the same when a prompt
    # is split across ubatches, which a batch with shorter prompts before it does; its
    # first logits then differ by up to 0.77, speculation or not.)
    assert together.answers[:3] == alone[:3]


@pytest.mark.edge_model
async def test_the_node_reports_drafted_and_accepted_tokens(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    plain = await start_node(parallel=2)
    node = await start_node(parallel=2, speculative="prompt-lookup")
    body = chat_body(REPEAT, max_tokens=40)
    answers = []
    for target in (plain, node):
        async with http.post(f"{target.url}/v1/chat/completions", json=body) as response:
            assert response.status == 200, await response.text()
            answers.append((await response.json())["choices"][0]["message"]["content"])
    assert answers[0] == answers[1]

    async with http.get(f"{node.url}/health") as response:
        health = await response.json()
    spec = health["speculative"]
    drafted = node.metric("edge_speculative_draft_tokens_total")
    accepted = node.metric("edge_speculative_accepted_tokens_total")
    assert 0 < accepted <= drafted
    assert spec == {
        "method": "prompt-lookup",
        "draft_tokens": drafted,
        "accepted_tokens": accepted,
        "acceptance_rate": round(accepted / drafted, 4),
    }
    async with http.get(f"{plain.url}/health") as response:
        assert "speculative" not in await response.json()
    assert plain.metric("edge_speculative_draft_tokens_total") == 0
