"""The committed Prometheus configuration, rules and dashboards against a real Prometheus.

One Prometheus (Debian's binary, configured from ``infra/prometheus/prometheus.yml`` with the
targets pointed here) scrapes the real API process serving a real MLflow champion, and a real
Pushgateway that receives validation and training results through ``lakeloop.pushmetrics`` and
drift numbers through the monitor step. Then every expression a dashboard panel, a recording
rule or an alert reads must parse and return data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from lakeloop import pushmetrics
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.loop import feedback_headers
from lakeloop.model import TrainedModel
from lakeloop.settings import DriftPolicy, load_settings
from lakeloop.stores.objects import ObjectStore
from monitoring.check import check_window
from monitoring.history import Window
from tests.utils.api_server import start_api_with_champion
from tests.utils.net import free_port
from tests.utils.prometheus import (
    PROMETHEUS_DIR,
    PrometheusClient,
    config_for,
    poll,
    prometheus_on,
    pushgateway_service,
    running,
)
from tooling import market
from tooling.stack import Stack

pytestmark = pytest.mark.integration

DASHBOARDS = Path(__file__).resolve().parents[2] / "monitoring" / "grafana" / "dashboards"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
CHAMPION = "1"  # the first version registered is the champion the API serves
# Grafana's own variables, as a panel over the last hour would see them.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
COMPARISON = re.compile(r"^(?P<signal>.+?)\s*(?:>|<|==|!=|>=|<=)\s*-?[0-9.]+$", re.DOTALL)


@dataclass
class Observed:
    prometheus: PrometheusClient
    pushgateway: str
    api: str
    feedback_headers: dict[str, str]
    """The local client's token, which feedback needs."""


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def substitute(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with ``$name`` and ``${name}`` replaced; an unknown variable is a KeyError."""
    return re.sub(r"\$\{?(\w+)\}?", lambda match: variables[match[1]], expr)


def panel_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, Grafana variables substituted: a multi-value
    variable by its "All" value, Grafana's own by what a one-hour panel would use."""
    found = []
    for name, board in dashboards().items():
        variables = GRAFANA_VARIABLES | {
            variable["name"]: variable.get("allValue", ".*")
            for variable in board["templating"]["list"]
        }
        for panel in board["panels"]:
            for target in panel["targets"]:
                where = f"{name}: {panel['title']} [{target['refId']}]"
                found.append((where, substitute(target["expr"], variables)))
    return found


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def rule_expressions() -> list[tuple[str, str]]:
    """Each recording rule's expression; each alert's own expression and the signal it
    compares with its threshold (a healthy system does not fire, but the signal exists)."""
    found = []
    for rule in rules():
        if "record" in rule:
            found.append((rule["record"], rule["expr"]))
            continue
        signal = COMPARISON.match(rule["expr"].strip())
        assert signal, f"alert {rule['alert']} is not `<signal> <op> <threshold>`"
        found.append((f"{rule['alert']} signal", signal["signal"]))
    return found


def grafana_alert_expressions() -> list[tuple[str, str]]:
    """The PromQL of every Grafana alert rule's Prometheus query (its threshold is a Grafana
    expression; the signal it compares must exist)."""
    alerting = DASHBOARDS.parent / "provisioning" / "alerting"
    return [
        (f"grafana {rule['title']} [{query['refId']}]", query["model"]["expr"])
        for path in sorted(alerting.glob("*.yml"))
        for group in yaml.safe_load(path.read_text()).get("groups", [])
        for rule in group["rules"]
        for query in rule["data"]
        if "expr" in query["model"]
    ]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    folder = tmp_path_factory.mktemp("observability")
    settings = load_settings(
        state_dir=folder / "state", mlflow={"port": free_port()}, api={"port": free_port()}
    )
    with ExitStack() as cleanup:
        gateway = cleanup.enter_context(running(pushgateway_service(), state_dir=folder / "pg"))
        stack = Stack(settings)
        cleanup.callback(stack.down)
        env = {
            "LAKELOOP_API__PORT": str(settings.api.port),
            "LAKELOOP_MLFLOW__PORT": str(settings.mlflow.port),
            "LAKELOOP_API__LOG_FLUSH_SECONDS": "1",
        }
        api = start_api_with_champion(stack, load_spec(), env=env)
        config = config_for(
            api=api.removeprefix("http://"), pushgateway=gateway.removeprefix("http://")
        )
        prometheus = cleanup.enter_context(prometheus_on(config, folder=folder))
        yield Observed(PrometheusClient(prometheus), gateway, api, feedback_headers(settings))


def _records(frame: pd.DataFrame, spec: DatasetSpec) -> list[dict[str, Any]]:
    rows = frame[spec.feature_names]
    records: list[dict[str, Any]] = (
        rows.astype(object).where(rows.notna(), None).to_dict(orient="records")
    )
    return records


def send_traffic(api: str, spec: DatasetSpec, feedback_headers: dict[str, str]) -> None:
    """Good single and batch predictions, feedback, and every kind of bad request."""
    records = _records(market.generate_batch(rows=40, seed=3), spec)
    with httpx.Client(base_url=api, timeout=30) as http:
        for record in records[:20]:
            answer = http.post("/v1/predict", json=record)
            assert answer.status_code == 200
        assert http.post("/v1/predict/batch", json={"records": records}).status_code == 200
        feedback = {"prediction_id": answer.json()["prediction_id"], "actual": 250_000.0}
        reported = http.post("/v1/feedback", json=feedback, headers=feedback_headers)
        assert reported.status_code == 202
        bad = [
            http.post("/v1/predict", json=records[0] | {"median_income": "lots"}),
            http.post("/v1/predict", content=b"{not json"),
            http.post("/v1/admin/reload"),
            http.post("/v1/predict/batch", json={"records": records * 26}),  # over 1,000
        ]
        assert [response.status_code for response in bad] == [422, 400, 401, 413]


def push_batch_results(gateway: str, spec: DatasetSpec) -> None:
    """What the flows push: a refused batch, then an accepted one; a model not promoted, then
    one promoted; a window of reported prices folded, then one held back."""
    for commit, success in (("a" * 64, False), ("b" * 64, True)):
        assert pushmetrics.push_validation(
            gateway,
            dataset=spec.name,
            commit_id=commit,
            success=success,
            failed_expectations=0 if success else 2,
            rows=2000,
        )
    for version, promoted, trigger in (("1", True, "commit"), ("2", False, "drift")):
        assert pushmetrics.push_training(
            gateway,
            model_name="housing-price",
            version=version,
            metrics={"mae": 31_000.0, "rmse": 45_000.0, "r2": 0.8},
            promoted=promoted,
            trigger=trigger,
        )
    for folded, factor in ((True, 0.9), (False, 1.5)):
        assert pushmetrics.push_feedback_check(
            gateway, model_name="housing-price", folded=folded, factor=factor
        )


def push_drift(
    gateway: str, spec: DatasetSpec, model: TrainedModel, reference: pd.DataFrame, folder: Path
) -> None:
    """One monitor step on a window from a new region (it drifts), with feedback prices."""
    current = market.generate_batch(
        rows=1000, seed=9, scenario=market.Scenario(new_region_share=0.5)
    )
    current = current.assign(prediction=model.pipeline.predict(current[spec.feature_names]))
    result = check_window(
        current=current,
        reference=reference.assign(
            prediction=model.pipeline.predict(reference[spec.feature_names])
        ),
        spec=spec,
        window=Window(id="observability", rows=len(current)),
        champion_version=CHAMPION,
        model_name="housing-price",
        store=ObjectStore.folder(folder),
        now=datetime.now(UTC),
        policy=DriftPolicy(),
        # The champion's holdout as the monitor pipeline passes it (pipelines.monitor).
        baseline_quality={name: model.metrics[name] for name in ("mae", "rmse")},
        pushgateway_url=gateway,
    )
    assert result.entry.drift.drift_share > 0.3  # what the drift alert below must see


@pytest.fixture(scope="module")
def loaded(
    observed: Observed,
    spec: DatasetSpec,
    tiny_model: TrainedModel,
    market_batch: pd.DataFrame,
    tmp_path_factory: pytest.TempPathFactory,
) -> Observed:
    """Traffic and batch results sent, both targets scraped at least once."""
    send_traffic(observed.api, spec, observed.feedback_headers)
    push_batch_results(observed.pushgateway, spec)
    push_drift(
        observed.pushgateway,
        spec,
        tiny_model,
        market_batch,
        tmp_path_factory.mktemp("monitor"),
    )
    poll(
        lambda: (
            all(t["health"] == "up" for t in observed.prometheus.targets())
            and len(observed.prometheus.targets()) == 2
        ),
        what="both scrape targets up",
    )
    # The same traffic again once Prometheus holds the first round's counters: increase() and
    # rate() measure from a series' first sample (the API's seeded zeros are one only for the
    # statuses it knows beforehand), and the prediction error ratio needs 10 requests in
    # 5 minutes, counted.
    poll(
        lambda: observed.prometheus.query(
            'lakeloop_api_requests_total{endpoint="/v1/predict",status="200"} > 0'
        ),
        what="the first round of predictions scraped",
    )
    send_traffic(observed.api, spec, observed.feedback_headers)
    return observed


@pytest.mark.parametrize(
    ("where", "expr"), panel_expressions() + rule_expressions() + grafana_alert_expressions()
)
def test_expression_returns_data(loaded: Observed, where: str, expr: str) -> None:
    result = poll(lambda: loaded.prometheus.query(expr), what=f"{where}: `{expr}` returning data")
    assert all("value" in sample for sample in result)


def test_every_rule_evaluates_without_error(loaded: Observed) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        found = loaded.prometheus.rules()
        # Before its first evaluation a rule reports Go's zero time.
        return None if any(r["lastEvaluation"].startswith("0001") for r in found) else found

    found = poll(evaluated, what="every rule evaluated once")
    assert {rule["name"] for rule in found} == {
        rule.get("record") or rule["alert"] for rule in rules()
    }
    assert [(rule["name"], rule.get("lastError")) for rule in found if rule["health"] != "ok"] == []


def test_drift_alert_fires_for_the_served_champion(loaded: Observed) -> None:
    def firing() -> list[dict[str, Any]]:
        return [
            alert
            for alert in loaded.prometheus.alerts()
            if alert["labels"]["alertname"] == "LakeloopDriftAboveThreshold"
            and alert["state"] == "firing"
        ]

    [alert] = poll(firing, what="the drift alert firing")
    assert alert["labels"]["model_version"] == CHAMPION
    assert alert["labels"]["lakeloop_action"] == "retrain"
    # "Nothing else fires" once every rule, recording rules included, was evaluated again after
    # the alert was seen: an alert this data would start has had its turn by then.
    seen = datetime.now(UTC)
    poll(
        lambda: all(_evaluated_at(rule) > seen for rule in loaded.prometheus.rules()),
        what="every rule evaluated again after the drift alert fired",
    )
    quiet = {a["labels"]["alertname"] for a in loaded.prometheus.alerts()} - {
        "LakeloopDriftAboveThreshold"
    }
    assert quiet == set()  # a healthy API fires nothing else


def _evaluated_at(rule: dict[str, Any]) -> datetime:
    """When Prometheus last evaluated ``rule`` (RFC 3339, nanoseconds cut to microseconds)."""
    return datetime.fromisoformat(rule["lastEvaluation"])


def test_counts_are_kept_across_pushes(loaded: Observed) -> None:
    runs = loaded.prometheus.query(
        'lakeloop_training_runs_total{job="lakeloop_training",model_name="housing-price"}'
    )
    counted = {(s["metric"]["trigger"], s["metric"]["promoted"]): s["value"][1] for s in runs}
    happened = {key: count for key, count in counted.items() if count != "0"}
    assert happened == {("commit", "true"): "1", ("drift", "false"): "1"}
    # Every other combination is there at zero, so its first run will count.
    assert len(counted) == len(pushmetrics.TRAINING_TRIGGERS) * 2
    validation = loaded.prometheus.query("lakeloop_validation_runs_total")
    assert {s["metric"]["outcome"]: s["value"][1] for s in validation} == {
        "failed": "1",
        "passed": "1",
    }
    [promoted_at] = loaded.prometheus.query("lakeloop_training_last_promotion_timestamp_seconds")
    [trained_at] = loaded.prometheus.query("lakeloop_training_last_run_timestamp_seconds")
    assert float(promoted_at["value"][1]) <= float(trained_at["value"][1])
