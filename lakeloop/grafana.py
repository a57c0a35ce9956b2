"""Grafana as code: push the committed datasource, dashboards and alerting, and annotate what
happened.

The files under ``monitoring/grafana/`` are the source of truth, for Grafana's own file
provisioning and for :func:`sync`, which pushes the same files over Grafana's HTTP API (with
the ``grafana-client`` library) to a Grafana you cannot mount files into. Syncing twice changes
nothing: the folders, datasource, rules and contact points keep fixed uids, dashboards are saved
with ``overwrite`` and the rule group and the notification policy tree are replaced whole.

The alerting file (``provisioning/alerting/lakeloop.yml``) is read and converted to the
alerting provisioning API's payloads (``pkg/services/ngalert/api/tooling/definitions``): each
receiver of a contact point is one ``EmbeddedContactPoint`` named after it, the group is one
``AlertRuleGroup`` (``PUT /api/v1/provisioning/folder/{uid}/rule-groups/{name}``, its rules
carrying ``folderUID``, ``ruleGroup`` and ``orgID``), the policy one ``Route``. Grafana's file
provisioning replaces ``$NAME``/``${NAME}`` with its environment in contact point settings,
rule labels and policies; :func:`sync` replaces the two the file names from the settings (the
gateway's public URL and its webhook secret, as the gateway itself reads them) and never logs
either. Everything is pushed without ``X-Disable-Provenance``: Grafana then marks it provisioned
(provenance ``api``) and read-only in its UI, as it marks the file-provisioned copy, so a change
made by hand cannot be silently undone by the next sync; change the file and sync again.

Annotations mark merges, promotions and drift on every lakeloop dashboard (they query them by
tag). They are a courtesy to the people reading the dashboards: :func:`annotate` never fails
the flow that calls it.

The flows' credential is a service-account token. Grafana cannot provision service accounts
from files, so :func:`provision_service_account` makes one through Grafana's HTTP API as its
admin (``pkg/services/serviceaccounts/api``), gives it a fresh token and writes the token to a
file the flows read at each call (``observability.grafana_token_file``): the compose stack runs
it once per start, before any flow needs it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import typer
import yaml
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

from lakeloop.settings import Settings, load_settings

logger = logging.getLogger(__name__)

FOLDER_UID = "lakeloop"
FOLDER_TITLE = "lakeloop"
TAG = "lakeloop"
"""Every lakeloop annotation carries this tag; the dashboards' annotation queries need it."""
MERGE, PROMOTION, DRIFT = "merge", "promotion", "drift"
"""The second tag of an annotation, one per dashboard annotation query."""
DASHBOARDS = ("serving", "model-quality-drift", "pipeline")
ALERT_FOLDER_UID = "lakeloop-alerts"
"""The rules' folder (titled as the alerting file's group says), apart from the dashboards' as
in file provisioning."""
_NOT_FOUND, _FORBIDDEN = 404, 403
DATASOURCE_ROLE = "Admin"
"""The organisation role Grafana grants data source writes to (fixed:datasources:writer)."""
DASHBOARD_ROLE = "Editor"
"""The lowest organisation role that creates folders and saves dashboards."""
ALERTING_ROLE = "Admin"
"""The organisation role that writes all of the alerting file over the provisioning API: the
notification policy tree needs ``alert.provisioning:write`` (``fixed:alerting.provisioning:
writer``) or ``alert.notifications:write``, both granted to Admin only
(``pkg/services/ngalert/accesscontrol``); an Editor may write rules and contact points but not
the policy that routes them to the gateway."""
SERVICE_ACCOUNT = "lakeloop-flows"
"""The service account :func:`provision_service_account` makes for the flows, with the
:data:`DASHBOARD_ROLE`: annotations and dashboards, never data sources or users."""


def _files() -> Any:
    # Shipped next to the monitoring code, read the same way Grafana's provisioning reads them.
    return resources.files("monitoring").joinpath("grafana")


def datasource(settings: Settings) -> dict[str, Any]:
    """The provisioned Prometheus datasource, pointed at ``observability.prometheus_url``."""
    provisioned = yaml.safe_load(
        _files().joinpath("provisioning", "datasources", "prometheus.yml").read_text()
    )
    [source] = provisioned["datasources"]
    provisioned_source: dict[str, Any] = source
    return provisioned_source | {"url": settings.observability.prometheus_url}


