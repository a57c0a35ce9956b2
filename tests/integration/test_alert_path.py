"""The alert path with the real programs: Prometheus evaluates lakeloop's own drift rule
(``infra/prometheus/rules/alerts.yml``) on what the monitor pushes to a Pushgateway, sends the
firing alert to Alertmanager running ``infra/alertmanager/alertmanager.yml``, which routes it to
the gateway's ``POST /alerts/alertmanager`` (the Bearer secret read from a file), which relays it
to a real Prefect server as ``lakeloop.alert.fired``, whose event matches the retrain
deployment's trigger. A second rule, with no ``lakeloop_action`` label, goes the other way: to
the person's receiver, here a small inbox on loopback.

Only the timings and addresses of the committed files change: rules every second, Alertmanager
grouping after 1 s and repeating a firing group every 2 s, so the repeat the gateway must not turn
into a second retrain comes within the test. The champion the drift rule joins on
(``lakeloop_api_model_info``) is pushed to the Pushgateway instead of served by an API: which
process exposes it does not matter to the rule.

"Once" is asserted as ``test_events_real_prefect`` asserts it: the copies of the alert's event
Prefect *publishes* (one copy, one trigger evaluation, one run) are counted on its outbound
stream up to a marker sent after the repeats were relayed, then the one run is awaited.

The tests share one stack and run in file order: the last one resolves the drift and brings it
back, which is a new firing (a new ``startsAt``), a new event and a second retrain.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from litestar import Litestar, post
from prometheus_client import CollectorRegistry, Gauge

from gateway.app import ANY_TIME
from lakeloop.pushmetrics import replace_group
from monitoring.parse import ColumnDrift, DriftSummary
from monitoring.store import metrics_registry, push_metrics
from tests.utils.net import free_port, serve_in_thread
from tests.utils.prefect_events import EventStream, event_stream
from tests.utils.prefect_server import (
    POLL_SECONDS,
    PREFECT_DEADLINE_SECONDS,
    RETRAIN,
    SECRET,
    PrefectServer,
    gateway_app,
    triggered_prefect,
)
from tests.utils.prometheus import (
    PROMETHEUS_DEADLINE_SECONDS,
    PROMETHEUS_DIR,
    alertmanager_service,
    binary,
    config_for,
    prometheus_on,
    pushgateway_service,
    running,
)
from tests.utils.waiting import eventually, eventually_value

pytestmark = pytest.mark.integration

ALERTMANAGER_CONFIG = PROMETHEUS_DIR.parent / "alertmanager" / "alertmanager.yml"
ALERT_FIRED = "lakeloop.alert.fired"
DRIFT_ALERT = "LakeloopDriftAboveThreshold"
PERSON_ALERT = "LakeloopAlertPathCheck"
"""A rule of this test only, labelled for no action, so it is a person's: it fires on a series
the test pushes (``PERSON_SERIES``)."""
PERSON_SERIES = "lakeloop_alert_path_check"
CHAMPION = "3"
GATEWAY_RECEIVER = "lakeloop-gateway"
REPEATS = 2
"""Notifications of the firing drift group the gateway must have had (the first, then a
repeat) before the count is taken."""


@dataclass
class Inbox:
    """The person's receiver: an Alertmanager webhook that keeps each notification."""

    notifications: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Litestar:
        @post("/lakeloop-alerts", status_code=200)
        async def receive(data: dict[str, Any]) -> None:
            with self.lock:
                self.notifications.append(data)

        return Litestar(route_handlers=[receive])

    def alert_names(self) -> set[str]:
        with self.lock:
            return {
                alert["labels"]["alertname"]
                for notification in self.notifications
                for alert in notification["alerts"]
            }


