"""``lakeloop grafana sync`` pushes the committed alerting file (rules, contact points, policy)
over Grafana's alerting provisioning API, against the stand-in speaking it (its payloads and
roles as Grafana's source has them, tests/utils/grafana_standin.py). The real-Grafana check is
``test_against_a_real_grafana`` in test_grafana.py."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaBadInputError
from typer.testing import CliRunner

from lakeloop import grafana
from lakeloop.settings import Settings, load_settings
from tests.utils.grafana_standin import DEFAULT_RECEIVER, GrafanaStandIn
from tests.utils.net import serve_in_thread

ADMIN, EDITOR = "glsa_admin_" + "a" * 24, "glsa_editor_" + "e" * 24
PROMETHEUS = "http://prometheus.internal:9090"
GATEWAY = "http://gateway.internal:8002"
SECRET = "gateway-secret-" + "s" * 24


def configured(settings: Settings, url: str, token: str, **gateway: object) -> Settings:
    return load_settings(
        state_dir=settings.state_dir,
        observability={"grafana_url": url, "grafana_token": token, "prometheus_url": PROMETHEUS},
        gateway={"public_url": GATEWAY, "webhook_secret": SECRET} | gateway,
    )


@pytest.fixture
def standin() -> Iterator[tuple[GrafanaStandIn, str]]:
    fake = GrafanaStandIn(token=ADMIN, tokens={EDITOR: "Editor"})
    with serve_in_thread(fake.app()) as url:
        yield fake, url


def committed_rules() -> dict[str, dict[str, Any]]:
    [group] = grafana.alerting_file()["groups"]
    return {rule["uid"]: rule for rule in group["rules"]}


def committed_receivers() -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        receiver["uid"]: (point["name"], receiver)
        for point in grafana.alerting_file()["contactPoints"]
        for receiver in point["receivers"]
    }


def test_sync_pushes_every_rule_contact_point_and_the_policy_of_the_committed_file(
    settings: Settings, standin: tuple[GrafanaStandIn, str]
) -> None:
    fake, url = standin
    synced = grafana.sync(configured(settings, url, ADMIN))

    assert synced.alerting_skipped is None
    [group_file] = grafana.alerting_file()["groups"]
    assert fake.folders[grafana.ALERT_FOLDER_UID]["title"] == group_file["folder"]
    stored = fake.rule_groups[(grafana.ALERT_FOLDER_UID, group_file["name"])]
    assert stored["interval"] == 60  # the file's 1m
    rules = {rule["uid"]: rule for rule in stored["rules"]}
    assert set(rules) == set(committed_rules()) == set(synced.alert_rules)
    for uid, written in committed_rules().items():
        for key in ("title", "condition", "data", "for", "noDataState", "execErrState"):
            assert rules[uid][key] == written[key], (uid, key)
        assert rules[uid]["labels"] == written["labels"]
        # Annotations are templates Grafana fills at each notification: not variables.
        assert rules[uid]["annotations"] == written["annotations"]
        assert (rules[uid]["orgID"], rules[uid]["provenance"]) == (1, "api")

    assert set(fake.contact_points) == set(committed_receivers()) == set(synced.contact_points)
    for uid, (name, receiver) in committed_receivers().items():
        point = fake.contact_points[uid]
        assert (point["name"], point["type"]) == (name, receiver["type"])
        assert point["disableResolveMessage"] == receiver.get("disableResolveMessage", False)
    gateway = fake.contact_points["lakeloop-gateway"]["settings"]
    assert gateway["url"] == f"{GATEWAY}/alerts/grafana"
    assert (gateway["authorization_scheme"], gateway["authorization_credentials"]) == (
        "Bearer",
        SECRET,
    )

    # The file's tree becomes the first route of the organisation's, for the lakeloop alert
    # folder's alerts only; the team's root stays.
    [policy] = grafana.alerting_file()["policies"]
    assert fake.policy is not None
    assert fake.policy["receiver"] == DEFAULT_RECEIVER
    [ours] = fake.policy["routes"]
    assert ours == {k: v for k, v in policy.items() if k != "orgId"} | {
        "object_matchers": [["grafana_folder", "=", group_file["folder"]]],
        "continue": False,
    }
    assert fake.policy["provenance"] == "api"


def test_sync_keeps_the_teams_own_notification_policies(
    settings: Settings, standin: tuple[GrafanaStandIn, str]
) -> None:
    """An existing Grafana routes its own alerts: syncing adds lakeloop's route before them and
    replaces only that one on the next sync."""
    _, url = standin
    provisioning = GrafanaApi.from_url(url, credential=ADMIN).alertingprovisioning
    team_route = {"receiver": DEFAULT_RECEIVER, "object_matchers": [["team", "=", "payments"]]}
    team_tree = {"receiver": DEFAULT_RECEIVER, "group_by": ["team"], "routes": [team_route]}
    provisioning.set_notification_policy_tree(team_tree)

    for _ in range(2):
        synced = grafana.sync(configured(settings, url, ADMIN))
        assert synced.alerting_skipped is None
        tree = provisioning.get_notification_policy_tree()
        assert (tree["receiver"], tree["group_by"]) == (DEFAULT_RECEIVER, ["team"])
        [group_file] = grafana.alerting_file()["groups"]
        assert [route.get("object_matchers") for route in tree["routes"]] == [
            [["grafana_folder", "=", group_file["folder"]]],
            [["team", "=", "payments"]],
        ]
        assert tree["routes"][1] == team_route


def test_sync_twice_changes_nothing(
    settings: Settings, standin: tuple[GrafanaStandIn, str]
) -> None:
    fake, url = standin
    grafana.sync(configured(settings, url, ADMIN))
    first = copy.deepcopy((fake.folders, fake.contact_points, fake.policy, fake.rule_groups))
    again = grafana.sync(configured(settings, url, ADMIN))

    assert again.alerting_skipped is None
    assert (fake.folders, fake.contact_points, fake.policy, fake.rule_groups) == first
    versions = [rule["version"] for group in fake.rule_groups.values() for rule in group["rules"]]
    assert set(versions) == {1}


def test_a_new_secret_reaches_the_gateway_contact_point_on_the_next_sync(
    settings: Settings, standin: tuple[GrafanaStandIn, str]
) -> None:
    fake, url = standin
    grafana.sync(configured(settings, url, ADMIN))
    rotated = "rotated-secret-" + "r" * 24
    grafana.sync(configured(settings, url, ADMIN, webhook_secret=rotated))
    point = fake.contact_points["lakeloop-gateway"]
    assert (point["settings"]["authorization_credentials"], point["version"]) == (rotated, 2)
    assert len(fake.contact_points) == len(committed_receivers())


def test_an_editor_token_gets_the_role_named_and_the_dashboards_are_still_synced(
    settings: Settings, standin: tuple[GrafanaStandIn, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Grafana lets an Editor write rules and contact points but not the notification policy
    tree: sync stops before the rules, so no rule fires without its route to the gateway."""
    fake, url = standin
    with caplog.at_level(logging.WARNING, logger="lakeloop.grafana"):
        synced = grafana.sync(configured(settings, url, EDITOR))

    assert synced.alerting_skipped is not None
    assert "needs the Admin role" in synced.alerting_skipped
    assert "notification policy tree" in synced.alerting_skipped
    assert "alert.provisioning:write" in synced.alerting_skipped  # Grafana's own 403 message
    assert "needs the Admin role" in caplog.text
    assert fake.rule_groups == {}
    assert fake.policy is None
    assert synced.alert_rules == []
    assert len(fake.dashboards) == len(grafana.DASHBOARDS)
    assert [u.split("/")[2] for u in synced.dashboards] == [
        grafana.dashboard(name)["uid"] for name in grafana.DASHBOARDS
    ]


