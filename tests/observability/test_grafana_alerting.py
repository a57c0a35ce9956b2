"""Grafana alerting as code (``monitoring/grafana/provisioning/alerting/``), checked against the
file format as Grafana's own source reads it, since no Grafana runs here:

- ``pkg/services/provisioning/alerting/types.go`` and ``rules_types.go`` (``AlertingFileV1``,
  ``AlertRuleGroupV1``, ``AlertRuleV1``, ``QueryV1``: the keys, what ``mapToModel`` requires and
  its defaults), ``contact_point_types.go``, ``notification_policy_types.go``;
- ``pkg/services/ngalert/models/alert_rule.go`` (``NoDataStateFromString``,
  ``ErrStateFromString``), ``pkg/expr/threshold.go`` (the threshold expression);
- ``pkg/services/provisioning/values/values.go`` (which fields ``$NAME`` is replaced in);
- ``pkg/services/ngalert/state/compat.go`` (``noDataAlert``/``errorAlert``: the rule's labels,
  ``lakeloop_action`` included, under alertname DatasourceNoData/DatasourceError).

Unknown keys are errors here because Go's YAML decoder drops them silently: a misspelt
``noDatastate`` would leave Grafana's default (NoData), which sends the retrain label on.
The notification policy is an Alertmanager route tree, so Alertmanager's own ``amtool`` routes
each rule's labels through it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import ACTION_LABEL, NOTHING_MEASURED_ALERTS, RETRAIN, create_gateway
from lakeloop.settings import Settings, load_settings
from tests.observability.test_config_files import GRAFANA_DIR, provisioned_datasource_uid
from tests.utils.prometheus import PROMETHEUS_DIR, binary

ALERTING_DIR = GRAFANA_DIR / "provisioning" / "alerting"
EXPRESSION_UID = "__expr__"  # Grafana's server-side expressions "datasource"

# The YAML keys of each provisioning struct (their `yaml:"..."` tags).
FILE_KEYS = {
    "apiVersion",
    "groups",
    "deleteRules",
    "contactPoints",
    "deleteContactPoints",
    "policies",
    "resetPolicies",
    "templates",
    "deleteTemplates",
    "muteTimes",
    "deleteMuteTimes",
}
GROUP_KEYS = {"orgId", "name", "folder", "interval", "rules"}
RULE_KEYS = {
    "uid",
    "title",
    "condition",
    "data",
    "dashboardUid",
    "panelId",
    "noDataState",
    "execErrState",
    "for",
    "keepFiringFor",
    "annotations",
    "labels",
    "isPaused",
    "notification_settings",
    "record",
}
QUERY_KEYS = {"refId", "queryType", "relativeTimeRange", "datasourceUid", "model"}
CONTACT_POINT_KEYS = {"orgId", "name", "receivers"}
RECEIVER_KEYS = {"uid", "type", "settings", "disableResolveMessage"}
# The webhook integration's settings (grafana/alerting receivers/webhook/v1/config.go).
WEBHOOK_SETTINGS = {
    "url",
    "httpMethod",
    "maxAlerts",
    "authorization_scheme",
    "authorization_credentials",
    "username",
    "password",
    "title",
    "message",
    "tlsConfig",
    "hmacConfig",
    "headers",
    "payload",
}
NO_DATA_STATES = {"Alerting", "NoData", "OK", "KeepLast"}
EXEC_ERR_STATES = {"Alerting", "Error", "OK", "KeepLast"}
CANNOT_FIRE = "OK"
"""The only no-data / error mapping that neither fires the rule (Alerting; KeepLast of a firing
or pending rule) nor sends a DatasourceNoData / DatasourceError alert carrying its labels."""
EXPRESSION_TYPES = {"math", "reduce", "resample", "classic_conditions", "threshold", "sql"}
THRESHOLD_ARGUMENTS = {"gt": 1, "lt": 1, "within_range": 2, "outside_range": 2}
PROMQL_OPERATORS = {"gt": ">", "lt": "<"}
BASE_INTERVAL_SECONDS = 10  # Grafana's scheduler ticks; a group's interval must be a multiple
SHORT_UID = re.compile(r"[a-zA-Z0-9_-]{1,40}")  # util.IsValidShortUID and its length limit
# Prometheus's model.ParseDuration, as Grafana parses `interval` and `for`.
DURATION = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?"
)
DURATION_SECONDS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
GATEWAY_ROUTE = "/alerts/grafana"
ENVIRONMENT = {
    "LAKELOOP_GATEWAY__PUBLIC_URL": "http://gateway:8002",
    "LAKELOOP_GATEWAY__WEBHOOK_SECRET": "from-the-environment-0123456789abcdef",
}


def seconds(duration: str) -> float:
    """A Prometheus duration (``5m``, ``1h30m``, ``0s``) in seconds, or ``ValueError``."""
    if duration == "0":
        return 0.0
    match = DURATION.fullmatch(duration)
    if match is None or not any(match.groups()):
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(
        int(part or 0) * unit for part, unit in zip(match.groups(), DURATION_SECONDS, strict=True)
    )


def interpolated(value: str, environment: dict[str, str]) -> str:
    """``value`` as Grafana's provisioning reads an interpolated field (``values.go``
    ``interpolateValue``): ``$$`` is a literal ``$``, ``$NAME`` and ``${NAME}`` the environment
    variable (empty when unset, as Go's ``os.ExpandEnv``)."""

    def expand(part: str) -> str:
        return re.sub(
            r"\$(?:\{(\w+)\}|(\w+))",
            lambda match: environment.get(match[1] or match[2], ""),
            part,
        )

    return "$".join(expand(part) for part in value.split("$$"))


def provisioned() -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted(ALERTING_DIR.glob("*.yml"))]


