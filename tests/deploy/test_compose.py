"""infra/docker-compose.yml: valid for docker-compose and the Compose specification, every
lakeloop setting a real one, one list of variable names (infra/.env.example), no secret in the
file, loopback by default, a health check and an ordered start for every long-lived service."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.names import unknown_settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
ENV_EXAMPLE = INFRA / ".env.example"
ACTIONS = ROOT / "deployments" / "lakefs_actions"

# ${NAME}, ${NAME:-default}, ${NAME:?message}, ...; $$ is a literal dollar sign.
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>\w+)(?P<operator>:?[-?])?[^}]*\}")
# One-shot jobs (create databases, buckets): they exit, so they have no health check.
ONE_SHOT = {"postgres-init", "minio-init", "grafana-init"}
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "_KEY", "CONNECTION_STRING", "STORE_URI")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def example_names() -> dict[str, str]:
    """The variables infra/.env.example declares, with their (mostly empty) values."""
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {name.strip(): value.strip() for name, value in pairs}


def _variables() -> dict[str, str]:
    """Every variable the compose file interpolates, with the strictest operator used on it."""
    found: dict[str, str] = {}
    for match in VARIABLE.finditer(COMPOSE_FILE.read_text()):
        operator = match["operator"] or ""
        if found.get(match["name"], "") != ":?":
            found[match["name"]] = operator
    return found


def _filled_env_file(tmp_path: Path, example: dict[str, str]) -> Path:
    """infra/.env.example with a throwaway value for every variable compose requires."""
    required = {name for name, operator in _variables().items() if operator == ":?"}
    lines = [
        f"{name}={'unit-test-' + name.lower() if name in required and not value else value}"
        for name, value in example.items()
    ]
    path = tmp_path / ".env"
    path.write_text("\n".join(lines) + "\n")
    return path


def _docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (`make system-deps` installs it)")
    return binary


def test_docker_compose_accepts_the_file_with_the_example_env_filled_in(
    tmp_path: Path, example_names: dict[str, str]
) -> None:
    env_file = _filled_env_file(tmp_path, example_names)
    rendered = subprocess.run(
        [_docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    config = yaml.safe_load(rendered.stdout)
    assert "unit-test-postgres_password" in config["services"]["postgres"]["environment"].values()


def test_docker_compose_refuses_to_start_with_a_secret_left_empty(tmp_path: Path) -> None:
    """The example as it is (every secret empty) fails fast, naming a missing variable."""
    rendered = subprocess.run(
        [_docker_compose(), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert rendered.returncode != 0
    assert "set it in infra/.env" in rendered.stderr


def test_the_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    """Against the compose-spec schema that check-jsonschema vendors and keeps current."""
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(vendored.read_text())
    jsonschema.validate(compose, schema)


def test_every_lakeloop_variable_is_a_setting(
    compose: dict[str, Any], example_names: dict[str, str]
) -> None:
    in_services = {
        name for service in compose["services"].values() for name in _environment(service)
    }
    assert unknown_settings(in_services) == []
    assert unknown_settings(example_names) == []
    assert unknown_settings(_variables()) == []


def test_the_example_env_file_is_the_one_list_of_variables(example_names: dict[str, str]) -> None:
    """Every variable compose reads is in infra/.env.example and every name there is used, so a
    new secret cannot be forgotten in the example, nor an old one linger."""
    used = set(_variables())
    compose_own = {"COMPOSE_PROJECT_NAME"}  # read by compose itself, not by the file
    assert sorted(used - set(example_names)) == []
    assert sorted(set(example_names) - used - compose_own) == []


def test_secrets_come_from_the_env_file_only(
    compose: dict[str, Any], example_names: dict[str, str]
) -> None:
    """No secret value is written in the file, and the example gives none either."""
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            # A *_FILE names where a secret is kept, not the secret.
            if key.endswith("_FILE"):
                continue
            if any(word in key for word in SECRET_WORDS) and value is not None:
                assert VARIABLE.search(str(value)), f"{name}: {key} is not from infra/.env"
    for key, value in example_names.items():
        if any(word in key for word in SECRET_WORDS) or key.endswith("_USER"):
            assert value == "", f"infra/.env.example gives {key} a value"


def test_ports_are_published_on_loopback_by_default(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"


def test_every_server_has_a_health_check_and_waits_for_what_it_needs(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        assert "test" in service.get("healthcheck", {}), f"{name} has no health check"
        for needed, condition in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if needed in ONE_SHOT else "service_healthy"
            assert condition == {"condition": wanted}, f"{name} -> {needed}"


def test_lakefs_gets_every_variable_the_action_files_read(compose: dict[str, Any]) -> None:
    referenced = {
        match
        for action in ACTIONS.glob("*.yaml")
        for match in re.findall(r"\{\{\s*ENV\.(\w+)\s*\}\}", action.read_text())
    }
    assert referenced, "the action files read no lakeFS environment variable any more?"
    assert referenced <= set(_environment(compose["services"]["lakefs"]))


def test_lakefs_moves_data_through_its_api_for_clients_outside_the_network(
    compose: dict[str, Any],
) -> None:
    """Presigned URLs would name MinIO by its service name, which `lakeloop ingest` from the host
    (docs/deploy.md) cannot resolve: lakeFS on MinIO must not offer them."""
    environment = compose["services"]["lakefs"]["environment"]
    assert environment["LAKEFS_BLOCKSTORE_S3_ENDPOINT"] == "http://minio:9000"
    assert environment["LAKEFS_BLOCKSTORE_S3_DISABLE_PRE_SIGNED"] == "true"


def test_observability_is_provisioned_read_only_from_the_repository(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    mounts = [
        *services["prometheus"]["volumes"],
        *services["alertmanager"]["volumes"],
        *services["grafana"]["volumes"],
    ]
    from_repository = [mount for mount in mounts if mount.startswith(".")]
    assert {mount.split(":")[0] for mount in from_repository} == {
        "./prometheus",
        "./alertmanager",
        "../monitoring/grafana/provisioning/datasources",
        "../monitoring/grafana/provisioning/dashboards",
        "../monitoring/grafana/dashboards",
    }
    assert all(mount.endswith(":ro") for mount in from_repository)


def test_the_stack_alerts_through_one_path_only(compose: dict[str, Any]) -> None:
    """Prometheus's rules reach the gateway through Alertmanager; Grafana's alert rules (the same
    alerts, monitoring/grafana/provisioning/alerting) are not provisioned beside them, or every
    alert would reach a person twice and one drift would retrain twice."""
    inside = yaml.safe_load((INFRA / "prometheus" / "prometheus.compose.yml").read_text())
    assert inside["alerting"]["alertmanagers"]
    assert "alertmanager" in compose["services"]
    grafana = compose["services"]["grafana"]
    targets = [mount.split(":")[1] for mount in grafana["volumes"]]
    assert "/etc/grafana/provisioning" not in targets
    assert not any(target.startswith("/etc/grafana/provisioning/alerting") for target in targets)
    # Nor does Grafana hold the gateway's secret, which only its alerting would use.
    assert "LAKELOOP_GATEWAY__WEBHOOK_SECRET" not in _environment(grafana)


def test_lakeloop_services_run_the_image_built_from_this_repository(
    compose: dict[str, Any],
) -> None:
    lakeloop = {
        name: service
        for name, service in compose["services"].items()
        if "lakeloop" in str(service.get("image"))
    }
    assert set(lakeloop) == {"prefect", "mlflow", "gateway", "api", "worker", "grafana-init"}
    for service in lakeloop.values():
        assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert (INFRA / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def _environment(service: dict[str, Any]) -> dict[str, Any]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in environment)
    return dict(environment)


def test_prometheus_in_compose_scrapes_the_services_by_name(compose: dict[str, Any]) -> None:
    """The compose configuration is the tested one (infra/prometheus/prometheus.yml) with the
    services' names as targets and as the Alertmanager alerts go to, nothing else."""
    local = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    inside = yaml.safe_load((INFRA / "prometheus" / "prometheus.compose.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in inside["scrape_configs"]
    }
    assert targets == {"lakeloop_api": ["api:8000"], "pushgateway": ["pushgateway:9091"]}
    [alertmanager] = inside["alerting"]["alertmanagers"]
    assert alertmanager["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    for job in (
        *local["scrape_configs"],
        *inside["scrape_configs"],
        *local["alerting"]["alertmanagers"],
        *inside["alerting"]["alertmanagers"],
    ):
        job["static_configs"] = None
    assert inside == local
    command = compose["services"]["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.compose.yml" in command
    for name in ("api", "pushgateway", "alertmanager"):
        assert name in compose["services"]


def test_the_api_and_the_flow_runs_share_the_stores_in_minio_not_a_volume(
    compose: dict[str, Any],
) -> None:
    """The API logs to, and the worker's flow runs (the monitor) read from and keep the monitor
    history in, the bucket of LAKELOOP_STORE__URL on MinIO, signed with the read-write key;
    no lakeloop container mounts a volume for it (the worker mounts only the Grafana token's)."""
    services = compose["services"]
    bucket = "lakeloop"
    assert f"minio/{bucket}" in " ".join(services["minio-init"]["command"])
    for name in ("api", "worker"):
        environment = _environment(services[name])
        assert environment["LAKELOOP_STORE__URL"].startswith(f"s3://{bucket}/"), name
        assert environment["LAKELOOP_STORE__ENDPOINT_URL"] == "http://minio:9000", name
        assert environment["AWS_ACCESS_KEY_ID"] == "${S3_ACCESS_KEY_ID}", name
        assert environment["AWS_SECRET_ACCESS_KEY"] == "${S3_SECRET_ACCESS_KEY}", name
        volumes = services[name].get("volumes", [])
        assert all(volume.startswith("grafana-token:") for volume in volumes), name
    assert "lakeloop-state" not in compose["volumes"]


def test_alertmanager_in_compose_routes_to_the_gateway_by_name_with_the_secret_from_env(
    compose: dict[str, Any],
) -> None:
    """The compose Alertmanager runs a pinned image on infra/alertmanager/alertmanager.compose.yml,
    which is the amtool-checked alertmanager.yml with the gateway's service name and the path of
    the secret in the container, nothing else; its start command writes that file from the
    gateway's own secret variable (infra/.env), on a tmpfs, never into the repository."""
    service = compose["services"]["alertmanager"]
    image, _, tag = service["image"].rpartition(":")
    assert image == "quay.io/prometheus/alertmanager"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), service["image"]

    local = yaml.safe_load((INFRA / "alertmanager" / "alertmanager.yml").read_text())
    inside = yaml.safe_load((INFRA / "alertmanager" / "alertmanager.compose.yml").read_text())
    gateway = _gateway_webhook(inside)
    assert gateway["url"] == "http://gateway:8002/alerts/alertmanager"
    secret_file = gateway["http_config"]["authorization"]["credentials_file"]
    assert secret_file == "/run/lakeloop/webhook_secret"
    for config in (local, inside):
        webhook = _gateway_webhook(config)
        webhook["url"] = webhook["http_config"]["authorization"]["credentials_file"] = None
    assert inside == local

    script = service["command"][0]
    assert f'"$LAKELOOP_GATEWAY__WEBHOOK_SECRET" > {secret_file}' in script.replace("$$", "$")
    assert "--config.file=/etc/alertmanager/alertmanager.compose.yml" in script
    assert "--cluster.listen-address=" in script.split()
    assert service["tmpfs"] == [str(Path(secret_file).parent)]
    assert _environment(service) == {
        "LAKELOOP_GATEWAY__WEBHOOK_SECRET": "${LAKELOOP_GATEWAY__WEBHOOK_SECRET}"
    }
    assert "8002:8002" in compose["services"]["gateway"]["ports"][0]


def _gateway_webhook(config: dict[str, Any]) -> dict[str, Any]:
    """The gateway receiver's webhook of an Alertmanager config (itself, not a copy)."""
    [receiver] = [r for r in config["receivers"] if r["name"] == "lakeloop-gateway"]
    [webhook] = receiver["webhook_configs"]
    assert isinstance(webhook, dict)
    return webhook


def test_the_flows_get_a_grafana_token_that_grafana_init_makes(compose: dict[str, Any]) -> None:
    """Grafana cannot provision service accounts from files: grafana-init (the lakeloop image,
    once Grafana is healthy) makes the flows' service account and token as Grafana's admin and
    writes the token to a volume the worker mounts read-only, at the path the worker's settings
    read it from. Only grafana-init and Grafana hold the admin password; the worker holds no
    Grafana secret in its environment."""
    services = compose["services"]
    init, worker, grafana = services["grafana-init"], services["worker"], services["grafana"]
    assert init["command"] == ["lakeloop", "grafana", "service-account"]
    assert init["depends_on"] == {"grafana": {"condition": "service_healthy"}}
    init_env, worker_env = _environment(init), _environment(worker)
    assert init_env["LAKELOOP_OBSERVABILITY__GRAFANA_URL"] == "http://grafana:3000"
    assert worker_env["LAKELOOP_OBSERVABILITY__GRAFANA_URL"] == "http://grafana:3000"
    token_file = Path(worker_env["LAKELOOP_OBSERVABILITY__GRAFANA_TOKEN_FILE"])
    assert init_env["LAKELOOP_OBSERVABILITY__GRAFANA_TOKEN_FILE"] == str(token_file)
    [init_mount] = init["volumes"]
    [worker_mount] = worker["volumes"]
    assert init_mount == f"grafana-token:{token_file.parent}"
    assert worker_mount == f"grafana-token:{token_file.parent}:ro"
    assert "grafana-token" in compose["volumes"]
    # A fresh named volume takes the owner of the image's folder: the image makes it for its user.
    assert str(token_file.parent) in (ROOT / "Dockerfile").read_text()

    password = "${GRAFANA_ADMIN_PASSWORD}"
    assert init_env["LAKELOOP_OBSERVABILITY__GRAFANA_ADMIN_PASSWORD"] == password
    assert _environment(grafana)["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD"
    )
    holders = {
        name
        for name, service in services.items()
        if any("GRAFANA_ADMIN_PASSWORD" in str(value) for value in _environment(service).values())
    }
    assert holders == {"grafana", "grafana-init"}
    assert "LAKELOOP_OBSERVABILITY__GRAFANA_TOKEN" not in worker_env