def dashboard(name: str) -> dict[str, Any]:
    """One committed dashboard, as Grafana's JSON model."""
    loaded: dict[str, Any] = json.loads(_files().joinpath("dashboards", f"{name}.json").read_text())
    return loaded


@dataclass(frozen=True)
class Synced:
    """What :func:`sync` wrote."""

    folder_uid: str
    datasource_uid: str
    dashboards: list[str]
    """Dashboard URLs as Grafana reports them."""
    datasource_skipped: str | None = None
    """Why the datasource was not written (the token's role cannot), else ``None``."""
    alert_rules: list[str] = field(default_factory=list)
    """The uids of the alert rules written."""
    contact_points: list[str] = field(default_factory=list)
    """The uids of the contact points written."""
    alerting_skipped: str | None = None
    """Why the alerting was not (all) written, else ``None``."""


class GrafanaNotConfiguredError(RuntimeError):
    """No Grafana URL in the settings."""


class GrafanaForbiddenError(RuntimeError):
    """The token's role cannot write the lakeloop folder or dashboards."""


def connect(settings: Settings, *, timeout: float = 10.0) -> GrafanaApi | None:
    """A client for the configured Grafana (service-account token as Bearer), else ``None``.
    Raises :class:`GrafanaNotConfiguredError` when the token is to come from a file that holds
    none (yet)."""
    observability = settings.observability
    if observability.grafana_url is None:
        return None
    api: GrafanaApi = GrafanaApi.from_url(
        observability.grafana_url, credential=_token(settings), timeout=timeout
    )
    return api


def _token(settings: Settings) -> str | None:
    observability = settings.observability
    if observability.grafana_token is not None:
        return observability.grafana_token.get_secret_value()
    path = observability.grafana_token_file
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise GrafanaNotConfiguredError(
            f"no Grafana token in {path} ({type(error).__name__}): "
            "`lakeloop grafana service-account` writes it (the compose stack's grafana-init)"
        ) from None
    if not token:
        raise GrafanaNotConfiguredError(f"the Grafana token file {path} is empty")
    return token


def sync(settings: Settings) -> Synced:
    """Create or overwrite the lakeloop folder, the Prometheus datasource, the dashboards and
    the alerting file's contact points, notification policy tree and rules."""
    grafana = connect(settings)
    if grafana is None:
        raise GrafanaNotConfiguredError("set LAKELOOP_OBSERVABILITY__GRAFANA_URL to sync Grafana")
    grafana.health.check()  # fails early, naming the URL, when Grafana is not there
    try:
        _ensure_folder(grafana)
    except GrafanaClientError as error:
        raise _forbidden_or(error, f"create the {FOLDER_UID} folder") from error
    source = datasource(settings)
    skipped = None
    try:
        _upsert_datasource(grafana, source)
    except GrafanaClientError as error:
        if error.status_code != _FORBIDDEN:
            raise
        # Grafana lets only an org Admin write data sources; an Editor token still syncs the
        # dashboards, which read the datasource by uid once an Admin (or provisioning) made it.
        skipped = (
            f"datasource {source['uid']} not written: the token's role cannot write data "
            f"sources; it needs the {DATASOURCE_ROLE} role ({_message(error)})"
        )
        logger.warning("%s", skipped)
    urls = []
    for name in DASHBOARDS:
        try:
            saved = grafana.dashboard.update_dashboard(
                {
                    "dashboard": dashboard(name) | {"id": None},
                    "folderUid": FOLDER_UID,
                    "overwrite": True,
                    "message": "lakeloop grafana sync",
                }
            )
        except GrafanaClientError as error:
            raise _forbidden_or(error, f"save the {name} dashboard") from error
        urls.append(saved.get("url", name))
    pushed = _push_alerting(grafana, settings)
    logger.info(
        "Grafana at %s: folder %s, datasource %s -> %s, %d dashboards, %d alert rules in "
        "folder %s, contact points %s",
        settings.observability.grafana_url,
        FOLDER_UID,
        source["uid"],
        source["url"],
        len(urls),
        len(pushed.rules),
        ALERT_FOLDER_UID,
        ", ".join(pushed.contact_points) or "none",
    )
    return Synced(
        folder_uid=FOLDER_UID,
        datasource_uid=source["uid"],
        dashboards=urls,
        datasource_skipped=skipped,
        alert_rules=pushed.rules,
        contact_points=pushed.contact_points,
        alerting_skipped=pushed.skipped,
    )