def groups() -> list[dict[str, Any]]:
    return [group for document in provisioned() for group in document.get("groups", [])]


def grafana_rules() -> list[dict[str, Any]]:
    return [rule for group in groups() for rule in group["rules"]]


def contact_points() -> dict[str, dict[str, Any]]:
    return {
        point["name"]: point
        for document in provisioned()
        for point in document.get("contactPoints", [])
    }


def policy() -> dict[str, Any]:
    [tree] = [tree for document in provisioned() for tree in document.get("policies", [])]
    return tree


def prometheus_alerts() -> dict[str, dict[str, Any]]:
    loaded = yaml.safe_load((PROMETHEUS_DIR / "rules" / "alerts.yml").read_text())
    return {rule["alert"]: rule for group in loaded["groups"] for rule in group["rules"]}


def retrains(rule: dict[str, Any]) -> bool:
    return rule.get("labels", {}).get(ACTION_LABEL) == RETRAIN


def by_title(rule: dict[str, Any]) -> str:
    return str(rule["title"])


def test_the_files_are_version_1_with_known_sections_only() -> None:
    documents = provisioned()
    assert documents, f"no provisioning file in {ALERTING_DIR}"
    for document in documents:
        assert document["apiVersion"] == 1
        assert set(document) <= FILE_KEYS, set(document) - FILE_KEYS


def test_groups_have_a_name_a_folder_and_an_interval_grafana_can_schedule() -> None:
    dashboards = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "lakeloop.yml").read_text()
    )
    dashboard_folders = {provider["folder"] for provider in dashboards["providers"]}
    for group in groups():
        assert set(group) <= GROUP_KEYS, set(group) - GROUP_KEYS
        assert group["name"].strip()
        assert group["folder"].strip()
        # The rule provisioner runs before the dashboards' and makes a missing folder by title
        # with a random uid: sharing the title would take the dashboards' folder from them.
        assert group["folder"] not in dashboard_folders
        interval = seconds(group["interval"])
        assert interval > 0
        assert interval % BASE_INTERVAL_SECONDS == 0, group["interval"]
        assert group["rules"]


@pytest.mark.parametrize("rule", grafana_rules(), ids=by_title)
def test_rule_fields_are_grafanas(rule: dict[str, Any]) -> None:
    """What ``AlertRuleV1.mapToModel`` requires, with only the fields it knows."""
    assert set(rule) <= RULE_KEYS, set(rule) - RULE_KEYS
    assert rule["title"].strip()
    assert SHORT_UID.fullmatch(rule["uid"]), rule["uid"]
    assert seconds(rule["for"]) >= 0
    # Written out, never left to the defaults (NoData and Alerting), which fire on nothing.
    assert rule["noDataState"] in NO_DATA_STATES
    assert rule["execErrState"] in EXEC_ERR_STATES
    assert rule["data"]
    for name, value in rule.get("labels", {}).items():
        # Labels are interpolated: a `$` would be replaced by an environment variable.
        assert isinstance(value, str), name
        assert "$" not in value, f"{name}: {value}"
    assert all(isinstance(value, str) for value in rule.get("annotations", {}).values())


