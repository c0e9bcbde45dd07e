"""The ``make run`` stack end to end: redis, the edge node, vLLM (CPU) and the gateway.

Brought up by ``scripts.stack.start_stack`` exactly as ``make run`` does, on free ports,
and driven with the official ``openai`` SDK: one session whose first turn is answered by
the edge tier and whose second, answered by the cloud tier, carries the first as history.
vLLM's CPU start-up dominates (1.5-4 minutes on 2 busy cores).
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path

import pytest

from scripts.stack import Ports, StackConfig, start_stack
from tests.helpers import sync_sdk

pytestmark = [pytest.mark.edge_model, pytest.mark.vllm, pytest.mark.redis]

STARTUP_TIMEOUT_S = float(os.environ.get("VLLM_STARTUP_TIMEOUT_S", "600"))
FIRST_TURN = "Hi! My name is Ada and I like sailing."
QUESTION = "Explain step by step why the sum of two odd numbers is always even."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().split(") ")[1][0] != "Z"


@pytest.mark.timeout(STARTUP_TIMEOUT_S + 240)
def test_one_session_moves_from_edge_to_cloud(tmp_path: Path) -> None:
    lines: list[str] = []
    config = StackConfig(
        ports=Ports(gateway=0, edge=0, cloud=0, redis=0),
        run_dir=tmp_path,
        startup_timeout_s=STARTUP_TIMEOUT_S,
    )
    with start_stack(config, progress=lines.append) as stack:
        pids = [service.process.pid for service in stack.services]
        assert [s.name for s in stack.services] == [
            "redis",
            "edge node",
            "cloud node (vLLM)",
            "gateway",
        ]
        # Progress while vLLM loads is reported with the elapsed time, not silence.
        assert any(line.startswith("cloud node (vLLM) ready after") for line in lines), lines
        session = f"e2e-{uuid.uuid4().hex}"
        headers = {"x-session-id": session}
        with sync_sdk(stack.gateway_url, timeout=120) as client:
            first = client.chat.completions.with_raw_response.create(
                model="edge",
                messages=[{"role": "user", "content": FIRST_TURN}],
                max_tokens=16,
                extra_headers=headers,
            )
            assert first.headers["x-gateway-tier"] == "edge"
            assert first.parse().model == stack.edge_model

            second = client.chat.completions.with_raw_response.create(
                model="cloud",
                messages=[{"role": "user", "content": QUESTION}],
                max_tokens=16,
                temperature=0,
                extra_headers=headers,
            )
            assert second.headers["x-gateway-tier"] == "cloud"
            answer = second.parse()
            assert answer.model == stack.cloud_model
            assert answer.choices[0].message.content

            # The same question outside any session: its prompt is the question alone.
            alone = client.chat.completions.create(
                model="cloud", messages=[{"role": "user", "content": QUESTION}], max_tokens=1
            )
        assert answer.usage is not None and alone.usage is not None
        # vLLM counted the first turn (user + edge reply) in the cloud request's prompt.
        assert answer.usage.prompt_tokens > alone.usage.prompt_tokens + 8, (
            answer.usage,
            alone.usage,
        )

        with urllib.request.urlopen(f"{stack.gateway_url}/v1/sessions/{session}", timeout=10) as r:
            view = json.load(r)
        turns = view["turns"]
        assert [turn["role"] for turn in turns] == ["user", "assistant", "user", "assistant"]
        assert turns[0]["content"] == FIRST_TURN and turns[2]["content"] == QUESTION
        assert [turns[1]["tier"], turns[3]["tier"]] == ["edge", "cloud"]
        assert turns[3]["content"] == answer.choices[0].message.content
    assert not any(_alive(pid) for pid in pids)
