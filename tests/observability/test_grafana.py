"""``lakeloop.grafana`` over HTTP: against a stand-in speaking Grafana's API, and against a real
Grafana when ``GRAFANA_URL`` (and ``GRAFANA_TOKEN``) name one."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from lakeloop import grafana
from lakeloop.settings import Settings, load_settings
from tests.utils.grafana_standin import GrafanaStandIn
from tests.utils.net import free_port, serve_in_thread

TOKEN = "glsa_standin_" + "x" * 24
PROMETHEUS = "http://prometheus.internal:9090"


def configured(settings: Settings, url: str | None, token: str | None = TOKEN) -> Settings:
    observability: dict[str, object] = {"grafana_url": url, "prometheus_url": PROMETHEUS}
    if token is not None:
        observability["grafana_token"] = token
    return load_settings(state_dir=settings.state_dir, observability=observability)


@pytest.fixture
def standin() -> Iterator[tuple[GrafanaStandIn, str]]:
    fake = GrafanaStandIn(token=TOKEN)
    with serve_in_thread(fake.app()) as url:
        yield fake, url


def test_sync_stores_datasource_and_dashboards_in_the_lakeloop_folder(
    settings: Settings, standin: tuple[GrafanaStandIn, str]
) -> None:
    fake, url = standin
    synced = grafana.sync(configured(settings, url))

    assert fake.folders[grafana.FOLDER_UID]["title"] == "lakeloop"
    [source] = fake.datasources.values()
    assert (source["uid"], source["type"], source["url"]) == (
        synced.datasource_uid,
        "prometheus",
        PROMETHEUS,
    )
    stored = {uid: saved["dashboard"]["title"] for uid, saved in fake.dashboards.items()}
    assert set(stored) == {grafana.dashboard(name)["uid"] for name in grafana.DASHBOARDS}
    assert {saved["folderUid"] for saved in fake.dashboards.values()} == {grafana.FOLDER_UID}
    assert [url.split("/")[2] for url in synced.dashboards] == [
        grafana.dashboard(name)["uid"] for name in grafana.DASHBOARDS
    ]
    assert set(fake.authorizations) == {f"Bearer {TOKEN}"}


def test_sync_twice_overwrites_instead_of_duplicating(
    settings: Settings, standin: tuple[GrafanaStandIn, str]
) -> None:
    fake, url = standin
    grafana.sync(configured(settings, url))
    moved = configured(settings, url).model_copy(deep=True)
    moved.observability.prometheus_url = "http://elsewhere:9090"
    grafana.sync(moved)
    assert len(fake.folders) == 1
    [source] = fake.datasources.values()
    assert source["url"] == "http://elsewhere:9090"
    assert len(fake.dashboards) == len(grafana.DASHBOARDS)
    assert {saved["version"] for saved in fake.dashboards.values()} == {2}


def test_annotation_is_stored_with_lakeloop_tags_and_time(
    settings: Settings, standin: tuple[GrafanaStandIn, str]
) -> None:
    fake, url = standin
    at = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert grafana.annotate(
        configured(settings, url), text="v7 promoted", tags=[grafana.PROMOTION], time=at
    )
    [annotation] = fake.annotations
    assert annotation["text"] == "v7 promoted"
    assert annotation["tags"] == [grafana.TAG, grafana.PROMOTION]
    assert annotation["time"] == int(at.timestamp() * 1000)
    assert "dashboardUID" not in annotation  # organisation-wide: every dashboard shows it


def test_annotate_without_grafana_does_nothing(settings: Settings) -> None:
    assert not grafana.annotate(configured(settings, None), text="x", tags=[grafana.DRIFT])


@pytest.mark.parametrize("problem", ["wrong token", "grafana down"])
def test_annotate_failure_is_a_warning_never_an_exception_and_never_shows_the_token(
    settings: Settings,
    standin: tuple[GrafanaStandIn, str],
    caplog: pytest.LogCaptureFixture,
    problem: str,
) -> None:
    fake, url = standin
    token = "glsa_wrong_" + "y" * 24
    if problem == "grafana down":
        url, token = f"http://127.0.0.1:{free_port()}", TOKEN
    with caplog.at_level(logging.WARNING, logger="lakeloop.grafana"):
        stored = grafana.annotate(
            configured(settings, url, token), text="merge", tags=[grafana.MERGE]
        )
    assert not stored
    assert fake.annotations == []
    assert "not stored in Grafana" in caplog.text
    assert token not in caplog.text


def test_sync_without_grafana_says_which_setting(settings: Settings) -> None:
    with pytest.raises(grafana.GrafanaNotConfiguredError, match="GRAFANA_URL"):
        grafana.sync(configured(settings, None))


def test_cli_sync_lists_the_dashboards(
    settings: Settings, standin: tuple[GrafanaStandIn, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = standin
    monkeypatch.setenv("LAKELOOP_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_URL", url)
    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_TOKEN", TOKEN)
    monkeypatch.setenv("LAKELOOP_GATEWAY__PUBLIC_URL", "http://gateway.internal:8002")
    result = CliRunner().invoke(grafana.app, ["sync"])
    assert result.exit_code == 0, result.output
    assert "3 dashboards in folder lakeloop" in result.output
    assert "alert rules in folder lakeloop-alerts" in result.output
    assert TOKEN not in result.output
    assert len(fake.dashboards) == 3

    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_TOKEN", "glsa_wrong_" + "z" * 24)
    refused = CliRunner().invoke(grafana.app, ["sync"])
    assert refused.exit_code == 1
    assert "cannot sync Grafana" in refused.output


EDITOR, VIEWER = "glsa_editor_" + "e" * 24, "glsa_viewer_" + "v" * 24


@pytest.fixture
def roles() -> Iterator[tuple[GrafanaStandIn, str]]:
    """A stand-in holding an Admin (``TOKEN``), an Editor and a Viewer token."""
    fake = GrafanaStandIn(token=TOKEN, tokens={EDITOR: "Editor", VIEWER: "Viewer"})
    with serve_in_thread(fake.app()) as url:
        yield fake, url


def test_an_admin_token_syncs_everything(
    settings: Settings, roles: tuple[GrafanaStandIn, str]
) -> None:
    fake, url = roles
    synced = grafana.sync(configured(settings, url, TOKEN))
    assert synced.datasource_skipped is None
    assert set(fake.datasources) == {synced.datasource_uid}
    assert len(fake.dashboards) == len(grafana.DASHBOARDS)


def test_an_editor_token_skips_the_datasource_naming_admin_and_syncs_the_dashboards(
    settings: Settings, roles: tuple[GrafanaStandIn, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = roles
    with caplog.at_level(logging.WARNING, logger="lakeloop.grafana"):
        synced = grafana.sync(configured(settings, url, EDITOR))
    assert fake.datasources == {}
    assert synced.datasource_skipped is not None
    assert "Admin role" in synced.datasource_skipped
    assert "datasources:create" in synced.datasource_skipped  # Grafana's own 403 message
    assert "Admin role" in caplog.text
    assert len(fake.dashboards) == len(grafana.DASHBOARDS)
    assert fake.folders[grafana.FOLDER_UID]["title"] == "lakeloop"


def test_an_editor_token_does_not_overwrite_a_datasource_an_admin_made(
    settings: Settings, roles: tuple[GrafanaStandIn, str]
) -> None:
    fake, url = roles
    grafana.sync(configured(settings, url, TOKEN))
    made = dict(fake.datasources)
    synced = grafana.sync(configured(settings, url, EDITOR))
    assert synced.datasource_skipped is not None
    assert "datasources:write" in synced.datasource_skipped
    assert fake.datasources == made
    assert {saved["version"] for saved in fake.dashboards.values()} == {2}


@pytest.mark.parametrize("folder_exists", [False, True])
def test_a_viewer_token_fails_clearly_naming_editor(
    settings: Settings, roles: tuple[GrafanaStandIn, str], folder_exists: bool
) -> None:
    fake, url = roles
    if folder_exists:
        fake.folders[grafana.FOLDER_UID] = {"id": 1, "uid": grafana.FOLDER_UID, "title": "x"}
    with pytest.raises(grafana.GrafanaForbiddenError, match="needs the Editor role"):
        grafana.sync(configured(settings, url, VIEWER))
    assert fake.dashboards == {}
    assert fake.datasources == {}


def test_a_viewer_annotation_is_refused_as_a_warning(
    settings: Settings, roles: tuple[GrafanaStandIn, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = roles
    with caplog.at_level(logging.WARNING, logger="lakeloop.grafana"):
        stored = grafana.annotate(configured(settings, url, VIEWER), text="x", tags=[grafana.DRIFT])
    assert not stored
    assert fake.annotations == []
    assert grafana.annotate(configured(settings, url, EDITOR), text="y", tags=[grafana.DRIFT])


def test_cli_sync_by_role(
    settings: Settings, roles: tuple[GrafanaStandIn, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = roles
    monkeypatch.setenv("LAKELOOP_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_URL", url)
    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_TOKEN", EDITOR)
    editor = CliRunner().invoke(grafana.app, ["sync"])
    assert editor.exit_code == 1, editor.output  # the dashboards synced, the alerting did not
    assert "skipped: datasource lakeloop-prometheus not written" in editor.output
    assert "skipped: alerting not written" in editor.output
    assert "needs the Admin role" in editor.output
    assert "3 dashboards in folder lakeloop" in editor.output

    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_TOKEN", VIEWER)
    viewer = CliRunner().invoke(grafana.app, ["sync"])
    assert viewer.exit_code == 1
    assert "needs the Editor role" in viewer.output
    assert VIEWER not in viewer.output


def test_against_a_real_grafana(settings: Settings) -> None:
    url, token = os.environ.get("GRAFANA_URL"), os.environ.get("GRAFANA_TOKEN")
    if not url:
        pytest.skip("set GRAFANA_URL (and GRAFANA_TOKEN, an Admin service-account token)")
    # The contact point needs the gateway as that Grafana would reach it; a test secret.
    real = configured(settings, url, token).model_copy(deep=True)
    real.gateway.public_url = os.environ.get("GRAFANA_GATEWAY_URL", "http://gateway:8002")
    real.gateway.webhook_secret = SecretStr("lakeloop-test-" + secrets.token_hex(8))
    synced = grafana.sync(real)
    again = grafana.sync(real)  # idempotent against the real server too
    client = grafana.connect(real)
    assert client is not None
    assert synced.alerting_skipped is None, synced.alerting_skipped
    assert again.alert_rules == synced.alert_rules
    provisioning = client.alertingprovisioning
    [group] = grafana.alerting_file()["groups"]
    stored = provisioning.get_rule_group(grafana.ALERT_FOLDER_UID, group["name"])
    assert {rule["uid"] for rule in stored["rules"]} == {rule["uid"] for rule in group["rules"]}
    assert stored["interval"] == 60
    points = {point["uid"]: point for point in provisioning.get_contactpoints()}
    assert points["lakeloop-gateway"]["settings"]["url"] == (
        f"{real.gateway.public_url}/alerts/grafana"
    )
    assert points["lakeloop-gateway"]["provenance"] == "api"
    [policy] = grafana.alerting_file()["policies"]
    tree = provisioning.get_notification_policy_tree()
    [ours] = [
        route
        for route in tree["routes"]
        if ["grafana_folder", "=", group["folder"]] in (route.get("object_matchers") or [])
    ]
    assert ours["receiver"] == policy["receiver"]
    assert [route["receiver"] for route in ours["routes"]] == [
        route["receiver"] for route in policy["routes"]
    ]
    for name in grafana.DASHBOARDS:
        stored = client.dashboard.get_dashboard(grafana.dashboard(name)["uid"])
        assert stored["meta"]["folderUid"] == grafana.FOLDER_UID
    assert client.datasource.get_datasource_by_uid(synced.datasource_uid)["url"] == PROMETHEUS
    text = f"lakeloop test annotation {datetime.now(UTC).isoformat()}"
    assert grafana.annotate(real, text=text, tags=[grafana.DRIFT])
    found = client.annotations.find_annotations(tags=[grafana.TAG, grafana.DRIFT], limit=20)
    assert text in [annotation["text"] for annotation in found]


# The flows' service account ------------------------------------------------------------------

ADMIN_PASSWORD = "admin-password-" + "p" * 20


def with_account(settings: Settings, url: str, token_file: Path, **more: object) -> Settings:
    """Settings that make the service account as the admin and read its token from the file."""
    observability: dict[str, object] = {
        "grafana_url": url,
        "grafana_token_file": token_file,
        "grafana_admin_password": ADMIN_PASSWORD,
        "prometheus_url": PROMETHEUS,
    }
    return load_settings(state_dir=settings.state_dir, observability=observability | more)


@pytest.fixture
def admin() -> Iterator[tuple[GrafanaStandIn, str]]:
    """A stand-in whose ``admin`` signs in with ``ADMIN_PASSWORD``; no token exists yet."""
    fake = GrafanaStandIn(admin_password=ADMIN_PASSWORD)
    with serve_in_thread(fake.app()) as url:
        yield fake, url


def test_the_service_account_token_lets_the_flows_annotate_as_an_editor(
    settings: Settings, admin: tuple[GrafanaStandIn, str], tmp_path: Path
) -> None:
    fake, url = admin
    token_file = tmp_path / "grafana" / "token"
    token_file.parent.mkdir()
    made = grafana.provision_service_account(with_account(settings, url, token_file))

    assert made.created
    [account] = fake.service_accounts.values()
    assert (account["name"], account["role"]) == (grafana.SERVICE_ACCOUNT, "Editor")
    assert token_file.stat().st_mode & 0o777 == 0o600
    # The flows hold no admin password: the token file is their only credential.
    flows = load_settings(
        state_dir=settings.state_dir,
        observability={"grafana_url": url, "grafana_token_file": token_file},
    )
    assert grafana.annotate(flows, text="v2 promoted", tags=[grafana.PROMOTION])
    [annotation] = fake.annotations
    assert annotation["text"] == "v2 promoted"
    assert fake.authorizations[-1] == f"Bearer {token_file.read_text()}"


def test_making_it_again_keeps_the_account_and_replaces_the_token(
    settings: Settings, admin: tuple[GrafanaStandIn, str], tmp_path: Path
) -> None:
    """Each start of the stack gives a new token and revokes the one before; the account stays."""
    fake, url = admin
    token_file = tmp_path / "token"
    configured_admin = with_account(settings, url, token_file)
    grafana.provision_service_account(configured_admin)
    first = token_file.read_text()
    again = grafana.provision_service_account(configured_admin)
    second = token_file.read_text()

    assert not again.created
    assert again.revoked == 1
    assert second != first
    assert len(fake.service_accounts) == 1
    [account_id] = fake.service_accounts
    assert [token["key"] for token in fake.account_tokens[account_id]] == [second]
    old = configured(settings, url, token=first)
    assert not grafana.annotate(old, text="with the revoked token", tags=[grafana.DRIFT])
    new = configured(settings, url, token=second)
    assert grafana.annotate(new, text="with the new token", tags=[grafana.DRIFT])


def test_cli_service_account_never_shows_a_credential(
    settings: Settings,
    admin: tuple[GrafanaStandIn, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = admin
    token_file = tmp_path / "token"
    monkeypatch.setenv("LAKELOOP_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_URL", url)
    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_ADMIN_PASSWORD", ADMIN_PASSWORD)
    made = CliRunner().invoke(grafana.app, ["service-account"])
    assert made.exit_code == 0, made.output
    assert f"token written to {token_file}" in made.output
    assert token_file.read_text() not in made.output
    assert ADMIN_PASSWORD not in made.output

    wrong = "wrong-password-" + "w" * 20
    monkeypatch.setenv("LAKELOOP_OBSERVABILITY__GRAFANA_ADMIN_PASSWORD", wrong)
    refused = CliRunner().invoke(grafana.app, ["service-account"])
    assert refused.exit_code == 1
    assert "cannot make the service account" in refused.output
    assert wrong not in refused.output

    monkeypatch.delenv("LAKELOOP_OBSERVABILITY__GRAFANA_ADMIN_PASSWORD")
    unset = CliRunner().invoke(grafana.app, ["service-account"])
    assert unset.exit_code == 2
    assert "LAKELOOP_OBSERVABILITY__GRAFANA_ADMIN_PASSWORD" in unset.output


def test_a_missing_token_file_turns_annotations_off_with_a_warning_naming_it(
    settings: Settings,
    admin: tuple[GrafanaStandIn, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before the stack's grafana-init has written the token, a flow's annotation is skipped
    (no request, so no 401) with a warning saying which file and what writes it."""
    fake, url = admin
    token_file = tmp_path / "not-yet"
    flows = load_settings(
        state_dir=settings.state_dir,
        observability={"grafana_url": url, "grafana_token_file": token_file},
    )
    with caplog.at_level(logging.WARNING, logger="lakeloop.grafana"):
        stored = grafana.annotate(flows, text="merge", tags=[grafana.MERGE])
    assert not stored
    assert fake.authorizations == []
    assert str(token_file) in caplog.text
    assert "lakeloop grafana service-account" in caplog.text
