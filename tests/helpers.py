"""Helpers shared by the tests: waiting for a condition instead of sleeping a fixed time,
the official SDK pointed at a test server, one parser for /metrics pages, a builder of
test policies, a loopback server that streams given bytes, and running the gateway's
command line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import openai
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.upstream.http1 import Connections, Response

REPO_ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")


async def eventually(
    predicate: Callable[[], object], timeout_s: float = 5.0, what: str = "the condition"
) -> None:
    """Return once ``predicate()`` is true; fail the test after ``timeout_s``.

    A negative ("X did not happen") asserted after a fixed sleep passes vacuously on a slow
    machine; waiting for the positive that must follow it cannot.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} was not true within {timeout_s:g} s"
        await asyncio.sleep(0.02)


async def eventually_value(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], object],
    timeout_s: float = 5.0,
    what: str = "the condition",
) -> T:
    """Await ``probe()`` until its value satisfies ``until`` and return that value; fail
    the test after ``timeout_s``, naming the last value seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if until(value):
            return value
        assert time.monotonic() < deadline, (
            f"{what} was not true within {timeout_s:g} s; last seen: {value!r}"
        )
        await asyncio.sleep(0.05)


class HasUrl(Protocol):
    """A test server: a gateway, a node, a scripted upstream."""

    @property
    def url(self) -> str: ...


def _base(target: str | HasUrl) -> str:
    return (target if isinstance(target, str) else target.url).rstrip("/")


def sdk(target: str | HasUrl, *, api_key: str = "unused", **options: Any) -> openai.AsyncOpenAI:
    """The official async client for a test server (its URL, without ``/v1``), without
    retries of its own: the server's behaviour is under test, not the SDK's."""
    return openai.AsyncOpenAI(
        base_url=_base(target) + "/v1", api_key=api_key, max_retries=0, **options
    )


def sync_sdk(target: str | HasUrl, *, api_key: str = "unused", **options: Any) -> openai.OpenAI:
    """:func:`sdk`, blocking: for tests that drive a server in another process."""
    return openai.OpenAI(base_url=_base(target) + "/v1", api_key=api_key, max_retries=0, **options)


HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """What a client read of one chat completion, streamed or not."""

    text: str
    model: str
    headers: Mapping[str, str]


async def chat(
    target: str | HasUrl,
    *,
    stream: bool = False,
    model: str = "auto",
    messages: Sequence[ChatCompletionMessageParam] = HI,
    **options: Any,
) -> Reply:
    """One chat completion through the official SDK, read to its end."""
    async with sdk(target) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=messages, stream=stream, **options
        )
        answer = raw.parse()
        if isinstance(answer, openai.AsyncStream):
            chunks = [chunk async for chunk in answer]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            answered_by = chunks[0].model if chunks else ""
        else:
            text, answered_by = answer.choices[0].message.content or "", answer.model
    return Reply(text=text, model=answered_by, headers=raw.headers)


@dataclass(frozen=True, slots=True)
class Metrics:
    """One /metrics page, parsed once with prometheus_client's own parser."""

    families: Mapping[str, Sequence[Sample]]
    """Family name (``gateway_requests``) -> its samples (``gateway_requests_total``...)."""

    def __contains__(self, family: object) -> bool:
        return family in self.families

    def samples(self, name: str, **labels: str) -> list[Sample]:
        """The samples named ``name`` whose labels include ``labels``."""
        return [
            s
            for samples in self.families.values()
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; a missing one fails the test."""
        for sample in self.samples(name, **labels):
            if sample.labels == labels:
                return float(sample.value)
        raise AssertionError(f"no sample {name}{labels}")

    def get(self, name: str, **labels: str) -> float:
        """:meth:`value`, but 0 for a sample not there: a labelled counter has no child
        until it is first counted."""
        try:
            return self.value(name, **labels)
        except AssertionError:
            return 0.0

    def label_sets(self, family: str) -> set[tuple[tuple[str, str], ...]]:
        """The label sets of a family's samples, without histogram ``le`` buckets."""
        return {
            tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            for s in self.families[family]
        }

    def label_values(self) -> set[str]:
        """Every label value on the page."""
        return {v for samples in self.families.values() for s in samples for v in s.labels.values()}


def parse_metrics(text: str) -> Metrics:
    """A Prometheus text exposition as :class:`Metrics`."""
    return Metrics({f.name: list(f.samples) for f in text_string_to_metric_families(text)})


async def scrape_metrics(target: str | HasUrl) -> Metrics:
    """GET a server's /metrics (which must answer 200 in the text format) and parse it."""
    async with aiohttp.ClientSession() as http, http.get(_base(target) + "/metrics") as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/plain"
        return parse_metrics(await response.text())


Node = tuple[str, str] | Mapping[str, object]
"""A policy node: ``(url, model)``, or the whole entry as a mapping (``name`` optional)."""

DEFAULT_TIMEOUTS = "{connect: 1, first_token: 2, idle: 2, total: 5}"


async def serve_sse_blocks(
    blocks: Sequence[bytes], pause_s: float = 0.0, hold_s: float = 0.0
) -> TestServer:
    """A started loopback server whose ``GET /`` writes ``blocks`` as an event stream, one
    write (one HTTP chunk) each, ``pause_s`` apart, then holds the body open ``hold_s``
    before ending it. The caller closes it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for block in blocks:
            await response.write(block)
            await asyncio.sleep(pause_s)
        await asyncio.sleep(hold_s)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@asynccontextmanager
async def node_get(server: TestServer, path: str = "/") -> AsyncIterator[Response]:
    """``GET path`` on ``server`` through the gateway's own client for nodes
    (:mod:`gateway.upstream.http1`); the response is closed on the way out."""
    connections = Connections(asyncio.get_running_loop(), limit=4, keepalive_s=30)
    response = await connections.request(
        "GET", str(server.make_url("")), path, headers={}, connect_timeout_s=5.0
    )
    try:
        yield response
    finally:
        response.close()
        await connections.close()


def policy_dict(
    edge: Sequence[Node] = (),
    cloud: Sequence[Node] = (),
    *,
    timeouts: str | Mapping[str, float] = DEFAULT_TIMEOUTS,
    cloud_above: float = 0.55,
    **sections: Mapping[str, object],
) -> dict[str, Any]:
    """A test policy: the nodes (named ``edge-1``, ``cloud-1``... in order), short timeouts,
    the heuristic classifier, fast health checks.

    ``sections`` are merged into it key by key (``fallback={"backoff_s": {...}}``,
    ``tiers={"edge": {"supports": ["tools"]}}``, ``sessions={...}``): a mapping adds to
    the one it meets, anything else replaces it.
    """

    def nodes(items: Sequence[Node], tier: str) -> list[dict[str, object]]:
        return [
            {"url": item[0], "model": item[1], "name": f"{tier}-{i + 1}"}
            if isinstance(item, tuple)
            else {"name": f"{tier}-{i + 1}", **item}
            for i, item in enumerate(items)
        ]

    policy: dict[str, Any] = {
        "version": 1,
        "tiers": {
            "edge": {"context_window": 2048, "nodes": nodes(edge, "edge")},
            "cloud": {"context_window": 8192, "nodes": nodes(cloud, "cloud")},
        },
        "routing": {
            "cloud_above": cloud_above,
            "classifier": {"kind": "heuristic"},
            "allow_pinning": True,
        },
        "fallback": {
            "timeouts_s": yaml.safe_load(timeouts) if isinstance(timeouts, str) else timeouts
        },
        "health": {"interval_s": 0.2, "timeout_s": 2, "failure_threshold": 2, "open_s": 0.5},
    }
    for key, section in sections.items():
        policy[key] = _merged(policy.get(key), section)
    return policy


def policy_yaml(
    edge: Sequence[Node] = (),
    cloud: Sequence[Node] = (),
    *,
    extra: str = "",
    timeouts: str | Mapping[str, float] = DEFAULT_TIMEOUTS,
    cloud_above: float = 0.55,
    **sections: Mapping[str, object],
) -> str:
    """:func:`policy_dict` as the YAML a gateway reads, with ``extra`` (top-level YAML
    text) appended."""
    policy = policy_dict(edge, cloud, timeouts=timeouts, cloud_above=cloud_above, **sections)
    # The sections and tiers in block style, one key a line; what is inside them (nodes,
    # timeouts) in flow style where it holds only plain values: ``{url: ..., name: edge-1}``.
    blocks = {
        key: _Block(
            {
                k: _Block(v) if key == "tiers" and isinstance(v, dict) else v
                for k, v in value.items()
            }
        )
        if isinstance(value, dict)
        else value
        for key, value in policy.items()
    }
    text = yaml.dump(
        _Block(blocks), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=1000
    )
    return text + textwrap.dedent(extra)


class _Block(dict[str, Any]):
    """A mapping that YAML writes in block style."""


class _Dumper(yaml.SafeDumper):
    """Block style for :class:`_Block`, flow style for collections of plain values."""


_Dumper.add_representer(
    _Block, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, False)
)


def _merged(base: object, override: object) -> object:
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        out = dict(base)
        for key, value in override.items():
            out[key] = _merged(base.get(key), value)
        return out
    return override


def assemble(chunks: Sequence[dict[str, object]], **attempt: Any) -> dict[str, object]:
    """The ``chat.completion`` the gateway assembles from one attempt's ``chunks``, as the
    internal-streaming path does: each chunk noted in the answer's record, then added to
    the builder. ``attempt`` sets fields of the attempt's record (``usage=...``)."""
    from gateway.upstream.aggregate import CompletionBuilder
    from gateway.upstream.answer_record import AnswerRecord

    record = AnswerRecord()
    current = record.start_attempt("edge", "edge-1")
    builder = CompletionBuilder(record)
    for chunk in chunks:
        content = current.observe(chunk)
        if content:
            record.text.append(content)
        builder.add(chunk)
    for name, value in attempt.items():
        setattr(current, name, value)
    return builder.build()


@dataclass(slots=True)
class ServeProcess:
    """A ``python -m gateway serve`` process; ``stderr`` and ``returncode`` once stopped."""

    url: str
    process: asyncio.subprocess.Process
    stderr: str = ""
    returncode: int | None = None


def shipped_policy_env(edge_url: str, edge_model: str, cloud_model: str) -> dict[str, str]:
    """``serve``'s environment for the shipped policy with its edge node at ``edge_url``
    (serving ``edge_model``) and its cloud node on a port nothing listens on."""
    from tests.scripted import unused_port

    return {
        "GATEWAY_PORT": str(unused_port()),
        "GATEWAY_POLICY": str(REPO_ROOT / "policies" / "default.yaml"),
        "GATEWAY_EDGE_URLS": f"{edge_url}={edge_model}",
        "GATEWAY_CLOUD_URLS": f"http://127.0.0.1:{unused_port()}={cloud_model}",
    }


@asynccontextmanager
async def serve_process(env: Mapping[str, str], *args: str) -> AsyncIterator[ServeProcess]:
    """``python -m gateway serve ARGS`` in a process of its own with ``env`` over this
    one's (``GATEWAY_PORT`` required), yielded once ``/healthz`` answers (20 s at most);
    stopped with SIGTERM on the way out, as an operator stops it."""
    from scripts.stack.processes import die_with_parent

    url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        *args,
        cwd=REPO_ROOT,
        env={**os.environ, "GATEWAY_HOST": "127.0.0.1", **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent(signal.SIGKILL),
    )
    served = ServeProcess(url=url, process=process)
    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                try:
                    async with session.get(url + "/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return process.returncode is not None  # it died: stop waiting

            await eventually_value(up, bool, timeout_s=20.0, what="the gateway's /healthz")
        assert process.returncode is None, "the gateway exited at start-up"
        yield served
    finally:
        if process.returncode is None:
            process.terminate()
        _, stderr = await process.communicate()
        served.stderr, served.returncode = stderr.decode(), process.returncode


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` from the repository root, output captured (60 s at most)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


__all__ = [
    "HI",
    "REPO_ROOT",
    "HasUrl",
    "Metrics",
    "Node",
    "Reply",
    "ServeProcess",
    "assemble",
    "chat",
    "eventually",
    "eventually_value",
    "parse_metrics",
    "policy_dict",
    "policy_yaml",
    "run_cli",
    "scrape_metrics",
    "sdk",
    "serve_process",
    "sync_sdk",
]