@dataclass(frozen=True)
class Alerting:
    """The committed alerting file as the alerting provisioning API's payloads."""

    folder_title: str
    groups: list[dict[str, Any]]
    """``AlertRuleGroup`` bodies (``title``, ``folderUid``, ``interval`` in seconds, ``rules``)."""
    contact_points: list[dict[str, Any]]
    """``EmbeddedContactPoint`` bodies, one per receiver of the file's contact points."""
    policy: dict[str, Any]
    """The notification policy tree, a ``Route``."""


# The keys of the file's rules that have a place in ProvisionedAlertRule (rules_types.go vs
# provisioning_alert_rules.go); any other is refused rather than dropped.
_RULE_KEYS = {
    "uid": "uid",
    "title": "title",
    "condition": "condition",
    "data": "data",
    "noDataState": "noDataState",
    "execErrState": "execErrState",
    "for": "for",
    "keepFiringFor": "keep_firing_for",
    "annotations": "annotations",
    "labels": "labels",
    "isPaused": "isPaused",
}
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)")
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def alerting_file() -> dict[str, Any]:
    """The committed alerting file, as written (variables unreplaced)."""
    loaded: dict[str, Any] = yaml.safe_load(
        _files().joinpath("provisioning", "alerting", "lakeloop.yml").read_text()
    )
    return loaded


def alerting_variables(settings: Settings) -> dict[str, str]:
    """What the file's ``${NAME}`` stand for, as the compose stack gives them to Grafana: the
    gateway as Grafana reaches it and the secret the gateway checks. Holds a secret: never log
    it."""
    public_url = settings.gateway.public_url
    if public_url is None:
        raise GrafanaNotConfiguredError(
            "set LAKELOOP_GATEWAY__PUBLIC_URL (the gateway as Grafana reaches it) to sync the "
            "alerting: its contact point posts there"
        )
    return {
        "LAKELOOP_GATEWAY__PUBLIC_URL": public_url.rstrip("/"),
        "LAKELOOP_GATEWAY__WEBHOOK_SECRET": settings.webhook_secret(),
    }


def alerting(settings: Settings, *, folder_uid: str = ALERT_FOLDER_UID) -> Alerting:
    """The committed alerting file converted to the provisioning API's payloads, its variables
    replaced where Grafana's file provisioning replaces them (contact point settings, rule
    labels, policies; ``pkg/services/provisioning/values``), ``$$`` being a literal ``$``."""
    provisioned = alerting_file()
    variables = alerting_variables(settings)
    titles = {group["folder"] for group in provisioned.get("groups", [])}
    if len(titles) != 1:
        raise ValueError(f"the alerting file's groups must share one folder, not {titles}")
    [title] = titles
    groups = [
        {
            "title": group["name"],
            "folderUid": folder_uid,
            "interval": _seconds(group["interval"]),
            "rules": [_rule(rule, group, folder_uid, variables) for rule in group["rules"]],
        }
        for group in provisioned["groups"]
    ]
    contact_points = [
        {
            "uid": receiver["uid"],
            "name": point["name"],
            "type": receiver["type"],
            "settings": _expand(receiver["settings"], variables),
            "disableResolveMessage": bool(receiver.get("disableResolveMessage", False)),
        }
        for point in provisioned.get("contactPoints", [])
        for receiver in point["receivers"]
    ]
    [policy] = provisioned["policies"]
    tree = {key: value for key, value in policy.items() if key != "orgId"}
    return Alerting(
        folder_title=title,
        groups=groups,
        contact_points=contact_points,
        policy=_expand(tree, variables),
    )


