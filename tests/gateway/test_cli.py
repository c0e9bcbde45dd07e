"""The command line: check-policy, and serve with the environment overrides."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.helpers import run_cli, serve_process, shipped_policy_env
from tests.scripted import unused_port


def test_check_policy_accepts_the_shipped_policy() -> None:
    result = run_cli("check-policy", "policies/default.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: policies/default.yaml (version 1")


def test_check_policy_rejects_with_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntiers:\n  edge:\n    context_window: lots\n")
    result = run_cli("check-policy", str(bad))
    assert result.returncode == 1
    assert f"{bad}:4: tiers.edge.context_window: must be a number" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_exits_2() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "unknown command" in result.stderr


def test_serve_refuses_an_invalid_policy_at_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 7\n")
    result = run_cli("serve", env={"GATEWAY_POLICY": str(bad), "GATEWAY_PORT": str(unused_port())})
    assert result.returncode == 2
    assert "unsupported version 7" in result.stderr


def test_serve_rejects_a_bad_node_list() -> None:
    result = run_cli("serve", env={"GATEWAY_EDGE_URLS": "http://127.0.0.1:1"})
    assert result.returncode == 2
    assert "GATEWAY_EDGE_URLS" in result.stderr and "url=model" in result.stderr


async def test_serve_uses_environment_overrides(upstreams) -> None:
    edge = await upstreams("env-edge-model")
    env = shipped_policy_env(edge.url, "env-edge-model", "env-cloud-model")
    async with serve_process(env) as served, aiohttp.ClientSession() as session:
        async with session.get(served.url + "/v1/models") as response:
            models = [m["id"] for m in (await response.json())["data"]]
        assert "env-edge-model" in models and "env-cloud-model" in models
        assert "smollm2-135m-instruct" not in models  # replaced, not merged
        async with session.post(
            served.url + "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        ) as response:
            assert response.status == 200
            assert response.headers["x-gateway-node"] == "edge-1"
    assert edge.seen[0].body["model"] == "env-edge-model"
    assert served.returncode == 0
    assert "gateway shutting down" in served.stderr
