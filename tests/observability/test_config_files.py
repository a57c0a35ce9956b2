"""The committed Prometheus, Alertmanager and Grafana files, checked without servers: promtool's
and amtool's own checks (the alerts' unit tests, the route each alert takes), and what every
dashboard panel must have."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from typing import Any

import pytest
import yaml

from lakeloop import grafana
from tests.utils.prometheus import PROMETHEUS_CONFIG, PROMETHEUS_DIR, binary

GRAFANA_DIR = PROMETHEUS_DIR.parents[1] / "monitoring" / "grafana"
BUILTIN = "grafana"  # Grafana's own annotation datasource type
PROMETHEUS_VARIABLE = {"type": "prometheus", "uid": "${datasource}"}
LABEL_VALUES = re.compile(r"label_values\(lakeloop_\w+(\{[^}]*\})?, \w+\)")
ALERTMANAGER_DIR = PROMETHEUS_DIR.parent / "alertmanager"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, cwd=PROMETHEUS_DIR, check=False
    )


def test_promtool_accepts_the_config() -> None:
    checked = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_accepts_the_rules() -> None:
    files = sorted(str(path) for path in (PROMETHEUS_DIR / "rules").glob("*.yml"))
    assert len(files) == 2
    checked = promtool("check", "rules", *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alerts_fire_on_their_unit_test_series() -> None:
    tested = promtool("test", "rules", "tests/alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS_DIR / "rules" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    tests = yaml.safe_load((PROMETHEUS_DIR / "tests" / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == alerts


OBSERVABILITY_GUIDE = PROMETHEUS_DIR.parents[1] / "docs" / "observability.md"


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces as '-'."""
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    }


def _every_alert() -> list[tuple[str, dict[str, Any]]]:
    """(where, rule) of every Prometheus alert and every Grafana alert rule."""
    prometheus = yaml.safe_load((PROMETHEUS_DIR / "rules" / "alerts.yml").read_text())
    grafana_rules = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "alerting" / "lakeloop.yml").read_text()
    )
    return [
        *(
            (f"prometheus:{rule['alert']}", rule)
            for g in prometheus["groups"]
            for rule in g["rules"]
        ),
        *(
            (f"grafana:{rule['title']}", rule)
            for g in grafana_rules["groups"]
            for rule in g["rules"]
        ),
    ]


@pytest.mark.parametrize(("where", "rule"), _every_alert(), ids=[w for w, _ in _every_alert()])
def test_every_alert_says_how_bad_what_and_where_its_runbook_is(
    where: str, rule: dict[str, Any]
) -> None:
    """On-call reads the severity, the summary and the runbook link of whatever wakes them: the
    link must land on a section of docs/observability.md that exists."""
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"].strip()
    guide, _, anchor = rule["annotations"]["runbook_url"].partition("#")
    assert guide == "docs/observability.md"
    assert anchor in _anchors(OBSERVABILITY_GUIDE.read_text())


def provisioned_datasource_uid() -> str:
    provisioned = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    [source] = provisioned["datasources"]
    return str(source["uid"])


def test_dashboard_provider_puts_them_in_the_lakeloop_folder() -> None:
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "lakeloop.yml").read_text()
    )
    [lakeloop] = provider["providers"]
    assert (lakeloop["folder"], lakeloop["folderUid"]) == (grafana.FOLDER_TITLE, grafana.FOLDER_UID)
    files = sorted(path.stem for path in (GRAFANA_DIR / "dashboards").glob("*.json"))
    assert files == sorted(grafana.DASHBOARDS)


def dashboard_variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


@pytest.mark.parametrize("name", grafana.DASHBOARDS)
def test_every_panel_has_an_id_title_unit_and_the_one_datasource(name: str) -> None:
    """The one datasource is the dashboard's ``datasource`` variable, a Prometheus picker that
    starts on the provisioned one: every panel, target and query variable reads it, so
    switching it switches the whole dashboard and nothing stays on another source."""
    board = grafana.dashboard(name)
    uid = provisioned_datasource_uid()
    panels: list[dict[str, Any]] = board["panels"]
    ids = Counter(panel["id"] for panel in panels)
    assert [panel_id for panel_id, count in ids.items() if count > 1] == []
    for panel in panels:
        where = f"{name}: panel {panel['id']}"
        assert panel["title"].strip(), where
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        assert unit not in {"", "none"}, f"{where} ({panel['title']}) has no unit"
        assert panel["datasource"] == PROMETHEUS_VARIABLE, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == PROMETHEUS_VARIABLE, where
            assert target["expr"].strip(), where
    variables = dashboard_variables(board)
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    assert source["current"]["value"] == uid
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == PROMETHEUS_VARIABLE, variable["name"]
    assert len({board["uid"] for board in map(grafana.dashboard, grafana.DASHBOARDS)}) == 3


