"""``python -m gateway keys ...`` against a real redis-server: each command, bad input
(exit 2, one clear line), Redis unreachable (exit 1)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from gateway.accounts.model import key_hash
from gateway.accounts.store import KeyStore
from gateway.redis_client import close_client, redis_client
from tests.fixtures.redis import RedisServer, free_port
from tests.helpers import REPO_ROOT, run_cli


def keys(redis: RedisServer, *args: str) -> tuple[int, str, str]:
    done = run_cli("keys", *args, env={"REDIS_URL": redis.url, "REDIS_CLUSTER": ""})
    return done.returncode, done.stdout, done.stderr


def create(redis: RedisServer, *args: str) -> dict[str, object]:
    code, out, err = keys(redis, "create", "--json", *args)
    assert code == 0, err
    created: dict[str, object] = json.loads(out)
    return created


def test_create_prints_the_key_once(redis_server: RedisServer) -> None:
    code, out, err = keys(
        redis_server,
        "create",
        "--name", "free plan",
        "--rpm", "60",
        "--tpm", "5000",
        "--budget-usd", "10",
        "--budget-period", "month",
        "--soft-budget-usd", "8",
        "--tiers", "edge",
        "--meta", "tenant=acme",
        "--meta", "note=a=b",
    )  # fmt: skip
    assert code == 0, err
    assert "shown only now" in err
    plain = next(line.split()[1] for line in out.splitlines() if line.startswith("key "))
    assert plain.startswith("sk-gw-")
    key_id = next(line.split()[1] for line in out.splitlines() if line.startswith("id "))
    code, shown, _ = keys(redis_server, "show", key_id, "--json")
    view = json.loads(shown)
    assert plain not in shown and "key" not in view
    assert view["rpm"] == 60 and view["tpm"] == 5000 and view["tiers"] == ["edge"]
    assert view["budget"] == {"period": "month", "limit_usd": 10.0, "soft_limit_usd": 8.0}
    assert view["metadata"] == {"tenant": "acme", "note": "a=b"}
    code, text, _ = keys(redis_server, "show", key_id)
    assert code == 0 and "$10.00/month (warn at $8.00)" in text and plain not in text


def test_create_json_holds_the_key(redis_server: RedisServer) -> None:
    created = create(redis_server, "--name", "j")
    plain = created["key"]
    assert isinstance(plain, str) and created["object"] == "api_key"
    code, out, _ = keys(redis_server, "list", "--json")
    listed = json.loads(out)
    assert code == 0 and [k["id"] for k in listed["data"]] == [created["id"]]
    assert key_hash(plain) not in out and plain not in out


def test_list_update_revoke(redis_server: RedisServer) -> None:
    first = create(redis_server, "--name", "first", "--rpm", "5", "--meta", "a=1")
    second = create(redis_server, "--name", "second", "--budget-usd", "3", "--budget-period", "day")
    code, out, _ = keys(redis_server, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "TIERS", "RPM", "TPM", "BUDGET"]
    assert [line.split()[0] for line in lines[1:]] == [first["id"], second["id"]]

    code, out, err = keys(
        redis_server, "update", str(first["id"]), "--json",
        "--no-rpm", "--tpm", "100", "--name", "renamed", "--tiers", "cloud,edge", "--no-meta",
    )  # fmt: skip
    assert code == 0, err
    view = json.loads(out)
    assert (view["name"], view["rpm"], view["tpm"]) == ("renamed", None, 100)
    assert view["tiers"] == ["edge", "cloud"] and view["metadata"] == {}

    # A budget changes field by field; --no-budget clears it.
    code, out, err = keys(
        redis_server, "update", str(second["id"]), "--json", "--soft-budget-usd", "2"
    )
    assert code == 0, err
    assert json.loads(out)["budget"] == {"period": "day", "limit_usd": 3.0, "soft_limit_usd": 2.0}
    code, out, _ = keys(
        redis_server, "update", str(second["id"]), "--json", "--budget-period", "month"
    )
    assert json.loads(out)["budget"]["period"] == "month"
    code, out, _ = keys(redis_server, "update", str(second["id"]), "--json", "--no-budget")
    assert code == 0 and json.loads(out)["budget"] is None

    code, out, err = keys(redis_server, "revoke", str(first["id"]), "--json")
    assert code == 0 and isinstance(json.loads(out)["revoked_at"], int)
    code, out, _ = keys(redis_server, "list", "--json")
    assert [k["id"] for k in json.loads(out)["data"]] == [second["id"]]
    code, out, _ = keys(redis_server, "list", "--all", "--json")
    assert [k["id"] for k in json.loads(out)["data"]] == [first["id"], second["id"]]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["create"], "--name"),
        (["create", "--name", ""], "name must be 1 to 64"),
        (["create", "--name", "x", "--rpm", "0"], "--rpm: must be 1 or more"),
        (["create", "--name", "x", "--tpm", "many"], "--tpm: must be a whole number"),
        (["create", "--name", "x", "--tiers", "edge,moon"], "'moon' is not a tier"),
        (["create", "--name", "x", "--budget-usd", "5"], "--budget-usd needs --budget-period"),
        (["create", "--name", "x", "--budget-usd", "-5", "--budget-period", "day"], "more than 0"),
        (["create", "--name", "x", "--budget-period", "day"], "need --budget-usd"),
        (
            [
                "create",
                "--name",
                "x",
                "--budget-usd",
                "5",
                "--budget-period",
                "day",
                "--soft-budget-usd",
                "5",
            ],
            "soft_limit_usd (5) must be below limit_usd (5)",
        ),
        (
            ["create", "--name", "x", "--budget-usd", "5", "--budget-period", "week"],
            "invalid choice",
        ),
        (["create", "--name", "x", "--meta", "novalue"], "KEY=VALUE"),
        (["show", "nope"], "key_id must look like"),
        (["show", "key_000000000000"], "No API key has the id"),
        (["revoke", "key_000000000000"], "No API key has the id"),
        (["update", "key_000000000000", "--rpm", "3"], "No API key has the id"),
        (["update", "{existing}"], "nothing to change"),
        (["update", "{existing}", "--rpm", "3", "--no-rpm"], "not allowed with"),
        (["update", "{existing}", "--soft-budget-usd", "1"], "has no budget yet"),
        (["update", "{existing}", "--no-budget", "--budget-usd", "1"], "--no-budget goes with"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(
    redis_server: RedisServer, args: list[str], words: str
) -> None:
    existing = create(redis_server, "--name", "existing")
    args = [str(existing["id"]) if a == "{existing}" else a for a in args]
    code, out, err = keys(redis_server, *args)
    assert code == 2, (out, err)
    assert words in err
    assert "Traceback" not in err
    code, shown, _ = keys(redis_server, "show", str(existing["id"]), "--json")
    assert json.loads(shown)["budget"] is None and json.loads(shown)["rpm"] is None


def test_redis_unreachable_exits_1() -> None:
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_CLUSTER": ""}
    for args in (["list"], ["create", "--name", "x"], ["revoke", "key_000000000000"]):
        done = run_cli("keys", *args, env=env)
        assert done.returncode == 1, done.stderr
        assert "Redis could not be reached" in done.stderr and "Traceback" not in done.stderr


def test_without_redis_url_exits_2() -> None:
    done = run_cli("keys", "list", env={"REDIS_URL": "", "GATEWAY_KEY_STORE": ""})
    assert done.returncode == 2 and "REDIS_URL" in done.stderr


def test_keys_is_listed_in_the_usage() -> None:
    done = run_cli("--help")
    assert done.returncode == 0 and "keys" in done.stdout


async def test_a_reader_that_leaves_early_is_not_an_error(redis_server: RedisServer) -> None:
    """``keys list | head -1``: the output pipe closes under the command. It ends quietly
    (exit 0, no traceback), as a Unix filter does."""
    client = redis_client(redis_server.url, max_connections=4, timeout_s=5)
    try:
        store = KeyStore(client)
        await asyncio.gather(*(store.create(name=f"k{i}") for i in range(1500)))
    finally:
        await close_client(client)
    command = [sys.executable, "-m", "gateway", "keys", "list", "--json"]  # > 64 KiB of JSON
    env = {**os.environ, "REDIS_URL": redis_server.url, "REDIS_CLUSTER": ""}
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    first = await asyncio.wait_for(process.stdout.read(100), timeout=60)
    process._transport.get_pipe_transport(1).close()  # type: ignore[attr-defined]  # leave
    stderr = await asyncio.wait_for(process.stderr.read(), timeout=60)
    assert await asyncio.wait_for(process.wait(), timeout=60) == 0, stderr.decode()
    assert first.strip()  # it was writing
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr
