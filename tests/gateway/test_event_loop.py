"""The event loop ``serve`` runs on: uvloop where installed (the locked install has it),
asyncio's where not or where asked for; a loop asked for but missing stops start-up."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import aiohttp
import pytest
import uvloop

from gateway.event_loop import EventLoopUnavailable, choose_event_loop
from gateway.settings import SettingsError, settings_from_env
from tests.helpers import run_cli, serve_process, shipped_policy_env


@pytest.fixture
def without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without uvloop (Windows, or an install that left it out)."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import raises ImportError


def test_auto_runs_on_uvloop_where_it_is_installed() -> None:
    chosen = choose_event_loop("auto")
    assert chosen.name == "uvloop" and chosen.factory is not None
    loop = chosen.factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


@pytest.mark.usefixtures("without_uvloop")
def test_auto_falls_back_to_asyncio_without_uvloop() -> None:
    chosen = choose_event_loop("auto")
    assert (chosen.name, chosen.factory) == ("asyncio", None)


@pytest.mark.usefixtures("without_uvloop")
def test_uvloop_asked_for_but_missing_is_an_error_naming_the_setting() -> None:
    with pytest.raises(EventLoopUnavailable, match="GATEWAY_EVENT_LOOP=uvloop"):
        choose_event_loop("uvloop")


def test_asyncio_asked_for_is_asyncio_even_with_uvloop_installed() -> None:
    assert choose_event_loop("asyncio").factory is None


def test_the_setting_defaults_to_auto_and_rejects_other_values() -> None:
    assert settings_from_env({}).event_loop == "auto"
    assert settings_from_env({"GATEWAY_EVENT_LOOP": " AsyncIO "}).event_loop == "asyncio"
    with pytest.raises(SettingsError, match="GATEWAY_EVENT_LOOP must be auto, uvloop or asyncio"):
        settings_from_env({"GATEWAY_EVENT_LOOP": "trio"})


def test_serve_refuses_an_unknown_event_loop() -> None:
    result = run_cli("serve", env={"GATEWAY_EVENT_LOOP": "trio", "GATEWAY_PORT": "0"})
    assert result.returncode == 2
    assert "GATEWAY_EVENT_LOOP must be auto, uvloop or asyncio" in result.stderr
    assert "Traceback" not in result.stderr


def _shadow_without_uvloop(tmp_path: Path) -> dict[str, str]:
    """The environment of a process on a machine where uvloop does not import."""
    shadow = tmp_path / "uvloop"
    shadow.mkdir()
    (shadow / "__init__.py").write_text('raise ImportError("no uvloop on this machine")\n')
    return {"PYTHONPATH": str(tmp_path)}


def test_serve_asked_for_uvloop_without_it_stops_with_the_reason(tmp_path: Path) -> None:
    env = {**_shadow_without_uvloop(tmp_path), "GATEWAY_EVENT_LOOP": "uvloop"}
    result = run_cli("serve", env={**env, "GATEWAY_PORT": "0"})
    assert result.returncode == 2
    assert "GATEWAY_EVENT_LOOP=uvloop, but uvloop is not installed" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "uvloop_installed", "expected"),
    [("auto", True, "uvloop"), ("asyncio", True, "asyncio"), ("auto", False, "asyncio")],
)
async def test_serve_answers_on_the_loop_it_names(
    upstreams, tmp_path: Path, setting: str, uvloop_installed: bool, expected: str
) -> None:
    edge = await upstreams("loop-edge-model")
    env = shipped_policy_env(edge.url, "loop-edge-model", "loop-cloud-model")
    env["GATEWAY_EVENT_LOOP"] = setting
    if not uvloop_installed:
        env.update(_shadow_without_uvloop(tmp_path))
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    async with serve_process(env) as served, aiohttp.ClientSession() as session:
        async with session.post(served.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
            assert (await response.json())["choices"][0]["message"]["content"]
        streamed = {**body, "stream": True}
        async with session.post(served.url + "/v1/chat/completions", json=streamed) as response:
            assert response.status == 200
            assert (await response.read()).endswith(b"data: [DONE]\n\n")
    assert served.returncode == 0
    started = [
        json.loads(line)["message"]
        for line in served.stderr.splitlines()
        if "gateway listening" in line
    ]
    assert len(started) == 1 and started[0].endswith(f"event loop {expected})")