def merged_policy(
    current: dict[str, Any], ours: dict[str, Any], *, folder_title: str
) -> dict[str, Any]:
    """The organisation's notification policy tree with the file's tree as its first child
    route, for the alerts of the lakeloop alert folder only: the team's own root and
    routes stay as they are. The child lakeloop wrote before is replaced, so syncing twice
    changes nothing. (Grafana's file provisioning, in lakeloop's own Grafana, replaces the
    whole tree with the file's instead.)"""
    # Grafana's scheduler adds `grafana_folder` (the folder's title) to every alert's labels
    # (GetRuleExtraLabels, unless the instance turned that label off), and a NoData or Error
    # alert is the state's labels with only `alertname` changed (state/compat.go): the marked
    # route sees all three kinds of lakeloop alert.
    mark = ["grafana_folder", "=", folder_title]
    ours_as_child = {
        key: value for key, value in ours.items() if key not in ("orgId", "provenance")
    } | {"object_matchers": [mark], "continue": False}
    theirs = [
        route
        for route in current.get("routes") or []
        if mark not in (route.get("object_matchers") or [])
    ]
    root = {key: value for key, value in current.items() if key != "provenance"}
    return root | {"routes": [ours_as_child, *theirs]}


def _rule(
    rule: dict[str, Any], group: dict[str, Any], folder_uid: str, variables: dict[str, str]
) -> dict[str, Any]:
    unknown = set(rule) - set(_RULE_KEYS)
    if unknown:
        raise ValueError(f"rule {rule.get('uid')}: no provisioning API field for {unknown}")
    converted = {_RULE_KEYS[key]: value for key, value in rule.items()}
    if "labels" in converted:
        converted["labels"] = _expand(converted["labels"], variables)
    # The file format's defaults (mapToModel), which the API's required fields do not have.
    return (
        {
            "noDataState": "NoData",
            "execErrState": "Alerting",
            "for": "0s",
            "isPaused": False,
        }
        | converted
        | {"orgID": group["orgId"], "folderUID": folder_uid, "ruleGroup": group["name"]}
    )


