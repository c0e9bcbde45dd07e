"""deploy/kubernetes: schema-valid manifests whose names, ports, labels and selectors agree.

``kubernetes-validate --strict`` checks each manifest against the Kubernetes OpenAPI
schemas it ships (unknown fields are errors). The rest reads the manifests as a cluster
would wire them: Services select pods that exist, target ports the containers declare,
the gateway's node URLs name those Services, and the policy in the ConfigMap loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from edge_node.settings import DEFAULT_SERVED_MODEL_NAME
from gateway.policy.parse import parse_policy
from gateway.settings import settings_from_env
from tests.stack._tools import REPO_ROOT, run, tool

K8S_DIR = REPO_ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
MANIFESTS = sorted(p for p in K8S_DIR.glob("*.yaml") if p != KUSTOMIZATION)

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], Manifest]:
    """Every resource by (kind, name); a name is used once per kind."""
    found: dict[tuple[str, str], Manifest] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} is defined twice"
            found[key] = doc
    return found


def _containers(workload: Manifest) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return containers


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_broken_manifest(tmp_path: Path) -> None:
    broken = tmp_path / "deployment.yaml"
    text = (K8S_DIR / "gateway-deployment.yaml").read_text(encoding="utf-8")
    broken.write_text(text.replace("containerPort: 8080", "containerPrt: 8080"))
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", str(broken))
    assert result.returncode != 0
    assert "containerPort" in result.stdout + result.stderr


def test_kustomization_lists_every_manifest_and_image() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)
    images = {image["name"] for image in kustomization["images"]}
    used = set()
    for path in MANIFESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            used |= {c["image"].split(":")[0] for c in _containers(doc)}
    # Our own images are retargeted to the operator's registry; upstream ones are pinned.
    assert images == {name for name in used if name.startswith("hybrid-gateway/")}
    assert kustomization["namespace"] == "hybrid-gateway"


def test_services_select_pods_and_target_declared_ports(
    resources: dict[tuple[str, str], Manifest],
) -> None:
    workloads = [
        doc for (kind, _), doc in resources.items() if kind in {"Deployment", "StatefulSet"}
    ]
    services = [doc for (kind, _), doc in resources.items() if kind == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"gateway", "edge-node", "vllm", "redis"}
    for service in services:
        selector = service["spec"]["selector"]
        matches = [
            w
            for w in workloads
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {service['metadata']['name']} selects {len(matches)}"
        declared = {
            p["name"]: p["containerPort"] for c in _containers(matches[0]) for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in declared or target in declared.values(), (service, target)


def test_workload_selectors_match_their_pod_labels(
    resources: dict[tuple[str, str], Manifest],
) -> None:
    for (kind, name), doc in resources.items():
        if kind in {"Deployment", "StatefulSet"}:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        if kind == "PodDisruptionBudget":
            target = resources[("Deployment", name)]
            labels = target["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
    stateful = resources[("StatefulSet", "redis")]
    assert resources[("Service", stateful["spec"]["serviceName"])]["spec"]["clusterIP"] == "None"


def test_probes_use_declared_ports_and_the_documented_paths(
    resources: dict[tuple[str, str], Manifest],
) -> None:
    expected = {
        "gateway": {"readinessProbe": "/readyz", "livenessProbe": "/healthz"},
        "edge-node": {"readinessProbe": "/health", "livenessProbe": "/health"},
        "vllm": {
            "readinessProbe": "/health",
            "livenessProbe": "/health",
            "startupProbe": "/health",
        },
    }
    for name, probes in expected.items():
        container = _containers(resources[("Deployment", name)])[0]
        port_names = {p["name"] for p in container["ports"]}
        for probe, path in probes.items():
            assert container[probe]["httpGet"]["path"] == path, (name, probe)
            assert container[probe]["httpGet"]["port"] in port_names, (name, probe)


def test_gateway_env_points_at_the_services(resources: dict[tuple[str, str], Manifest]) -> None:
    container = _containers(resources[("Deployment", "gateway")])[0]
    env = _env(container)
    settings = settings_from_env(env)
    assert settings.port == container["ports"][0]["containerPort"]
    assert settings.host == "0.0.0.0"
    assert settings.edge_nodes is not None and settings.cloud_nodes is not None

    def service_port(url: str) -> tuple[str, int]:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        service = resources[("Service", parts.hostname)]
        assert parts.port in {p["port"] for p in service["spec"]["ports"]}, url
        return parts.hostname, parts.port

    assert service_port(settings.edge_nodes[0].url) == ("edge-node", 8001)
    assert settings.edge_nodes[0].model == DEFAULT_SERVED_MODEL_NAME
    assert service_port(settings.cloud_nodes[0].url) == ("vllm", 8002)
    vllm_args = _containers(resources[("Deployment", "vllm")])[0]["args"]
    assert f"--served-model-name={settings.cloud_nodes[0].model}" in vllm_args
    assert "--port=8002" in vllm_args
    assert settings.redis_url is not None
    redis = urlsplit(settings.redis_url)
    assert redis.hostname == "redis" and redis.port == 6379

    # The policy file the env names is the ConfigMap's key, mounted where the env says.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "policy")
    assert settings.policy_path == Path(mount["mountPath"]) / "policy.yaml"
    hpa = resources[("HorizontalPodAutoscaler", "gateway")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    # The HPA scales on CPU utilisation, which needs a CPU request to compare with.
    assert "cpu" in container["resources"]["requests"]


def test_configmap_policy_is_valid_and_names_the_in_cluster_nodes(
    resources: dict[tuple[str, str], Manifest],
) -> None:
    text = resources[("ConfigMap", "gateway-policy")]["data"]["policy.yaml"]
    policy = parse_policy(text, source="gateway-configmap.yaml")
    env = _env(_containers(resources[("Deployment", "gateway")])[0])
    assert [n.url for n in policy.tiers["edge"].nodes] == [env["GATEWAY_EDGE_URLS"].split("=")[0]]
    assert [n.url for n in policy.tiers["cloud"].nodes] == [env["GATEWAY_CLOUD_URLS"].split("=")[0]]
    vllm_args = _containers(resources[("Deployment", "vllm")])[0]["args"]
    assert f"--max-model-len={policy.tiers['cloud'].context_window}" in vllm_args


def test_vllm_gets_a_gpu_a_model_cache_and_shared_memory(
    resources: dict[tuple[str, str], Manifest],
) -> None:
    deployment = resources[("Deployment", "vllm")]
    container = _containers(deployment)[0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    cache = volumes[mounts["/root/.cache/huggingface"]]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", cache) in resources
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