def test_rule_uids_and_titles_are_unique() -> None:
    rules = grafana_rules()
    assert len({rule["uid"] for rule in rules}) == len(rules)
    titles = [(group["folder"], rule["title"]) for group in groups() for rule in group["rules"]]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("rule", grafana_rules(), ids=by_title)
def test_queries_read_the_provisioned_datasource_and_the_condition_exists(
    rule: dict[str, Any],
) -> None:
    """Every query has a unique refId, Prometheus queries read the provisioned datasource by
    uid at the present instant, every expression reads a refId before it, and the condition is
    one of the refIds."""
    uid = provisioned_datasource_uid()
    seen: list[str] = []
    for query in rule["data"]:
        assert set(query) <= QUERY_KEYS, set(query) - QUERY_KEYS
        ref = query["refId"]
        assert ref not in seen
        model = query["model"]
        assert model["refId"] == ref
        if query["datasourceUid"] == EXPRESSION_UID:
            assert model["type"] in EXPRESSION_TYPES
            assert model["expression"] in seen, f"{ref} reads {model['expression']}"
            if model["type"] == "threshold":
                [condition] = model["conditions"]  # Grafana takes exactly one
                evaluator = condition["evaluator"]
                assert len(evaluator["params"]) == THRESHOLD_ARGUMENTS[evaluator["type"]]
        else:
            assert query["datasourceUid"] == uid
            assert model["expr"].strip()
            assert (model["instant"], model["range"]) == (True, False)
            window = query["relativeTimeRange"]
            assert window["from"] > window["to"] >= 0
        seen.append(ref)
    assert rule["condition"] in seen


def test_the_drift_rule_asks_for_a_retrain() -> None:
    assert [rule["title"] for rule in grafana_rules() if retrains(rule)] == [
        "LakeloopDriftAboveThreshold"
    ]


@pytest.mark.parametrize("rule", [r for r in grafana_rules() if retrains(r)], ids=by_title)
def test_no_data_or_a_failed_query_can_never_reach_the_retrain_trigger(
    rule: dict[str, Any],
) -> None:
    """Grafana sends DatasourceNoData / DatasourceError with the rule's labels (the retrain label
    too), and Alerting or KeepLast fire the rule itself without a measurement: a retrain rule
    maps both to OK."""
    assert (rule["noDataState"], rule["execErrState"]) == (CANNOT_FIRE, CANNOT_FIRE)


@pytest.mark.parametrize("rule", [r for r in grafana_rules() if not retrains(r)], ids=by_title)
def test_a_failing_query_reaches_a_person(rule: dict[str, Any]) -> None:
    """With the retrain rule silent on errors, the person-facing rules report a Prometheus
    Grafana cannot query (a DatasourceError alert, routed to the person)."""
    assert rule["execErrState"] == "Error"


@pytest.mark.parametrize("rule", grafana_rules(), ids=by_title)
def test_each_rule_is_the_prometheus_alert_of_the_same_name(rule: dict[str, Any]) -> None:
    """Same signal, comparison, threshold, pending period and labels as
    ``infra/prometheus/rules/alerts.yml``: one set of alerts, whichever server evaluates it."""
    prometheus = prometheus_alerts()[rule["title"]]
    by_ref = {query["refId"]: query for query in rule["data"]}
    threshold = by_ref[rule["condition"]]["model"]
    signal = by_ref[threshold["expression"]]["model"]["expr"]
    evaluator = threshold["conditions"][0]["evaluator"]
    [bound] = evaluator["params"]
    operator = PROMQL_OPERATORS[evaluator["type"]]
    written = f"{signal} {operator} {bound:g}"
    expected = prometheus["expr"].strip()
    # `x == 0` and `x < 1` are the same test on a 0/1 series.
    if signal.endswith(":bool") and (operator, bound) == ("<", 1):
        written = f"{signal} == 0"
    assert written == expected
    assert seconds(rule["for"]) == seconds(prometheus.get("for", "0s"))
    assert rule["labels"] == prometheus["labels"]


def test_every_prometheus_alert_has_its_grafana_rule() -> None:
    assert sorted(map(by_title, grafana_rules())) == sorted(prometheus_alerts())


def test_contact_points_are_well_formed_and_name_every_policy_receiver() -> None:
    points = contact_points()
    for name, point in points.items():
        assert set(point) <= CONTACT_POINT_KEYS, name
        for receiver in point["receivers"]:
            assert set(receiver) <= RECEIVER_KEYS, name
            assert SHORT_UID.fullmatch(receiver["uid"]), receiver["uid"]
            assert receiver["type"] == "webhook"
            assert set(receiver["settings"]) <= WEBHOOK_SETTINGS, name
            assert receiver["settings"]["url"]
    receivers = {
        route["receiver"]
        for route in [policy(), *policy().get("routes", [])]
        if "receiver" in route
    }
    assert receivers <= set(points)