class Relays(logging.Handler):
    """The gateway's own log of each alert it relayed: ``(alert name, event id)`` per relay."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.relayed: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("relayed alert ") and isinstance(record.args, tuple):
            name, _fingerprint, _resource, event_id, _outcome = record.args
            self.relayed.append((str(name), str(event_id)))

    def ids_of(self, alertname: str) -> list[str]:
        return [event_id for name, event_id in list(self.relayed) if name == alertname]


@dataclass
class AlertPath:
    prefect: PrefectServer
    gateway: str
    alertmanager: str
    pushgateway: str
    inbox: Inbox
    relays: Relays
    stream: EventStream


def alertmanager_config(*, gateway: str, inbox: str, secret_file: Path) -> dict[str, Any]:
    """The committed Alertmanager configuration pointed at this test's gateway and inbox, its
    secret in ``secret_file``, grouping after 1 s and repeating a firing group every 2 s."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    timings = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "2s"}
    config["route"] |= timings
    for route in config["route"]["routes"]:
        route.update(timings)
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    [to_gateway] = receivers[GATEWAY_RECEIVER]["webhook_configs"]
    to_gateway["url"] = f"{gateway}/alerts/alertmanager"
    to_gateway["http_config"]["authorization"]["credentials_file"] = str(secret_file)
    [to_person] = receivers["person"]["webhook_configs"]
    to_person["url"] = f"{inbox}/lakeloop-alerts"
    return config


def person_rule_file(folder: Path) -> Path:
    path = folder / "person.yml"
    rule = {"alert": PERSON_ALERT, "expr": f"{PERSON_SERIES} > 0", "labels": {"severity": "info"}}
    path.write_text(yaml.safe_dump({"groups": [{"name": "alert_path_test", "rules": [rule]}]}))
    return path


def push_champion_drift(pushgateway: str, *, drifted: bool = True) -> None:
    """What the monitor pushes for a window of champion v3 (its own registry and group), two of
    three features drifted or none, and the champion the API would report as served."""
    features = ["longitude", "latitude", "median_income"]
    moved = features[:2] if drifted else []
    drift = DriftSummary(
        drift_share=len(moved) / len(features),
        drifted_features=moved,
        per_feature={
            name: ColumnDrift(
                score=0.4 if name in moved else 0.02,
                method="Wasserstein distance (normed)",
                threshold=0.1,
                drifted=name in moved,
            )
            for name in features
        },
        prediction=None,
        dataset_drift=drifted,
        rows_current=600,
        rows_reference=20_000,
    )
    registry = metrics_registry(drift=drift, quality=None, decision=None, now=datetime.now(UTC))
    push_metrics(pushgateway, registry, champion_version=CHAMPION)
    served = CollectorRegistry()
    Gauge("lakeloop_api_model_info", "Served model.", ["model_version"], registry=served).labels(
        model_version=CHAMPION
    ).set(1)
    replace_group(pushgateway, served, job="lakeloop_api", grouping_key={"instance": "api"})


def push_person_alert(pushgateway: str) -> None:
    """The series the person's rule fires on."""
    registry = CollectorRegistry()
    Gauge(PERSON_SERIES, "Fires the person's test alert.", registry=registry).set(1)
    replace_group(pushgateway, registry, job="alert_path_test", grouping_key={})


def wait_until_prometheus_knows_alertmanager(prometheus: str, alertmanager: str) -> None:
    """Prometheus drops an alert it has no Alertmanager for yet, and sends it again only after
    its resend delay (1 min): its notifier learns even a static target a few seconds after the
    start. No alert may fire before ``/api/v1/alertmanagers`` lists ours."""

    def known() -> bool:
        answer = httpx.get(f"{prometheus}/api/v1/alertmanagers", timeout=10.0).json()
        urls = [entry["url"] for entry in answer["data"]["activeAlertmanagers"]]
        return any(url.startswith(alertmanager) for url in urls)

    eventually(known, what=f"Prometheus sending alerts to {alertmanager}", interval=POLL_SECONDS)


def stored_alert_events(prefect_api: str, alertname: str) -> list[dict[str, Any]]:
    """The ``lakeloop.alert.fired`` events in Prefect's store that Alertmanager's gateway
    receiver brought for this alert (the warm-up's event, sent directly, is not one)."""
    response = httpx.post(
        f"{prefect_api}/events/filter",
        json={
            "filter": {
                "event": {"name": [ALERT_FIRED]},
                "occurred": ANY_TIME,
            },
            "limit": 50,
        },
        timeout=30.0,
    )
    response.raise_for_status()
    return [
        event
        for event in response.json()["events"]
        if event["payload"]["alertname"] == alertname
        and event["payload"]["receiver"] == GATEWAY_RECEIVER
    ]


