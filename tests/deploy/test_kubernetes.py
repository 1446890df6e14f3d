"""Checks of the Kubernetes manifests, rendered from every kustomize overlay.

`kubectl kustomize` renders each overlay offline, and kubernetes-validate
checks every rendered object against the OpenAPI schemas of the Kubernetes
versions in K8S_VERSIONS, strictly, so an unknown field fails too. The other
tests check the wiring that no schema covers: selectors, ports, probes,
autoscaling, GPU scheduling and the ingress-nginx annotations.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import kubernetes_validate
import pytest

# The oldest and the newest release that kubernetes-validate 1.37 ships schemas
# for. The manifests use no API newer than autoscaling/v2 (Kubernetes 1.23).
K8S_VERSIONS = ("1.25.0", "1.37.0")
OVERLAYS = ("cpu", "gpu")
FRONTENDS = ("streamlit", "dash", "gradio")
NAMESPACE = "frontbench"

Rendered = dict[str, list[dict[str, Any]]]


def find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """Return the one object of `kind` named `name`."""
    matches = [
        d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name
    ]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    """Return the only container of a Deployment's pod template."""
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"][
        "containers"
    ]
    assert len(containers) == 1, [c["name"] for c in containers]
    return containers[0]


def env_of(container_spec: dict[str, Any]) -> dict[str, Any]:
    """Return a container's environment: name to value or valueFrom."""
    return {
        item["name"]: item.get("value", item.get("valueFrom"))
        for item in container_spec.get("env", [])
    }


def _id(document: dict[str, Any]) -> str:
    return f"{document['kind']}/{document['metadata']['name']}"