def test_the_gateway_contact_point_posts_to_the_gateway_with_its_secret_from_the_environment(
    settings: Settings,
) -> None:
    """Interpolated as Grafana does, the URL is the gateway's Grafana route and the Bearer token
    its webhook secret; the file itself holds neither an address nor a secret."""
    [receiver] = contact_points()["lakeloop-gateway"]["receivers"]
    raw = receiver["settings"]
    read = {key: interpolated(str(value), ENVIRONMENT) for key, value in raw.items()}
    gateway_url = ENVIRONMENT["LAKELOOP_GATEWAY__PUBLIC_URL"]
    assert read["url"] == gateway_url + GATEWAY_ROUTE
    assert read["httpMethod"] == "POST"
    assert read["authorization_scheme"] == "Bearer"
    assert read["authorization_credentials"] == ENVIRONMENT["LAKELOOP_GATEWAY__WEBHOOK_SECRET"]
    assert raw["authorization_credentials"] == "${LAKELOOP_GATEWAY__WEBHOOK_SECRET}"
    assert receiver["disableResolveMessage"] is True  # the gateway ignores resolved alerts
    # The route exists on the gateway the settings build.
    app = create_gateway(
        load_settings(state_dir=settings.state_dir, gateway={"webhook_secret": "x" * 32})
    )
    assert GATEWAY_ROUTE in {route.path for route in app.routes}


def test_interpolated_fields_name_only_variables_the_compose_grafana_gets() -> None:
    """Every ``$`` in a field Grafana interpolates (labels, contact point settings, policies)
    is one of the two variables above; anything else would be replaced by an empty string."""
    text = yaml.safe_dump([contact_points(), policy(), [r.get("labels") for r in grafana_rules()]])
    named = set(re.findall(r"\$\{?(\w+)", text.replace("$$", "")))
    assert named == set(ENVIRONMENT)


def alertmanager_config(tree: dict[str, Any], receivers: list[str]) -> dict[str, Any]:
    """The Grafana policy tree as an Alertmanager configuration: the same route fields, Grafana's
    ``object_matchers`` written as Alertmanager matchers, each contact point a receiver."""

    def route(node: dict[str, Any]) -> dict[str, Any]:
        converted = {
            key: value
            for key, value in node.items()
            if key not in {"orgId", "object_matchers", "routes"}
        }
        matchers = [
            f'{name}{operator}"{value}"'
            for name, operator, value in node.get("object_matchers", [])
        ]
        if matchers:
            converted["matchers"] = matchers
        if node.get("routes"):
            converted["routes"] = [route(child) for child in node["routes"]]
        return converted

    return {"route": route(tree), "receivers": [{"name": name} for name in receivers]}


def routed(config: Path, labels: dict[str, str]) -> str:
    answer = subprocess.run(
        [
            binary("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={config}",
            *(f"{name}={value}" for name, value in labels.items()),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert answer.returncode == 0, answer.stdout + answer.stderr
    return answer.stdout.strip()


def firing_labels() -> list[tuple[str, dict[str, str], str]]:
    """(case, labels Grafana sends, the contact point it must reach): each rule firing, and the
    retrain rule's no-data and error alerts (``compat.go``: its labels, alertname replaced)."""
    cases = []
    for group in groups():
        for rule in group["rules"]:
            labels = {
                "alertname": rule["title"],
                "grafana_folder": group["folder"],
                **rule["labels"],
            }
            cases.append(
                (rule["title"], labels, "lakeloop-gateway" if retrains(rule) else "person")
            )
            if retrains(rule):
                for name in sorted(NOTHING_MEASURED_ALERTS):
                    renamed = labels | {"alertname": name, "rulename": rule["title"]}
                    cases.append((f"{rule['title']} {name}", renamed, "person"))
    return cases


ROUTING_CASES = firing_labels()


@pytest.mark.parametrize(
    ("case", "labels", "expected"), ROUTING_CASES, ids=[case for case, _, _ in ROUTING_CASES]
)
def test_the_policy_sends_only_retrain_alerts_to_the_gateway(
    tmp_path: Path, case: str, labels: dict[str, str], expected: str
) -> None:
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(policy(), sorted(contact_points()))))
    assert routed(config, labels) == expected, case
