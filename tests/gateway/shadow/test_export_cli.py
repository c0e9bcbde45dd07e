"""``python -m gateway shadow export``: stored records as lines to label for ``train``,
and every bad argument or input a clear error with exit status 2 and nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.shadow import JsonlStoreSpec, RedisStoreSpec
from gateway.routing.training.data import TrainingDataError, read_examples
from gateway.shadow.jsonl_store import JsonlShadowStore
from gateway.shadow.redis_store import RedisShadowStore, close_client, redis_client
from tests.fixtures.redis import RedisServer
from tests.gateway.shadow.conftest import record
from tests.helpers import run_cli
from tests.scripted import unused_port

POLICY = """version: 1
tiers:
  edge:
    nodes: [{url: "http://127.0.0.1:1", model: e}]
  cloud:
    nodes: [{url: "http://127.0.0.1:2", model: c}]
"""


def policy_file(tmp_path: Path, store: str | None) -> Path:
    path = tmp_path / "policy.yaml"
    shadow = f"shadow:\n  store: {store}\n" if store is not None else ""
    path.write_text(POLICY + shadow)
    return path


async def jsonl_policy(tmp_path: Path, count: int) -> tuple[Path, JsonlShadowStore]:
    path = policy_file(tmp_path, "{kind: jsonl, dir: shadow}")  # relative to the policy
    store = JsonlShadowStore(JsonlStoreSpec(dir=tmp_path / "shadow"))
    for number in range(count):
        await store.append(record(number))
    return path, store


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_export_jsonl_to_a_file_in_the_shape_train_reads(tmp_path: Path) -> None:
    path, _ = await jsonl_policy(tmp_path, 3)
    out = tmp_path / "to-label.jsonl"
    done = run_cli("shadow", "export", "--policy", str(path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert f"exported 3 record(s) to {out}" in done.stderr
    exported = lines(out.read_text())
    assert [line["id"] for line in exported] == ["req-0", "req-1", "req-2"]  # oldest first
    first = exported[0]
    assert list(first)[:3] == ["messages", "edge_ok", "cloud_ok"]
    assert first["messages"] == [{"role": "user", "content": "question 0"}]
    assert first["edge_ok"] is None and first["cloud_ok"] is None  # to be labelled
    assert first["edge"] == {
        "tier": "edge",
        "node": "edge-1",
        "model": "edge-model",
        "content": "edge answer 0",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        "duration_s": 0.1,
    }
    assert first["cloud"]["content"] == "cloud answer 0"
    assert first["cloud"]["model"] == "cloud-model"
    assert first["route"]["reason_kind"] == "score"
    assert first["max_tokens"] == 64 and first["answered_at"] == 1_764_921_600.0

    # Unlabelled, train refuses the lines; labelled, it reads them as they are.
    with pytest.raises(TrainingDataError, match="edge_ok must be true or false, got null"):
        read_examples(out, min_lines=1)
    for number, line in enumerate(exported):
        line["edge_ok"], line["cloud_ok"] = number == 0, True
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(line) + "\n" for line in exported))
    examples = read_examples(labelled, min_lines=1)
    assert [(e.edge_ok, e.cloud_ok, e.max_tokens) for e in examples] == [
        (True, True, 64),
        (False, True, 64),
        (False, True, 64),
    ]
    assert examples[1].messages == ({"role": "user", "content": "question 1"},)


@pytest.mark.redis
async def test_export_redis_to_standard_output(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_client(redis_server.url)
    store = RedisShadowStore(client, RedisStoreSpec(key="shadow:x"))
    try:
        for number in range(2):
            await store.append(record(number))
    finally:
        await close_client(client)
    path = policy_file(tmp_path, "{kind: redis, key: 'shadow:x'}")
    by_flag = run_cli("shadow", "export", "--policy", str(path), "--redis-url", redis_server.url)
    assert by_flag.returncode == 0, by_flag.stderr
    assert [line["id"] for line in lines(by_flag.stdout)] == ["req-0", "req-1"]
    by_env = run_cli("shadow", "export", "--policy", str(path), env={"REDIS_URL": redis_server.url})
    assert by_env.returncode == 0 and by_env.stdout == by_flag.stdout
    assert "exported 2 record(s) to standard output" in by_env.stderr


async def test_an_empty_store_exports_nothing(tmp_path: Path) -> None:
    path, _ = await jsonl_policy(tmp_path, 0)
    (tmp_path / "shadow").mkdir()
    done = run_cli("shadow", "export", "--policy", str(path))
    assert (done.returncode, done.stdout) == (0, "")
    assert "exported 0 record(s)" in done.stderr


async def test_a_bad_stored_line_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    path, store = await jsonl_policy(tmp_path, 2)
    (current,) = store.files()
    with current.open("ab") as file:
        file.write(b'{"version": 1, "messages": [{"role": "user", "con')  # a torn write
    await store.append(record(9))  # the next record goes on a line of its own all the same
    out = tmp_path / "out.jsonl"
    done = run_cli("shadow", "export", "--policy", str(path), "--out", str(out))
    assert done.returncode == 2
    assert f"error: {current}:3: not a shadow record: malformed JSON" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["policy.yaml", "shadow"]  # no output, no leftover
    skipping = run_cli("shadow", "export", "--policy", str(path), "--out", str(out), "--skip-bad")
    assert skipping.returncode == 0, skipping.stderr
    assert "(1 bad line(s) passed over)" in skipping.stderr
    assert [line["id"] for line in lines(out.read_text())] == ["req-0", "req-1", "req-9"]


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b'{"version": 2}', "version 2, not 1"),
        (b'{"version": 1, "messages": []}', "messages missing or empty"),
        (b'{"version": 1, "messages": [{"content": "x"}]}', "a message without a role"),
        (
            b'{"version": 1, "messages": [{"role": "user", "content": "x"}], "edge": {}}',
            "edge answer missing or without text",
        ),
    ],
)
def test_what_is_not_a_record(tmp_path: Path, stored: bytes, problem: str) -> None:
    path = policy_file(tmp_path, "{kind: jsonl, dir: shadow}")
    (tmp_path / "shadow").mkdir()
    (tmp_path / "shadow" / "shadow-0000000000001.jsonl").write_bytes(stored + b"\n")
    done = run_cli("shadow", "export", "--policy", str(path))
    assert done.returncode == 2 and done.stdout == ""
    assert f"shadow-0000000000001.jsonl:1: not a shadow record: {problem}" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["export"], "the following arguments are required: --policy"),
        (["import", "--policy", "p"], "invalid choice: 'import'"),
        (["export", "--policy", "{tmp}/missing.yaml"], "cannot read"),
        (["export", "--policy", "{tmp}/policy.yaml", "--out", "{tmp}/no/such/dir/x.jsonl"],
         "--out: directory"),
    ],
)  # fmt: skip
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    policy_file(tmp_path, "{kind: jsonl, dir: shadow}")
    done = run_cli("shadow", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert done.returncode == 2 and done.stdout == ""
    assert message in done.stderr


@pytest.mark.parametrize(
    ("store", "env", "message"),
    [
        (None, {}, "has no shadow section: it collects no records"),
        ("{kind: jsonl, dir: nowhere}", {}, "nowhere does not exist: nothing stored yet?"),
        ("{kind: redis}", {"REDIS_URL": ""}, "set --redis-url or REDIS_URL"),
        ("{kind: redis}", {"REDIS_URL": "redis://127.0.0.1:{port}/0"}, "redis read:"),
        ("{kind: jsonl, dir: x, ttl_s: -1}", {}, "shadow.store.ttl_s: must be between 1"),
    ],
)
def test_bad_policies_and_stores(
    tmp_path: Path, store: str | None, env: dict[str, str], message: str
) -> None:
    path = policy_file(tmp_path, store)
    port = str(unused_port())
    done = run_cli(
        "shadow", "export", "--policy", str(path),
        env={k: v.replace("{port}", port) for k, v in env.items()},
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert message in done.stderr and "Traceback" not in done.stderr


def test_listed_in_the_gateway_usage() -> None:
    done = run_cli("--help")
    assert "shadow export" in done.stdout