@pytest.fixture(scope="module")
def alert_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertPath]:
    for name in ("prometheus", "prometheus-pushgateway", "prometheus-alertmanager"):
        binary(name)  # skip, naming its Debian package, before anything starts
    folder = tmp_path_factory.mktemp("alert-path")
    relays = Relays()
    gateway_logger = logging.getLogger("gateway.app")
    level = gateway_logger.level
    with ExitStack() as cleanup:
        prefect = cleanup.enter_context(triggered_prefect(folder / "state"))
        gateway_logger.addHandler(relays)
        gateway_logger.setLevel(logging.INFO)
        cleanup.callback(gateway_logger.setLevel, level)
        cleanup.callback(gateway_logger.removeHandler, relays)
        gateway = cleanup.enter_context(
            serve_in_thread(gateway_app(prefect.settings, folder / "spool"))
        )
        inbox = Inbox()
        inbox_url = cleanup.enter_context(serve_in_thread(inbox.app()))
        stream = cleanup.enter_context(event_stream(prefect.api, [], event_names=[ALERT_FIRED]))

        secret_file = folder / "webhook_secret"
        secret_file.write_text(SECRET)
        secret_file.chmod(0o600)
        am_config = folder / "alertmanager.yml"
        am_config.write_text(
            yaml.safe_dump(
                alertmanager_config(gateway=gateway, inbox=inbox_url, secret_file=secret_file)
            )
        )
        alertmanager = cleanup.enter_context(
            running(
                alertmanager_service(am_config, data_dir=folder / "am-data"),
                state_dir=folder / "am",
            )
        )
        pushgateway = cleanup.enter_context(running(pushgateway_service(), state_dir=folder / "pg"))
        config = config_for(
            api=f"127.0.0.1:{free_port()}",  # no API: the champion is on the Pushgateway
            pushgateway=pushgateway.removeprefix("http://"),
            alertmanager=alertmanager.removeprefix("http://"),
        )
        config["rule_files"].append(str(person_rule_file(folder)))
        prometheus = cleanup.enter_context(prometheus_on(config, folder=folder))
        wait_until_prometheus_knows_alertmanager(prometheus, alertmanager)
        push_champion_drift(pushgateway)
        push_person_alert(pushgateway)
        yield AlertPath(prefect, gateway, alertmanager, pushgateway, inbox, relays, stream)


@pytest.fixture(scope="module")
def repeated(alert_path: AlertPath) -> str:
    """The drift alert's event id, once the gateway relayed it from a first notification and a
    repeat and Prefect has everything the gateway accepted, with a marker on the stream after."""

    def relayed_with_repeats() -> list[str] | None:
        ids = alert_path.relays.ids_of(DRIFT_ALERT)
        return ids if len(ids) >= REPEATS else None

    def drained() -> bool:
        health = httpx.get(f"{alert_path.gateway}/healthz", timeout=10.0).json()
        return (health["pending_events"], health["unconfirmed_events"]) == (0, 0)

    event_ids = eventually_value(
        relayed_with_repeats,
        what=f"{REPEATS} notifications of {DRIFT_ALERT} relayed by the gateway",
        timeout=PROMETHEUS_DEADLINE_SECONDS,
        interval=POLL_SECONDS,
    )
    assert len(set(event_ids)) == 1, event_ids  # the repeat is the same event
    eventually(
        drained,
        what="every event the gateway accepted in Prefect's event store",
        timeout=PREFECT_DEADLINE_SECONDS,
        interval=POLL_SECONDS,
    )
    alert_path.stream.barrier()
    return event_ids[0]


def test_the_drift_rule_reaches_prefect_as_one_retrain_event(
    alert_path: AlertPath, repeated: str
) -> None:
    """Prometheus -> Alertmanager -> gateway -> Prefect: one stored ``lakeloop.alert.fired`` for
    the drift alert, asking the champion's model to retrain, however often it was notified."""
    [stored] = stored_alert_events(alert_path.prefect.api, DRIFT_ALERT)
    assert stored["id"] == repeated
    resource = stored["resource"]
    assert resource["prefect.resource.id"] == "lakeloop.model.housing-price"
    assert resource["lakeloop.alert.action"] == "retrain"
    assert stored["payload"]["champion_version"] == CHAMPION
    assert stored["payload"]["labels"]["lakeloop_action"] == "retrain"
    assert stored["payload"]["generator_url"].startswith("http")  # Prometheus's, via Alertmanager


