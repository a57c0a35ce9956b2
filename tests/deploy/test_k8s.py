"""infra/k8s: valid against the Kubernetes API schemas, hardened containers with probes and
resources, one image, and settings that are real settings; and Prometheus's Kubernetes
configuration (infra/prometheus/prometheus.k8s.yml), which scrapes each API pod on its own."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.deploy.names import unknown_settings
from tests.utils.prometheus import (
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    PrometheusClient,
    binary,
    poll,
    prometheus_service,
    running,
)

REPOSITORY = Path(__file__).resolve().parents[2]
K8S = REPOSITORY / "infra" / "k8s"
PROMETHEUS_K8S_CONFIG = PROMETHEUS_DIR / "prometheus.k8s.yml"
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


# --- Prometheus in the cluster: every API pod scraped on its own -------------------------------

API_JOB = "lakeloop_api"


def _k8s_prometheus_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_K8S_CONFIG.read_text())
    return config


def _job(config: dict[str, Any], name: str) -> dict[str, Any]:
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == name]
    return job


def _with_file_discovery(config: dict[str, Any], *, targets_file: Path) -> dict[str, Any]:
    """``config`` with the API job's Kubernetes discovery swapped for a file of target groups
    (every Prometheus build has file discovery; Debian's has no Kubernetes discovery), its rule
    files made absolute. Everything the job does with what it discovers is kept as committed."""
    config = copy.deepcopy(config)
    job = _job(config, API_JOB)
    del job["kubernetes_sd_configs"]
    job["file_sd_configs"] = [{"files": [str(targets_file)]}]
    config["rule_files"] = [str(PROMETHEUS_DIR / path) for path in config["rule_files"]]
    return config


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, cwd=PROMETHEUS_DIR, check=False
    )


def test_promtool_accepts_the_kubernetes_config(tmp_path: Path) -> None:
    """Everything but the discovery block itself, with the promtool that is here: the relabel
    rules (actions, RE2 regexes, target labels), the rule files, the other jobs."""
    config = tmp_path / "prometheus.yml"
    discovered = _with_file_discovery(_k8s_prometheus_config(), targets_file=tmp_path / "t.json")
    config.write_text(yaml.safe_dump(discovered))
    checked = _promtool("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_accepts_the_kubernetes_discovery() -> None:
    checked = _promtool("check", "config", str(PROMETHEUS_K8S_CONFIG))
    if "field kubernetes_sd_configs not found" in checked.stderr + checked.stdout:
        pytest.skip("this promtool is built without Kubernetes discovery (Debian's build)")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_kubernetes_config_is_the_tested_one_with_pods_discovered(
    kustomization: dict[str, Any], settings_map: dict[str, Any]
) -> None:
    """prometheus.yml (the one the rules and dashboards are tested with) but for how the API is
    found and where the Pushgateway and Alertmanager are: the rules see the same job, and
    Prometheus scrapes the Pushgateway the flows push to (the ConfigMap's)."""
    local = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    cluster = _k8s_prometheus_config()
    pushed_to = urlsplit(settings_map["data"]["LAKELOOP_OBSERVABILITY__PUSHGATEWAY_URL"]).netloc
    [scraped] = _job(cluster, "pushgateway")["static_configs"]
    assert scraped["targets"] == [pushed_to]
    api = _job(cluster, API_JOB)
    [discovery] = api.pop("kubernetes_sd_configs")
    assert discovery == {"role": "pod", "namespaces": {"names": [kustomization["namespace"]]}}
    assert api.pop("relabel_configs")
    assert "static_configs" not in api
    _job(local, API_JOB).pop("static_configs")
    for config in (local, cluster):
        _job(config, "pushgateway")["static_configs"] = None
        [sender] = config["alerting"]["alertmanagers"]
        sender["static_configs"] = None
    assert cluster == local


def _sanitized(name: str) -> str:
    """A Kubernetes label or annotation name as a Prometheus label name (Prometheus's
    ``strutil.SanitizeLabelName``: every character outside [a-zA-Z0-9_] becomes ``_``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _discovered_pod(
    *, name: str, namespace: str, template: dict[str, Any], ip: str
) -> list[dict[str, Any]]:
    """The target groups Prometheus's Kubernetes discovery (``role: pod``) makes of a running,
    ready pod of ``template``, with the meta labels of its ``discovery/kubernetes/pod.go``: the
    pod's own labels on every target, and one target per declared container port."""
    metadata = template["metadata"]
    meta = "__meta_kubernetes_"
    pod_labels = {
        f"{meta}namespace": namespace,
        f"{meta}pod_name": name,
        f"{meta}pod_ip": ip,
        f"{meta}pod_ready": "true",
        f"{meta}pod_phase": "Running",
        f"{meta}pod_controller_kind": "ReplicaSet",
        f"{meta}pod_controller_name": name.rsplit("-", 1)[0],
    }
    for kind in ("label", "annotation"):
        for key, value in metadata.get(f"{kind}s", {}).items():
            pod_labels[f"{meta}pod_{kind}_{_sanitized(key)}"] = value
            pod_labels[f"{meta}pod_{kind}present_{_sanitized(key)}"] = "true"
    groups = []
    for container in template["spec"]["containers"]:
        for port in container["ports"]:
            target = {
                f"{meta}pod_container_name": container["name"],
                f"{meta}pod_container_port_name": port.get("name", ""),
                f"{meta}pod_container_port_number": str(port["containerPort"]),
                f"{meta}pod_container_port_protocol": port.get("protocol", "TCP"),
            }
            address = f"{ip}:{port['containerPort']}"
            groups.append({"targets": [address], "labels": pod_labels | target})
    return groups


def test_prometheus_scrapes_each_api_pod_on_its_own(
    resources: list[dict[str, Any]], kustomization: dict[str, Any], tmp_path: Path
) -> None:
    """The committed job in a real Prometheus, handed the pods the manifests make (two API
    replicas, the gateway, the worker) as Kubernetes discovery describes them: it keeps one target
    per API pod, named by its pod, at the annotated port and path, and drops the other pods."""
    namespace = kustomization["namespace"]
    deployments = {doc["metadata"]["name"]: doc for doc in resources if doc["kind"] == "Deployment"}
    pods: dict[str, tuple[str, dict[str, Any]]] = {}  # name -> (ip, template)
    for index, (deployment, spec) in enumerate(sorted(deployments.items())):
        for replica in range(spec["spec"]["replicas"]):
            pod = f"{deployment}-5d8c7b9f4-{'abcdefgh'[replica]}x2qz"
            pods[pod] = (f"127.0.{index + 1}.{replica + 1}", spec["spec"]["template"])
    discovered = [
        group
        for name, (ip, template) in pods.items()
        for group in _discovered_pod(name=name, namespace=namespace, template=template, ip=ip)
    ]
    targets_file = tmp_path / "pods.json"
    targets_file.write_text(json.dumps(discovered))
    config = _with_file_discovery(_k8s_prometheus_config(), targets_file=targets_file)
    config["scrape_configs"] = [_job(config, API_JOB)]
    del config["rule_files"], config["alerting"]
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))

    service = prometheus_service(config_file, data_dir=tmp_path / "data")
    with running(service, state_dir=tmp_path / "state") as url:
        client = PrometheusClient(url)

        def all_seen() -> dict[str, Any] | None:
            answer = client.http.get("/targets", params={"state": "any"}).json()
            data: dict[str, Any] = answer["data"]
            seen = len(data["activeTargets"]) + len(data["droppedTargets"])
            return data if seen == len(discovered) else None

        found = poll(all_seen, what="every discovered pod's target, kept or dropped")

    api_pods = {name: ip for name, (ip, _) in pods.items() if name.startswith("lakeloop-api-")}
    assert len(api_pods) == deployments["lakeloop-api"]["spec"]["replicas"] == 2
    [api_container] = deployments["lakeloop-api"]["spec"]["template"]["spec"]["containers"]
    [http] = [port for port in api_container["ports"] if port["name"] == "http"]
    kept = {target["labels"]["pod"]: target for target in found["activeTargets"]}
    assert kept.keys() == api_pods.keys()
    for name, target in kept.items():
        assert target["labels"] == {
            "instance": name,
            "job": API_JOB,
            "namespace": namespace,
            "pod": name,
        }
        assert target["scrapeUrl"] == f"http://{api_pods[name]}:{http['containerPort']}/metrics"
    dropped = {
        target["discoveredLabels"]["__meta_kubernetes_pod_name"]
        for target in found["droppedTargets"]
    }
    assert dropped == pods.keys() - api_pods.keys()
    # The path scraped is one the API serves.
    served = json.loads((REPOSITORY / "api" / "openapi.json").read_text())["paths"]
    assert "/metrics" in served