def _seconds(duration: str | int) -> int:
    """A Prometheus duration (``1m``, ``1h30m``) in whole seconds."""
    if isinstance(duration, int):
        return duration
    parts = _DURATION.findall(duration)
    if not parts or "".join(number + unit for number, unit in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return int(sum(int(number) * _SECONDS[unit] for number, unit in parts))


def _expand(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1) or match.group(2)
            if name not in variables:
                raise GrafanaNotConfiguredError(f"the alerting file names ${name}, unknown here")
            return variables[name]

        return _VARIABLE.sub(replace, value)
    if isinstance(value, list):
        return [_expand(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: _expand(item, variables) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class _Pushed:
    rules: list[str]
    contact_points: list[str]
    skipped: str | None


def _push_alerting(grafana: GrafanaApi, settings: Settings) -> _Pushed:
    """Write the contact points, then the policy that routes to them, then the rules (so no
    rule fires before its route exists). A 403 stops there and says which role is needed."""
    try:
        converted = alerting(settings)
    except GrafanaNotConfiguredError as error:
        skipped = f"alerting not written: {error}"
        logger.warning("%s", skipped)
        return _Pushed(rules=[], contact_points=[], skipped=skipped)
    provisioning = grafana.alertingprovisioning
    written: list[str] = []
    done: list[str] = []
    step = f"create the {ALERT_FOLDER_UID} folder"
    try:
        _ensure_folder(grafana, ALERT_FOLDER_UID, converted.folder_title)
        existing = {point["uid"] for point in provisioning.get_contactpoints()}
        for point in converted.contact_points:
            step = f"write the {point['name']} contact point"
            if point["uid"] in existing:
                provisioning.update_contactpoint(point["uid"], point)
            else:
                provisioning.create_contactpoint(point)
            written.append(point["uid"])
            done.append(f"contact point {point['uid']}")
        step = "write the notification policy tree"
        current = provisioning.get_notification_policy_tree()
        provisioning.set_notification_policy_tree(
            merged_policy(current, converted.policy, folder_title=converted.folder_title)
        )
        done.append("the notification policy tree")
        rules = []
        for group in converted.groups:
            step = f"write the {group['title']} rule group"
            provisioning.update_rule_group(ALERT_FOLDER_UID, group["title"], group)
            rules += [rule["uid"] for rule in group["rules"]]
    except GrafanaClientError as error:
        if error.status_code != _FORBIDDEN:
            raise
        before = f" ({', '.join(done)} written before)" if done else ""
        skipped = (
            f"alerting not written{before}: the token's role cannot "
            f"{step} over Grafana's alerting provisioning API; it needs the {ALERTING_ROLE} "
            f"role (alert.provisioning:write) ({_message(error)})"
        )
        logger.warning("%s", skipped)
        return _Pushed(rules=[], contact_points=written, skipped=skipped)
    return _Pushed(rules=rules, contact_points=written, skipped=None)


def _message(error: GrafanaClientError) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict) and "message" in response:
        return str(response["message"])
    return str(error.message)


def _forbidden_or(error: GrafanaClientError, step: str) -> Exception:
    """A 403 as a :class:`GrafanaForbiddenError` naming the role needed; any other error as is."""
    if error.status_code != _FORBIDDEN:
        return error
    return GrafanaForbiddenError(
        f"the token's role cannot {step}: it needs the {DASHBOARD_ROLE} role (or "
        f"{DATASOURCE_ROLE}, which also writes the datasource); Grafana said: {_message(error)}"
    )


def _ensure_folder(grafana: GrafanaApi, uid: str = FOLDER_UID, title: str = FOLDER_TITLE) -> None:
    try:
        grafana.folder.get_folder(uid)
    except GrafanaClientError as error:
        if error.status_code != _NOT_FOUND:
            raise
        grafana.folder.create_folder(title, uid=uid)


def _upsert_datasource(grafana: GrafanaApi, source: dict[str, Any]) -> None:
    try:
        grafana.datasource.get_datasource_by_uid(source["uid"])
    except GrafanaClientError as error:
        if error.status_code != _NOT_FOUND:
            raise
        grafana.datasource.create_datasource(source)
        return
    grafana.datasource.update_datasource_by_uid(source["uid"], source)


def annotate(
    settings: Settings, *, text: str, tags: list[str], time: datetime | None = None
) -> bool:
    """Post an organisation-wide annotation tagged ``lakeloop`` and ``tags`` (e.g.
    ``[PROMOTION]``), at ``time`` (now by default). Returns whether Grafana stored it; with no
    Grafana configured, or when the call fails (logged as a warning), returns ``False``."""
    try:
        grafana = connect(settings)
    except GrafanaNotConfiguredError as error:
        logger.warning("annotation %r not stored in Grafana: %s", text, error)
        return False
    if grafana is None:
        return False
    at = time or datetime.now(UTC)
    try:
        grafana.annotations.add_annotation(
            time_from=int(at.timestamp() * 1000), tags=[TAG, *tags], text=text
        )
    # Any failure (refused token, Grafana down, a timeout) must not fail the caller's flow.
    except Exception as error:
        logger.warning(
            "annotation %r not stored in Grafana at %s: %s: %s",
            text,
            settings.observability.grafana_url,
            type(error).__name__,
            error,
        )
        return False
    return True


@dataclass(frozen=True)
class ServiceAccount:
    """What :func:`provision_service_account` did."""

    id: int
    created: bool
    """The account was made now (else it existed)."""
    token_file: Path
    revoked: int
    """Older tokens of the account deleted once the new one was written."""


def provision_service_account(settings: Settings) -> ServiceAccount:
    """Make the flows' service account (once, with the :data:`DASHBOARD_ROLE`), give it a new
    token, write the token to ``observability.grafana_token_file`` (owner-only, replaced whole)
    and then revoke its older tokens: a flow reading the file between two runs of this gets the
    old token or the new one, both valid at that moment. Signs in as Grafana's admin
    (``grafana_admin_user`` / ``grafana_admin_password``); the token is never logged."""
    observability = settings.observability
    url, path = observability.grafana_url, observability.grafana_token_file
    password = observability.grafana_admin_password
    if url is None or path is None or password is None:
        missing = [
            f"LAKELOOP_OBSERVABILITY__{name}"
            for name, value in (
                ("GRAFANA_URL", url),
                ("GRAFANA_TOKEN_FILE", path),
                ("GRAFANA_ADMIN_PASSWORD", password),
            )
            if value is None
        ]
        raise GrafanaNotConfiguredError(f"set {' and '.join(missing)} to make the service account")
    admin = GrafanaApi.from_url(
        url,
        credential=(observability.grafana_admin_user, password.get_secret_value()),
        timeout=10.0,
    )
    admin.health.check()
    accounts = admin.serviceaccount
    found = [
        account
        for page in accounts.search(query=SERVICE_ACCOUNT)
        for account in page["serviceAccounts"]
        if account["name"] == SERVICE_ACCOUNT
    ]
    account = (
        found[0] if found else accounts.create({"name": SERVICE_ACCOUNT, "role": DASHBOARD_ROLE})
    )
    older = accounts.get_tokens(account["id"])
    # Token names are unique per account (409 otherwise): the time makes each run's its own.
    name = f"{SERVICE_ACCOUNT}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    created = accounts.create_token(account["id"], {"name": name})
    _write_secret(path, created["key"])
    for token in older:
        accounts.delete_token(account["id"], token["id"])
    logger.info(
        "Grafana service account %s (id %s, %s): new token written to %s, %d older revoked",
        SERVICE_ACCOUNT,
        account["id"],
        account.get("role", DASHBOARD_ROLE),
        path,
        len(older),
    )
    return ServiceAccount(
        id=int(account["id"]),
        created=not found,
        token_file=path,
        revoked=len(older),
    )


def _write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` readable by its owner only, replacing the file whole."""
    partial = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret)
    os.replace(partial, path)


app = typer.Typer(help="Grafana: the lakeloop dashboards, datasource and alerting as code.")


@app.callback()
def grafana_commands() -> None:
    """Grafana: the lakeloop dashboards, datasource and alerting as code (a command group)."""


@app.command("sync")
def sync_command() -> None:
    """Push the Prometheus datasource, the lakeloop dashboards and alerting to the configured
    Grafana."""
    settings = load_settings()
    try:
        synced = sync(settings)
    except GrafanaNotConfiguredError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from error
    except GrafanaForbiddenError as error:
        url = settings.observability.grafana_url
        typer.echo(f"cannot sync Grafana at {url}: {error}", err=True)
        raise typer.Exit(1) from error
    # A refused token, a wrong URL, an invalid dashboard: say so in one line, no traceback.
    except Exception as error:
        url = settings.observability.grafana_url
        typer.echo(f"cannot sync Grafana at {url}: {type(error).__name__}: {error}", err=True)
        raise typer.Exit(1) from error
    if synced.datasource_skipped is not None:
        typer.echo(f"skipped: {synced.datasource_skipped}", err=True)
        typer.echo(f"{len(synced.dashboards)} dashboards in folder {synced.folder_uid}:")
    else:
        typer.echo(
            f"datasource {synced.datasource_uid} and {len(synced.dashboards)} dashboards "
            f"in folder {synced.folder_uid}:"
        )
    for url in synced.dashboards:
        typer.echo(f"  {url}")
    if synced.alerting_skipped is not None:
        # No alert rule means no alert ever reaches a person or the gateway: not a success.
        typer.echo(f"skipped: {synced.alerting_skipped}", err=True)
        raise typer.Exit(1)
    typer.echo(
        f"{len(synced.alert_rules)} alert rules in folder {ALERT_FOLDER_UID}, contact points "
        f"{', '.join(synced.contact_points)} and the notification policy tree"
    )


@app.command("service-account")
def service_account_command() -> None:
    """Make the flows' Grafana service account and write a fresh token to its file (as admin)."""
    settings = load_settings()
    try:
        made = provision_service_account(settings)
    except GrafanaNotConfiguredError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from error
    # A refused password, Grafana down: one line, no traceback, never a credential.
    except Exception as error:
        url = settings.observability.grafana_url
        typer.echo(
            f"cannot make the service account in Grafana at {url}: {type(error).__name__}: {error}",
            err=True,
        )
        raise typer.Exit(1) from error
    state = "made" if made.created else "exists"
    typer.echo(
        f"service account {SERVICE_ACCOUNT} ({state}, role {DASHBOARD_ROLE}): token written to "
        f"{made.token_file}, {made.revoked} older revoked"
    )
