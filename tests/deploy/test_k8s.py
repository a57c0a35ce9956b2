"""infra/k8s: valid against the Kubernetes API schemas, hardened containers with probes and
resources, one image, and settings that are real settings."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.names import unknown_settings

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"
KUBERNETES_VERSION = kubernetes_validate.latest_version()
IMAGE = "lakeloop"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def resources(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for name in kustomization["resources"] for doc in _documents(K8S / name)]


@pytest.fixture(scope="module")
def secret_template() -> dict[str, Any]:
    [secret] = _documents(K8S / "secret.example.yaml")
    return secret


@pytest.fixture(scope="module")
def settings_map(resources: list[dict[str, Any]]) -> dict[str, Any]:
    [config_map] = [doc for doc in resources if doc["kind"] == "ConfigMap"]
    return config_map


def _pod_specs(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
        for doc in resources
        if doc["kind"] == "Deployment"
    }


def test_every_yaml_file_is_in_the_kustomization_or_is_the_secret_template(
    kustomization: dict[str, Any],
) -> None:
    files = {path.name for path in K8S.glob("*.yaml")}
    assert files == {*kustomization["resources"], "kustomization.yaml", "secret.example.yaml"}


MANIFESTS = sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifests_are_valid_for_the_kubernetes_api(path: Path) -> None:
    """Strict: an unknown or misplaced field (a typo) fails instead of being dropped."""
    for document in _documents(path):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kustomize_renders_every_resource_into_the_namespace(
    resources: list[dict[str, Any]],
) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomize rendering not checked")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True
    ).stdout
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert len(documents) == len(resources)
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == "lakeloop"


def test_every_container_is_probed_bounded_and_unprivileged(
    resources: list[dict[str, Any]],
) -> None:
    for name, pod in _pod_specs(resources).items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            assert "livenessProbe" in container, where
            assert "readinessProbe" in container, where
            assert container["resources"]["requests"].keys() >= {"cpu", "memory"}, where
            assert "memory" in container["resources"]["limits"], where
            hardening = container["securityContext"]
            assert hardening["allowPrivilegeEscalation"] is False, where
            assert hardening["readOnlyRootFilesystem"] is True, where
            assert hardening["capabilities"]["drop"] == ["ALL"], where
            # A read-only root needs somewhere to write: the state folder and /tmp.
            mounted = {mount["mountPath"] for mount in container["volumeMounts"]}
            assert mounted >= {"/var/lib/lakeloop", "/tmp"}, where  # noqa: S108


def test_the_api_is_replicated_and_probed_on_its_own_endpoints(
    resources: list[dict[str, Any]],
) -> None:
    [api] = [doc for doc in resources if doc["metadata"]["name"] == "lakeloop-api"][:1]
    assert api["spec"]["replicas"] == 2
    [container] = api["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_one_image_everywhere(
    resources: list[dict[str, Any]], kustomization: dict[str, Any]
) -> None:
    images = {
        container["image"]
        for pod in _pod_specs(resources).values()
        for container in pod["containers"]
    }
    assert images == {IMAGE}
    assert [entry["name"] for entry in kustomization["images"]] == [IMAGE]


def test_config_map_and_secret_keys_are_real_settings(
    settings_map: dict[str, Any], secret_template: dict[str, Any]
) -> None:
    assert unknown_settings(settings_map["data"]) == []
    assert unknown_settings(secret_template["stringData"]) == []


def test_the_secret_template_holds_no_value(secret_template: dict[str, Any]) -> None:
    assert set(secret_template["stringData"].values()) == {""}
    assert "data" not in secret_template


def test_every_reference_names_an_existing_key(
    resources: list[dict[str, Any]],
    settings_map: dict[str, Any],
    secret_template: dict[str, Any],
) -> None:
    for name, pod in _pod_specs(resources).items():
        for container in pod["containers"]:
            for variable in container.get("env", []):
                source = variable.get("valueFrom", {})
                if "configMapKeyRef" in source:
                    assert source["configMapKeyRef"]["key"] in settings_map["data"], name
                if "secretKeyRef" in source:
                    assert source["secretKeyRef"]["key"] in secret_template["stringData"], name
                    assert source["secretKeyRef"]["name"] == secret_template["metadata"]["name"]
                assert unknown_settings([variable["name"]]) == [], name
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == settings_map["metadata"]["name"]


def test_the_work_pool_job_template_makes_a_valid_hardened_job(
    secret_template: dict[str, Any], settings_map: dict[str, Any]
) -> None:
    """Prefect fills the {{ placeholders }} from the pool's variables; with their defaults the
    Job must be one the API server accepts, configured like the other lakeloop pods."""
    template = json.loads((K8S / "prefect-work-pool.json").read_text())
    variables = template["variables"]["properties"]
    defaults = {name: spec.get("default") for name, spec in variables.items()}
    assert defaults["image"].split(":")[0] == IMAGE
    assert defaults["namespace"] == "lakeloop"
    job = _fill(copy.deepcopy(template["job_configuration"]["job_manifest"]), defaults)
    job["metadata"]["name"] = "train-run"
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "lakeloop-flow-run"
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["envFrom"] == [
        {"configMapRef": {"name": settings_map["metadata"]["name"]}},
        {"secretRef": {"name": secret_template["metadata"]["name"]}},
    ]


def test_the_stores_are_in_the_object_store_and_no_volume_is_shared(
    resources: list[dict[str, Any]],
    settings_map: dict[str, Any],
    secret_template: dict[str, Any],
) -> None:
    """The API writes its logs to, and the flow-run Jobs (the monitor) read them and keep the
    monitor history in, the bucket of LAKELOOP_STORE__URL: no ReadWriteMany volume, and the
    cooldown outlives every pod. Pod volumes are scratch (emptyDir), but the gateway's spool."""
    data = settings_map["data"]
    assert data["LAKELOOP_STORE__URL"].startswith("s3://")
    credentials = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert credentials <= set(secret_template["stringData"])

    [api] = _pod_specs(resources)["lakeloop-api"]["containers"]
    assert (
        _environment(api, data, secret_template)["LAKELOOP_STORE__URL"]
        == data["LAKELOOP_STORE__URL"]
    )
    assert credentials <= set(_environment(api, data, secret_template))
    template = json.loads((K8S / "prefect-work-pool.json").read_text())
    defaults = {
        name: spec.get("default") for name, spec in template["variables"]["properties"].items()
    }
    manifest = _fill(copy.deepcopy(template["job_configuration"]["job_manifest"]), defaults)
    job = manifest["spec"]["template"]["spec"]
    [flow_run] = job["containers"]
    job_env = _environment(flow_run, data, secret_template)
    assert job_env["LAKELOOP_STORE__URL"] == data["LAKELOOP_STORE__URL"]
    assert credentials <= set(job_env)

    claims = {
        doc["metadata"]["name"]: doc for doc in resources if doc["kind"] == "PersistentVolumeClaim"
    }
    for claim in claims.values():
        assert "ReadWriteMany" not in claim["spec"]["accessModes"], claim["metadata"]["name"]
    pods = {**_pod_specs(resources), "flow-run": job}
    for name, pod in pods.items():
        for volume in pod["volumes"]:
            if name == "lakeloop-gateway" and volume["name"] == "state":
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            else:
                assert "emptyDir" in volume, f"{name}/{volume['name']}"


def _environment(
    container: dict[str, Any], settings: dict[str, str], secret: dict[str, Any]
) -> dict[str, str]:
    """The variables a container gets by name: its ``env`` and everything its ``envFrom``
    brings from the ConfigMap or the Secret (the template's keys)."""
    names = {variable["name"]: variable.get("value", "") for variable in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= settings
        if "secretRef" in source:
            names |= secret["stringData"]
    return names


def _fill(value: Any, defaults: dict[str, Any]) -> Any:
    """Substitute whole-value ``{{ name }}`` placeholders; drop the ones left empty, as Prefect
    does for unset values."""
    if isinstance(value, dict):
        filled = {key: _fill(item, defaults) for key, item in value.items()}
        return {key: item for key, item in filled.items() if item not in (None, {}, [])}
    if isinstance(value, list):
        return [_fill(item, defaults) for item in value]
    if isinstance(value, str) and (match := re.fullmatch(r"\{\{ (\w+) \}\}", value)):
        return defaults.get(match[1])
    return value