def test_the_rules_add_up_the_pods(tmp_path: Path) -> None:
    """Each pod's counters are their own series (instance = pod): the recording rules take each
    series' rate before any sum, so two replicas serving 1 and 2 requests a second are 1 and 2
    a second on their own (the recorded rate keeps the replica) and 3 a second summed, both count
    as serving the champion, and each is judged on its own."""
    first, second = "lakeloop-api-5d8c7b9f4-ax2qz", "lakeloop-api-5d8c7b9f4-bx2qz"

    def series(name: str, pod: str, extra: str, values: str) -> dict[str, str]:
        where = f'job="{API_JOB}",namespace="lakeloop",pod="{pod}",instance="{pod}"'
        return {"series": f"{name}{{{where}{extra}}}", "values": values}

    def expect(record: str, samples: dict[str, float]) -> dict[str, Any]:
        return {
            "expr": record,
            "eval_time": "10m",
            "exp_samples": [
                {"labels": f"{record}{{{where}}}", "value": value}
                for where, value in samples.items()
            ],
        }

    predict = ',endpoint="/v1/predict",status="200"'
    tests = {
        "rule_files": [str(PROMETHEUS_DIR / "rules" / "recording.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series("lakeloop_api_requests_total", first, predict, "0+60x10"),
                    series("lakeloop_api_requests_total", second, predict, "0+120x10"),
                    series("lakeloop_api_model_info", first, ',model_version="3"', "1x10"),
                    series("lakeloop_api_model_info", second, ',model_version="3"', "1x10"),
                    series("up", first, "", "1x10"),
                    series("up", second, "", "1x10"),
                ],
                "promql_expr_test": [
                    expect(
                        "lakeloop:api_requests:rate5m",
                        {
                            f'instance="{first}",endpoint="/v1/predict",status="200"': 1,
                            f'instance="{second}",endpoint="/v1/predict",status="200"': 2,
                        },
                    ),
                    {
                        "expr": "sum by (endpoint, status) (lakeloop:api_requests:rate5m)",
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{endpoint="/v1/predict",status="200"}', "value": 3}
                        ],
                    },
                    expect("lakeloop:api_instances:by_model_version", {'model_version="3"': 2}),
                    expect(
                        "lakeloop:api_champion_served:bool",
                        {f'job="{API_JOB}",instance="{pod}"': 1 for pod in (first, second)},
                    ),
                ],
            }
        ],
    }
    test_file = tmp_path / "pods_test.yml"
    test_file.write_text(yaml.safe_dump(tests))
    tested = _promtool("test", "rules", str(test_file))
    assert tested.returncode == 0, tested.stdout + tested.stderr