def test_a_repeated_notification_is_published_once_and_retrains_once(
    alert_path: AlertPath, repeated: str
) -> None:
    """The repeats Alertmanager sent were relayed with the same id: Prefect published one copy
    (one trigger evaluation), and the retrain deployment has exactly one run for the alert."""
    assert alert_path.stream.copies(repeated) == 1
    [stored] = stored_alert_events(alert_path.prefect.api, DRIFT_ALERT)
    window = stored["payload"]["window_id"]
    alert_path.prefect.wait_for_run(RETRAIN, window_id=window)
    [run] = alert_path.prefect.runs(RETRAIN, window_id=window)
    assert run.parameters == {
        "champion_version": CHAMPION,
        "window_id": window,
        "reason": ALERT_FIRED,
    }


def test_an_alert_asking_nothing_goes_to_the_person_not_to_a_retrain(
    alert_path: AlertPath, repeated: str
) -> None:
    """The rule without ``lakeloop_action`` reaches the person's receiver and never the gateway:
    no event, no retrain for it."""
    eventually(
        lambda: PERSON_ALERT in alert_path.inbox.alert_names(),
        what=f"{PERSON_ALERT} in the person's inbox",
        timeout=PROMETHEUS_DEADLINE_SECONDS,
        interval=POLL_SECONDS,
    )
    assert DRIFT_ALERT not in alert_path.inbox.alert_names()
    assert alert_path.relays.ids_of(PERSON_ALERT) == []
    assert stored_alert_events(alert_path.prefect.api, PERSON_ALERT) == []


def test_the_alert_firing_again_after_it_resolved_is_a_new_event_and_a_new_retrain(
    alert_path: AlertPath, repeated: str
) -> None:
    """Drift gone (Prometheus resolves the alert, Alertmanager drops it), then back: the alert
    has the same fingerprint but a new ``startsAt``, so the gateway relays a new event and the
    retrain deployment runs once more, for the new window."""
    push_champion_drift(alert_path.pushgateway, drifted=False)

    def active_drift_alerts() -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{alert_path.alertmanager}/api/v2/alerts",
            params={"filter": f'alertname="{DRIFT_ALERT}"'},
            timeout=10.0,
        )
        answer.raise_for_status()
        alerts: list[dict[str, Any]] = answer.json()
        return alerts

    eventually(
        lambda: active_drift_alerts() == [],
        what=f"{DRIFT_ALERT} resolved in Alertmanager",
        timeout=PROMETHEUS_DEADLINE_SECONDS,
        interval=POLL_SECONDS,
    )
    push_champion_drift(alert_path.pushgateway)
    again = eventually_value(
        lambda: next((i for i in alert_path.relays.ids_of(DRIFT_ALERT) if i != repeated), None),
        what=f"{DRIFT_ALERT} firing again relayed as a new event",
        timeout=PROMETHEUS_DEADLINE_SECONDS,
        interval=POLL_SECONDS,
    )

    def both_firings() -> list[dict[str, Any]] | None:
        found = stored_alert_events(alert_path.prefect.api, DRIFT_ALERT)
        return found if len(found) == 2 else None

    stored = eventually_value(
        both_firings,
        what="the second firing in Prefect's event store",
        timeout=PREFECT_DEADLINE_SECONDS,
        interval=POLL_SECONDS,
    )
    assert {event["id"] for event in stored} == {repeated, again}
    [first, second] = sorted(stored, key=lambda event: event["occurred"])
    assert (
        first["resource"]["lakeloop.alert.fingerprint"]
        == (second["resource"]["lakeloop.alert.fingerprint"])
    )
    window = next(event["payload"]["window_id"] for event in stored if event["id"] == again)
    alert_path.prefect.wait_for_run(RETRAIN, window_id=window)
    assert len(alert_path.prefect.runs(RETRAIN, window_id=window)) == 1