def _deployments(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [document for document in documents if document["kind"] == "Deployment"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_overlay_matches_api_schema(
    rendered_overlays: Rendered, overlay: str, version: str
) -> None:
    errors: list[str] = []
    for document in rendered_overlays[overlay]:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{_id(document)}: {exc.message} at {list(exc.path)}")

    assert errors == [], f"overlay {overlay} against Kubernetes {version}"


def test_k8s_schema_rejects_unknown_field(rendered_overlays: Rendered) -> None:
    # Shows that the strict validation above can fail: a misspelled field.
    deployment = copy.deepcopy(find(rendered_overlays["cpu"], "Deployment", "backend"))
    container(deployment)["readinessProbe"]["initialDelaySecond"] = 5

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_objects_share_namespace(rendered_overlays: Rendered, overlay: str) -> None:
    outside = [
        _id(d)
        for d in rendered_overlays[overlay]
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != NAMESPACE
    ]

    assert outside == [], f"not in namespace {NAMESPACE!r}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_services_select_deployment_pods(
    rendered_overlays: Rendered, overlay: str
) -> None:
    documents = rendered_overlays[overlay]
    deployments = _deployments(documents)

    for service in (d for d in documents if d["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        targets = [
            d
            for d in deployments
            if selector <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, (
            f"Service/{service['metadata']['name']} selects {targets}"
        )
        port_names = {p["name"] for p in container(targets[0])["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (
                f"Service/{service['metadata']['name']} targets "
                f"{port['targetPort']!r}, the container has {sorted(port_names)}"
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_deployments_select_own_pods(
    rendered_overlays: Rendered, overlay: str
) -> None:
    for deployment in _deployments(rendered_overlays[overlay]):
        selector = deployment["spec"]["selector"]["matchLabels"].items()
        labels = deployment["spec"]["template"]["metadata"]["labels"].items()
        assert selector <= labels, (
            f"{_id(deployment)}: {dict(selector)} vs {dict(labels)}"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_pods_run_as_non_root(rendered_overlays: Rendered, overlay: str) -> None:
    for deployment in _deployments(rendered_overlays[overlay]):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, _id(deployment)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_pods_disable_service_links(
    rendered_overlays: Rendered, overlay: str
) -> None:
    for deployment in _deployments(rendered_overlays[overlay]):
        pod = deployment["spec"]["template"]["spec"]
        # Service links would set LOCUST_MASTER_PORT=tcp://... and similar
        # variables that the programs read as their own settings.
        assert pod["enableServiceLinks"] is False, _id(deployment)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_containers_have_resources(
    rendered_overlays: Rendered, overlay: str
) -> None:
    for deployment in _deployments(rendered_overlays[overlay]):
        resources = container(deployment)["resources"]
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in resources.get(bound, {}), (
                    f"{_id(deployment)} has no {bound}.{resource}"
                )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_backend_probes(rendered_overlays: Rendered, overlay: str) -> None:
    backend = container(find(rendered_overlays[overlay], "Deployment", "backend"))

    assert backend["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert backend["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert backend["startupProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_backend_torch_threads_follow_cpu_limit(
    rendered_overlays: Rendered, overlay: str
) -> None:
    backend = container(find(rendered_overlays[overlay], "Deployment", "backend"))
    threads = env_of(backend)["FRONTBENCH_TORCH_THREADS"]

    assert threads == {
        "resourceFieldRef": {
            "containerName": backend["name"],
            "resource": "limits.cpu",
            "divisor": "1",
        }
    }, threads
    assert "cpu" in backend["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_autoscaler_scales_only_backend(
    rendered_overlays: Rendered, overlay: str
) -> None:
    documents = rendered_overlays[overlay]
    autoscalers = [d for d in documents if d["kind"] == "HorizontalPodAutoscaler"]
    backend = find(documents, "Deployment", "backend")

    assert [d["apiVersion"] for d in autoscalers] == ["autoscaling/v2"]
    spec = autoscalers[0]["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "backend",
    }
    assert 1 <= spec["minReplicas"] < spec["maxReplicas"], spec
    assert [m["resource"]["name"] for m in spec["metrics"]] == ["cpu"]
    assert "replicas" not in backend["spec"], "the HPA owns the backend's replicas"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_disruption_budget_covers_backend(
    rendered_overlays: Rendered, overlay: str
) -> None:
    documents = rendered_overlays[overlay]
    budget = find(documents, "PodDisruptionBudget", "backend")
    labels = find(documents, "Deployment", "backend")["spec"]["template"]["metadata"][
        "labels"
    ]
    autoscaler = find(documents, "HorizontalPodAutoscaler", "backend")

    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["minAvailable"] <= autoscaler["spec"]["minReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("frontend", FRONTENDS)
def test_k8s_frontend_probes_use_ready_path(
    rendered_overlays: Rendered, overlay: str, frontend: str
) -> None:
    cli = importlib.import_module(f"frontbench_{frontend}.cli")
    spec = container(find(rendered_overlays[overlay], "Deployment", frontend))

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["httpGet"]["path"] == cli.READY_PATH, f"{frontend} {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("frontend", FRONTENDS)
def test_k8s_frontend_uses_backend_service(
    rendered_overlays: Rendered, overlay: str, frontend: str
) -> None:
    documents = rendered_overlays[overlay]
    command = container(find(documents, "Deployment", frontend))["command"]
    service = find(documents, "Service", "backend")
    expected = f"http://backend:{service['spec']['ports'][0]['port']}"

    assert command[command.index("--backend-url") + 1] == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_commands_exist(
    rendered_overlays: Rendered,
    overlay: str,
    command_problems: Callable[[list[str]], list[str]],
) -> None:
    for deployment in _deployments(rendered_overlays[overlay]):
        command = container(deployment)["command"]
        assert command_problems(command) == [], f"{_id(deployment)}: {command}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_locust_workers_reach_master(
    rendered_overlays: Rendered,
    overlay: str,
    locustfile_in_repository: Callable[[str], Path],
) -> None:
    documents = rendered_overlays[overlay]
    master = container(find(documents, "Deployment", "locust-master"))
    worker = container(find(documents, "Deployment", "locust-worker"))
    service = find(documents, "Service", "locust-master")
    command = worker["command"]

    assert "--master" in master["command"]
    assert command[command.index("--master-host") + 1] == service["metadata"]["name"]
    assert 5557 in [p["port"] for p in service["spec"]["ports"]]
    assert env_of(master)["LOCUST_LOCUSTFILE"] == env_of(worker)["LOCUST_LOCUSTFILE"]
    assert locustfile_in_repository(env_of(master)["LOCUST_LOCUSTFILE"]).is_file()


def _ingress_for(documents: list[dict[str, Any]], service: str) -> dict[str, Any]:
    found = []
    for ingress in (d for d in documents if d["kind"] == "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                if path["backend"]["service"]["name"] == service:
                    found.append(ingress)
    assert len(found) == 1, f"expected one Ingress rule for Service {service}"
    return found[0]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_k8s_ingress_routes_frontend(
    rendered_overlays: Rendered, frontend: str
) -> None:
    ingress = _ingress_for(rendered_overlays["cpu"], frontend)

    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["spec"]["ingressClassName"] == "nginx"


class IngressNeeds(NamedTuple):
    """The ingress-nginx settings one framework needs."""

    affinity: str | None
    buffering: str | None
    long_timeouts: bool


# As the Ingress comments explain: Streamlit's upload must reach the replica
# holding the session's websocket; Gradio's queue events stream over SSE from
# the replica that queued the job; Dash's callbacks are stateless.
INGRESS_NEEDS = {
    "streamlit": IngressNeeds(affinity="cookie", buffering=None, long_timeouts=True),
    "dash": IngressNeeds(affinity=None, buffering=None, long_timeouts=False),
    "gradio": IngressNeeds(affinity="cookie", buffering="off", long_timeouts=True),
}
ANNOTATION = "nginx.ingress.kubernetes.io/"
# ingress-nginx closes a proxied connection idle for this long by default.
DEFAULT_PROXY_TIMEOUT_S = 60


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_k8s_ingress_annotations_fit_framework(
    rendered_overlays: Rendered, frontend: str
) -> None:
    annotations = _ingress_for(rendered_overlays["cpu"], frontend)["metadata"].get(
        "annotations", {}
    )
    needs = INGRESS_NEEDS[frontend]

    assert annotations.get(ANNOTATION + "affinity") == needs.affinity, frontend
    assert annotations.get(ANNOTATION + "proxy-buffering") == needs.buffering, frontend
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        timeout = int(annotations.get(ANNOTATION + name, DEFAULT_PROXY_TIMEOUT_S))
        assert (timeout > DEFAULT_PROXY_TIMEOUT_S) == needs.long_timeouts, (
            f"{frontend}: {name} {timeout}"
        )


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_k8s_ingress_body_size_above_backend_limit(
    rendered_overlays: Rendered, frontend: str
) -> None:
    from frontbench_backend.settings import DEFAULT_MAX_UPLOAD_BYTES

    annotations = _ingress_for(rendered_overlays["cpu"], frontend)["metadata"][
        "annotations"
    ]
    size = re.fullmatch(r"(\d+)m", annotations[ANNOTATION + "proxy-body-size"])

    assert size, annotations[ANNOTATION + "proxy-body-size"]
    assert int(size.group(1)) * 1024 * 1024 > DEFAULT_MAX_UPLOAD_BYTES


def test_k8s_gpu_overlay_schedules_backend_on_gpu(rendered_overlays: Rendered) -> None:
    backend = find(rendered_overlays["gpu"], "Deployment", "backend")
    pod = backend["spec"]["template"]["spec"]
    spec = container(backend)

    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(spec)["FRONTBENCH_DEVICE"] == "cuda"
    assert spec["image"].endswith(":cuda"), spec["image"]
    assert pod["nodeSelector"], "no nodeSelector for GPU nodes"
    assert {
        "key": "nvidia.com/gpu",
        "operator": "Exists",
        "effect": "NoSchedule",
    } in pod["tolerations"]


def test_k8s_cpu_overlay_requests_no_gpu(rendered_overlays: Rendered) -> None:
    backend = find(rendered_overlays["cpu"], "Deployment", "backend")
    spec = container(backend)

    assert "nvidia.com/gpu" not in spec["resources"]["limits"]
    assert env_of(spec)["FRONTBENCH_DEVICE"] == "cpu"
    assert spec["image"].endswith(":cpu"), spec["image"]
    assert "nodeSelector" not in backend["spec"]["template"]["spec"]


def test_k8s_gpu_overlay_changes_only_backend(rendered_overlays: Rendered) -> None:
    cpu = {_id(d): d for d in rendered_overlays["cpu"]}
    gpu = {_id(d): d for d in rendered_overlays["gpu"]}
    changed = sorted(name for name in cpu if cpu[name] != gpu.get(name))

    assert set(cpu) == set(gpu)
    assert changed == [
        "Deployment/backend",
        "HorizontalPodAutoscaler/backend",
    ], changed