def test_cli_sync_reports_the_alerting_and_never_shows_the_secret(
    settings: Settings,
    standin: tuple[GrafanaStandIn, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, url = standin
    monkeypatch.setenv("LAKELOOP_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_URL", url)
    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_TOKEN", ADMIN)
    monkeypatch.setenv("LAKELOOP_GATEWAY__PUBLIC_URL", GATEWAY)
    monkeypatch.setenv("LAKELOOP_GATEWAY__WEBHOOK_SECRET", SECRET)
    with caplog.at_level(logging.DEBUG):
        admin = CliRunner().invoke(grafana.app, ["sync"])
    assert admin.exit_code == 0, admin.output
    rules = len(committed_rules())
    assert f"{rules} alert rules in folder {grafana.ALERT_FOLDER_UID}" in admin.output
    assert "lakeloop-gateway" in admin.output
    # The secret reached the contact point, and no output or log line.
    assert fake.contact_points["lakeloop-gateway"]["settings"]["authorization_credentials"] == (
        SECRET
    )
    assert SECRET not in admin.output
    assert SECRET not in caplog.text
    assert all(SECRET not in str(record.args) for record in caplog.records)

    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_TOKEN", EDITOR)
    with caplog.at_level(logging.DEBUG):
        editor = CliRunner().invoke(grafana.app, ["sync"])
    assert editor.exit_code == 1, editor.output  # no alert would ever be delivered
    assert "skipped: alerting not written" in editor.output
    assert "needs the Admin role" in editor.output
    assert "3 dashboards in folder lakeloop" in editor.output
    assert SECRET not in editor.output
    assert SECRET not in caplog.text


def test_without_the_gateway_url_the_alerting_is_skipped_naming_the_setting(
    settings: Settings, standin: tuple[GrafanaStandIn, str]
) -> None:
    """A contact point posting to a guessed address would never deliver: say what to set."""
    fake, url = standin
    synced = grafana.sync(configured(settings, url, ADMIN, public_url=None))
    assert synced.alerting_skipped is not None
    assert "LAKELOOP_GATEWAY__PUBLIC_URL" in synced.alerting_skipped
    assert fake.contact_points == {}
    assert fake.rule_groups == {}
    assert len(fake.dashboards) == len(grafana.DASHBOARDS)


def test_the_file_variables_are_replaced_only_where_grafana_replaces_them(
    settings: Settings,
) -> None:
    converted = grafana.alerting(
        load_settings(
            state_dir=settings.state_dir,
            gateway={"public_url": GATEWAY + "/", "webhook_secret": SECRET},
        )
    )
    [group] = converted.groups
    assert all("${" not in str(rule["labels"]) for rule in group["rules"])
    assert any("$labels" in str(rule["annotations"]) for rule in group["rules"])
    urls = [point["settings"]["url"] for point in converted.contact_points]
    assert f"{GATEWAY}/alerts/grafana" in urls
    assert "${" not in str(converted.policy)


# The stand-in refuses what Grafana refuses, so the tests above would catch a bad payload.


def test_the_standin_refuses_payloads_grafana_refuses(
    settings: Settings, standin: tuple[GrafanaStandIn, str]
) -> None:
    fake, url = standin
    grafana.sync(configured(settings, url, ADMIN))
    client = GrafanaApi.from_url(url, credential=ADMIN)
    provisioning = client.alertingprovisioning
    [group] = grafana.alerting(configured(settings, url, ADMIN)).groups
    folder, name = grafana.ALERT_FOLDER_UID, group["title"]

    bad_groups = {
        "interval not a multiple of 10 s": group | {"interval": 15},
        "rule without orgID": group | {"rules": [group["rules"][0] | {"orgID": 0}]},
        "unknown datasource": group
        | {
            "rules": [
                group["rules"][0]
                | {"data": [group["rules"][0]["data"][0] | {"datasourceUid": "nope"}]}
            ]
        },
        "condition naming no query": group | {"rules": [group["rules"][0] | {"condition": "Z"}]},
        "bad uid": group | {"rules": [group["rules"][0] | {"uid": "no spaces allowed"}]},
        "unknown noDataState": group | {"rules": [group["rules"][0] | {"noDataState": "Nope"}]},
    }
    for problem, body in bad_groups.items():
        with pytest.raises(GrafanaBadInputError):
            provisioning.update_rule_group(folder, name, body)
        assert len(fake.rule_groups[(folder, name)]["rules"]) == len(group["rules"]), problem
    with pytest.raises(GrafanaBadInputError, match="does not exist"):
        provisioning.update_rule_group("no-such-folder", name, group)
    with pytest.raises(GrafanaBadInputError, match="does not exist"):
        provisioning.set_notification_policy_tree({"receiver": "nobody"})
    with pytest.raises(GrafanaBadInputError):
        provisioning.create_contactpoint({"uid": "x", "name": "x", "type": "webhook"})
    # Secure settings are never read back.
    shown = {point["uid"]: point for point in provisioning.get_contactpoints()}
    assert shown["lakeloop-gateway"]["settings"]["authorization_credentials"] == "[REDACTED]"