@pytest.mark.parametrize("name", grafana.DASHBOARDS)
def test_every_dashboard_chooses_model_and_instance(name: str) -> None:
    """``model`` (served version) and ``instance`` (API replica) on every dashboard, each from
    the label values of a lakeloop series, several at once or All, and read by the panels
    (``instance`` also through the versions ``model`` offers)."""
    board = grafana.dashboard(name)
    variables = dashboard_variables(board)
    expressions = " ".join(
        target["expr"] for panel in board["panels"] for target in panel["targets"]
    )
    for variable_name in ("model", "instance"):
        variable = variables[variable_name]
        assert variable["type"] == "query", variable_name
        assert variable["multi"] is variable["includeAll"] is True, variable_name
        assert LABEL_VALUES.fullmatch(variable["query"]["query"]), variable_name
    assert '=~"$model"' in expressions, f"{name}: no panel reads $model"
    assert '=~"$instance"' in expressions + variables["model"]["query"]["query"], name


@pytest.mark.parametrize("name", grafana.DASHBOARDS)
def test_dashboard_links_keep_time_and_variables(name: str) -> None:
    links = grafana.dashboard(name)["links"]
    assert links
    for link in links:
        assert (link["keepTime"], link["includeVars"]) == (True, True), link["title"]
    # Passed on by name: the variables mean the same on every dashboard.
    shared = [
        {key: variable.get(key) for key in ("type", "query", "allValue")}
        for variable in (
            dashboard_variables(grafana.dashboard(board))[variable_name]
            for board in grafana.DASHBOARDS
            for variable_name in ("datasource", "model", "instance")
        )
    ]
    assert len({repr(item) for item in shared}) == 3


@pytest.mark.parametrize("name", grafana.DASHBOARDS)
def test_every_stat_panel_queries_the_present_instant(name: str) -> None:
    # A range query reduced with lastNotNull keeps a series that ended inside the time range:
    # right after a promotion the stat would show the old version beside the new one.
    stats = [panel for panel in grafana.dashboard(name)["panels"] if panel["type"] == "stat"]
    assert stats, f"{name} has no stat panel"
    for panel in stats:
        for target in panel["targets"]:
            where = f"{name}: {panel['title']} ({target['refId']})"
            assert (target.get("instant"), target.get("range")) == (True, False), where


@pytest.mark.parametrize("name", grafana.DASHBOARDS)
def test_dashboards_show_lakeloop_annotations_by_tag(name: str) -> None:
    queries = [
        annotation["target"]
        for annotation in grafana.dashboard(name)["annotations"]["list"]
        if annotation["datasource"]["type"] == BUILTIN and "target" in annotation
    ]
    shown = {tuple(query["tags"]) for query in queries if query["type"] == "tags"}
    assert shown == {
        (grafana.TAG, grafana.MERGE),
        (grafana.TAG, grafana.PROMOTION),
        (grafana.TAG, grafana.DRIFT),
    }
    assert all(query["matchAny"] is False for query in queries)  # both tags, not either


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("amtool"), *args], capture_output=True, text=True, cwd=ALERTMANAGER_DIR, check=False
    )


@pytest.mark.parametrize("name", ["alertmanager.yml", "alertmanager.compose.yml"])
def test_amtool_accepts_the_alertmanager_config(name: str) -> None:
    checked = amtool("check-config", name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "2 receivers" in checked.stdout


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for group in yaml.safe_load((PROMETHEUS_DIR / "rules" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_each_alert_is_routed_to_the_gateway_only_when_it_asks_for_a_retrain(
    rule: dict[str, Any],
) -> None:
    """Alertmanager's own routing (``amtool config routes test``) on each alert's labels: the
    retrain ones reach the gateway, every other one the person's receiver."""
    labels = {"alertname": rule["alert"], **rule.get("labels", {})}
    expected = "lakeloop-gateway" if labels.get("lakeloop_action") == "retrain" else "person"
    routed = amtool(
        "config",
        "routes",
        "test",
        "--config.file=alertmanager.yml",
        f"--verify.receivers={expected}",
        *(f"{name}={value}" for name, value in labels.items()),
    )
    assert routed.returncode == 0, routed.stdout + routed.stderr
    assert routed.stdout.split() == [expected]


def test_the_gateway_receiver_posts_to_the_gateway_with_the_bearer_secret_from_a_file() -> None:
    """The receiver speaks to the gateway's Alertmanager route with the credentials the gateway
    checks; no secret is written in the file, and resolved alerts (ignored there) are not sent."""
    config = yaml.safe_load((ALERTMANAGER_DIR / "alertmanager.yml").read_text())
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    [webhook] = receivers["lakeloop-gateway"]["webhook_configs"]
    assert webhook["url"].endswith("/alerts/alertmanager")
    assert webhook["send_resolved"] is False
    assert webhook["http_config"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "webhook_secret",
    }
    assert "credentials:" not in (ALERTMANAGER_DIR / "alertmanager.yml").read_text()
    assert config["route"]["group_by"] == ["alertname"]
