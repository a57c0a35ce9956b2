"""A stand-in for the part of Grafana's HTTP API that ``lakeloop.grafana`` calls.

It answers with Grafana's own shapes and status codes (404 with a ``message`` for a missing
folder or datasource, 412 for an existing dashboard saved without ``overwrite``, 401 for a wrong
token) and keeps what it was sent, so tests assert what Grafana would have stored. Endpoints:
``GET /api/frontend/settings`` (the client's health check), ``GET|POST /api/folders``,
``GET|PUT /api/datasources/uid/{uid}``, ``POST /api/datasources``, ``POST /api/dashboards/db``,
``POST /api/annotations``, and the service accounts' (``pkg/services/serviceaccounts/api``):
``GET /api/serviceaccounts/search``, ``POST /api/serviceaccounts``,
``GET|POST /api/serviceaccounts/{id}/tokens``, ``DELETE /api/serviceaccounts/{id}/tokens/{id}``
(org Admin only; a new token is a Bearer token with the account's role until it is deleted).
Basic auth with ``admin_password`` signs in as the admin (role Admin).

The alerting provisioning API (``pkg/services/ngalert/api/api_provisioning.go``, payloads of
``pkg/services/ngalert/api/tooling/definitions/provisioning_*.go``):
``GET|POST /api/v1/provisioning/contact-points``, ``PUT /api/v1/provisioning/contact-points/{uid}``
(202), ``GET|PUT /api/v1/provisioning/policies`` (202), ``GET|PUT
/api/v1/provisioning/folder/{folderUid}/rule-groups/{group}`` (the PUT replaces the whole group,
200) and ``GET /api/v1/provisioning/alert-rules/{uid}``. Each write records its provenance:
``api``, or none when the request carries ``X-Disable-Provenance`` (any value, as
``determineProvenance`` reads it). Payloads are validated as Grafana's structs and validation
would (required fields, uid pattern, durations, the folder and each query's datasource must
exist, the condition must name a query, the policy's receivers must exist) with a 400 and a
``message``; a write that changes nothing leaves the object's ``version`` as it was.

Each token carries an organisation role, and each endpoint asks for the permission Grafana's
route asks for (``pkg/api/api.go``), granted to the basic roles as Grafana's fixed roles grant
it: data sources are written by Admin only (``fixed:datasources:writer``), folders, dashboards
and organisation annotations by Editor and Admin, reads by everyone. A role without the
permission gets Grafana's 403 body (``title``, ``message`` naming the permission,
``accessErrorId``).
"""

from __future__ import annotations

import base64
import hmac
import itertools
import re
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from litestar import Litestar, Request, Response, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import BaseRouteHandler
from litestar.params import Parameter

VERSION = "11.3.0"

Role = Literal["Viewer", "Editor", "Admin"]
_RANK: dict[Role, int] = {"Viewer": 0, "Editor": 1, "Admin": 2}
GRANTED: dict[str, Role] = {
    "folders:read": "Viewer",
    "folders:create": "Editor",
    "datasources:read": "Viewer",  # OSS grants the data source reader to Viewer
    "datasources:create": "Admin",
    "datasources:write": "Admin",
    "dashboards:write": "Editor",
    "annotations:create": "Editor",
    "serviceaccounts:read": "Admin",
    "serviceaccounts:create": "Admin",
    "serviceaccounts:write": "Admin",
    "alert.notifications.receivers:read": "Viewer",
    "alert.notifications.receivers:create": "Editor",
    "alert.notifications.receivers:write": "Editor",
    "alert.notifications.receivers.protected:write": "Admin",
    "alert.rules:read": "Viewer",
    "alert.rules:write": "Editor",
    "alert.provisioning:write": "Admin",
}
"""The lowest basic role holding each permission the stand-in's endpoints ask for."""


NEEDED = {
    "alert.rules:write": "any of alert.provisioning:write, alert.rules.provisioning:write, "
    "all of alert.rules:read, folders:read, alert.provisioning.provenance:write, "
    "any of alert.rules:write, alert.rules:create, alert.rules:delete",
    "alert.notifications.receivers:create": "any of alert.provisioning:write, "
    "alert.notifications.provisioning:write, all of any of alert.notifications:write, "
    "alert.notifications.receivers:create, alert.provisioning.provenance:write",
    "alert.notifications.receivers:write": "any of alert.provisioning:write, "
    "alert.notifications.provisioning:write, all of any of alert.notifications:write, "
    "alert.notifications.receivers:write, alert.provisioning.provenance:write",
    "alert.provisioning:write": "any of alert.provisioning:write, "
    "alert.notifications.provisioning:write, all of any of alert.notifications:write, "
    "alert.notifications.routes:write, alert.provisioning.provenance:write",
}
"""How Grafana's 403 names the evaluator of an alerting route, by the stand-in's permission."""

EXPRESSION_UID = "__expr__"
NO_DATA_STATES = {"Alerting", "NoData", "OK", "KeepLast"}
ERROR_STATES = {"Alerting", "Error", "OK", "KeepLast"}
BASE_INTERVAL_SECONDS = 10
"""The scheduler's base interval: a group's interval must be a multiple of it."""
_UID = re.compile(r"^[a-zA-Z0-9\-_]{1,40}$")
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$|^0$")
_MATCH_TYPES = {"=", "!=", "=~", "!~"}
_SECRET_WEBHOOK_SETTINGS = ("password", "authorization_credentials")
"""Secure settings of a webhook, shown ``[REDACTED]`` when read back."""


def _invalid(message: str) -> Response[dict[str, str]]:
    return Response({"message": message}, status_code=400)


def _rule_problems(
    rule: dict[str, Any], folder: str, group: str, datasources: set[str]
) -> list[str]:
    """What Grafana's validation (``validateAlertRule`` and the query builder) refuses."""
    uid = rule.get("uid") or ""
    data = rule.get("data") or []
    labelled = [rule.get("labels") or {}, rule.get("annotations") or {}]
    checks = [
        (bool(uid) and not _UID.match(uid), f"uid {uid!r} must match ^[a-zA-Z0-9-_]+$ (max 40)"),
        (not 1 <= len(rule.get("title") or "") <= 190, "title must be 1 to 190 characters"),
        (not rule.get("orgID"), "orgID is required"),
        (rule.get("folderUID") not in (None, folder), f"folderUID is not {folder}"),
        (rule.get("ruleGroup") not in (None, group), f"ruleGroup is not {group}"),
        (not data, "no queries or expressions are found"),
        (
            rule.get("condition") not in [query.get("refId") for query in data],
            f"condition {rule.get('condition')!r} names no query",
        ),
        (not all(isinstance(q.get("model"), dict) for q in data), "a query has no model"),
        (rule.get("noDataState") not in NO_DATA_STATES, "unknown noDataState"),
        (rule.get("execErrState") not in ERROR_STATES, "unknown execErrState"),
        (not _DURATION.match(str(rule.get("for"))), f"for {rule.get('for')!r} is no duration"),
        (
            not all(isinstance(v, str) for values in labelled for v in values.values()),
            "labels and annotations must map strings to strings",
        ),
    ]
    problems = [f"invalid alert rule {uid}: {message}" for failed, message in checks if failed]
    return problems + [
        f"failed to build query '{query.get('refId')}': data source not found"
        for query in data
        if query.get("datasourceUid") not in datasources | {EXPRESSION_UID}
    ]


def _contact_point(uid: str, data: dict[str, Any]) -> dict[str, Any]:
    """An ``EmbeddedContactPoint`` as Grafana stores it from a create or an update body."""
    return {
        "uid": uid,
        "name": data["name"],
        "type": data["type"],
        "settings": data["settings"],
        "disableResolveMessage": bool(data.get("disableResolveMessage", False)),
    }


DEFAULT_RECEIVER = "grafana-default-email"
"""The contact point of a new organisation's default configuration, its policy tree's root."""


def _route_problems(route: dict[str, Any], receivers: set[str], root: bool) -> list[str]:
    """What Grafana's route validation refuses (``Route.Validate``, provisioning_policies.go)."""
    receiver = route.get("receiver")
    checks = [
        (root and not receiver, "root route must specify a default receiver"),
        (bool(receiver) and receiver not in receivers, f"receiver '{receiver}' does not exist"),
        (
            root and bool(route.get("object_matchers") or route.get("matchers")),
            "root route must not have any matchers",
        ),
        (
            any(
                len(matcher) != 3 or matcher[1] not in _MATCH_TYPES
                for matcher in route.get("object_matchers") or []
            ),
            "bad matcher",
        ),
        (
            any(
                not _DURATION.match(str(route[key]))
                for key in ("group_wait", "group_interval", "repeat_interval")
                if key in route
            ),
            "a group_wait, group_interval or repeat_interval is no duration",
        ),
    ]
    problems = [f"invalid object specification: {message}" for failed, message in checks if failed]
    for child in route.get("routes") or []:
        problems += _route_problems(child, receivers, root=False)
    return problems


def _forbidden(permission: str) -> Response[dict[str, str]]:
    return Response(
        {
            "title": "Access denied",
            "message": "You'll need additional permissions to perform this action. "
            f"Permissions needed: {NEEDED.get(permission, permission)}",
            "accessErrorId": "ACE0000000001",
        },
        status_code=403,
    )


def _not_found(message: str) -> Response[dict[str, str]]:
    return Response({"message": message}, status_code=404)


def _unauthorized(_: Request[Any, Any, Any], __: Exception) -> Response[dict[str, str]]:
    return Response({"message": "Unauthorized"}, status_code=401)


@dataclass
class GrafanaStandIn:
    token: str | None = None
    role: Role = "Admin"
    """The role of ``token``."""
    tokens: dict[str, Role] = field(default_factory=dict)
    """More tokens, each with its organisation role."""
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    """uid -> {"dashboard": model, "folderUid": ..., "version": n}."""
    annotations: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    """The Authorization header of every request, in order."""
    admin_password: str | None = None
    """The password of the ``admin`` user (Basic auth), if it may sign in."""
    service_accounts: dict[int, dict[str, Any]] = field(default_factory=dict)
    account_tokens: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    """Service account id -> its tokens (``id``, ``name``, ``key``)."""
    contact_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    """uid -> the EmbeddedContactPoint as stored (secrets in clear), with ``provenance`` and
    ``version``."""
    policy: dict[str, Any] | None = None
    """The notification policy tree as stored, with ``provenance`` and ``version``."""
    rule_groups: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """(folder uid, group) -> ``title``, ``folderUid``, ``interval``, ``rules`` (each rule as
    stored, with ``provenance`` and ``version``)."""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        if self.token is not None:
            self.tokens[self.token] = self.role

    def _role(self, authorization: str) -> Role | None:
        found = None
        for token, role in self.tokens.items():
            if hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
                found = role
        if self.admin_password is not None:
            basic = base64.b64encode(f"admin:{self.admin_password}".encode()).decode()
            if hmac.compare_digest(authorization.encode(), f"Basic {basic}".encode()):
                found = "Admin"
        return found

    def app(self) -> Litestar:
        def authorized(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
            given = connection.headers.get("authorization", "")
            self.authorizations.append(given)
            if self._role(given) is None:
                raise NotAuthorizedException("Unauthorized")

        def denied(request: Request[Any, Any, Any], permission: str) -> Response[Any] | None:
            role = self._role(request.headers.get("authorization", ""))
            if role is None or _RANK[role] < _RANK[GRANTED[permission]]:
                return _forbidden(permission)
            return None

        @get("/api/frontend/settings")
        async def frontend_settings() -> dict[str, Any]:
            return {"buildInfo": {"version": VERSION, "edition": "Open Source"}}

        @get("/api/folders/{uid:str}")
        async def get_folder(request: Request[Any, Any, Any], uid: str) -> Response[Any]:
            if refused := denied(request, "folders:read"):
                return refused
            if uid not in self.folders:
                return _not_found("folder not found")
            return Response(self.folders[uid])

        @post("/api/folders", status_code=200)
        async def create_folder(
            request: Request[Any, Any, Any], data: dict[str, Any]
        ) -> Response[Any]:
            if refused := denied(request, "folders:create"):
                return refused
            uid = data.get("uid") or f"f{next(self._ids)}"
            if uid in self.folders:
                return Response(
                    {"message": "a folder with the same uid already exists"}, status_code=409
                )
            folder = {"id": next(self._ids), "uid": uid, "title": data["title"], "version": 1}
            self.folders[uid] = folder
            return Response(folder)

        @get("/api/datasources/uid/{uid:str}")
        async def get_datasource(request: Request[Any, Any, Any], uid: str) -> Response[Any]:
            if refused := denied(request, "datasources:read"):
                return refused
            if uid not in self.datasources:
                return _not_found("Data source not found")
            return Response(self.datasources[uid])

        @post("/api/datasources", status_code=200)
        async def create_datasource(
            request: Request[Any, Any, Any], data: dict[str, Any]
        ) -> Response[Any]:
            if refused := denied(request, "datasources:create"):
                return refused
            if data["uid"] in self.datasources:
                return Response(
                    {"message": "data source with the same uid already exists"}, status_code=409
                )
            stored = data | {"id": next(self._ids)}
            self.datasources[data["uid"]] = stored
            return Response(
                {"datasource": stored, "id": stored["id"], "message": "Datasource added"}
            )

        @put("/api/datasources/uid/{uid:str}")
        async def update_datasource(
            request: Request[Any, Any, Any], uid: str, data: dict[str, Any]
        ) -> Response[Any]:
            if refused := denied(request, "datasources:write"):
                return refused
            if uid not in self.datasources:
                return _not_found("Data source not found")
            stored = data | {"id": self.datasources[uid]["id"]}
            self.datasources[uid] = stored
            return Response(
                {"datasource": stored, "id": stored["id"], "message": "Datasource updated"}
            )

        @post("/api/dashboards/db", status_code=200)
        async def save_dashboard(
            request: Request[Any, Any, Any], data: dict[str, Any]
        ) -> Response[Any]:
            if refused := denied(request, "dashboards:write"):
                return refused
            model, folder = data["dashboard"], data.get("folderUid", "")
            if folder and folder not in self.folders:
                return Response({"message": "folder not found"}, status_code=400)
            uid = model["uid"]
            existing = self.dashboards.get(uid)
            if existing and not data.get("overwrite"):
                return Response(
                    {
                        "message": "The dashboard has been changed by someone else",
                        "status": "version-mismatch",
                    },
                    status_code=412,
                )
            version = existing["version"] + 1 if existing else 1
            self.dashboards[uid] = {"dashboard": model, "folderUid": folder, "version": version}
            slug = re.sub(r"[^a-z0-9]+", "-", model["title"].lower()).strip("-")
            return Response(
                {
                    "id": next(self._ids),
                    "uid": uid,
                    "url": f"/d/{uid}/{slug}",
                    "status": "success",
                    "version": version,
                    "slug": slug,
                }
            )

        @post("/api/annotations", status_code=200)
        async def add_annotation(request: Request[Any, Any, Any]) -> Response[Any]:
            if refused := denied(request, "annotations:create"):
                return refused
            annotation = await request.json() | {"id": next(self._ids)}
            self.annotations.append(annotation)
            return Response({"message": "Annotation added", "id": annotation["id"]})

        @get("/api/serviceaccounts/search")
        async def search_accounts(
            request: Request[Any, Any, Any],
            search: Annotated[str, Parameter(query="query")] = "",
            page: int = 1,
            perpage: int = 1000,
        ) -> Response[Any]:
            if refused := denied(request, "serviceaccounts:read"):
                return refused
            matching = [
                account | {"tokens": len(self.account_tokens[account["id"]])}
                for account in self.service_accounts.values()
                if search.lower() in account["name"].lower()
            ]
            shown = matching[(page - 1) * perpage : page * perpage]
            return Response(
                {
                    "totalCount": len(matching),
                    "serviceAccounts": shown,
                    "page": page,
                    "perPage": perpage,
                }
            )

        @post("/api/serviceaccounts", status_code=201)
        async def create_account(
            request: Request[Any, Any, Any], data: dict[str, Any]
        ) -> Response[Any]:
            if refused := denied(request, "serviceaccounts:create"):
                return refused
            if any(a["name"] == data["name"] for a in self.service_accounts.values()):
                return Response({"message": "Failed to create service account"}, status_code=400)
            account_id = next(self._ids)
            login = f"sa-1-{data['name']}"
            account = {
                "id": account_id,
                "uid": f"sa{account_id}",
                "name": data["name"],
                "login": login,
                "orgId": 1,
                "isDisabled": bool(data.get("isDisabled", False)),
                "role": data.get("role", "Viewer"),
                "tokens": 0,
            }
            self.service_accounts[account_id] = account
            self.account_tokens[account_id] = []
            return Response(account, status_code=201)

        @get("/api/serviceaccounts/{account_id:int}/tokens")
        async def list_tokens(request: Request[Any, Any, Any], account_id: int) -> Response[Any]:
            if refused := denied(request, "serviceaccounts:read"):
                return refused
            return Response(
                [
                    {"id": t["id"], "name": t["name"], "hasExpired": False, "expiration": None}
                    for t in self.account_tokens.get(account_id, [])
                ]
            )

        @post("/api/serviceaccounts/{account_id:int}/tokens", status_code=200)
        async def create_token(
            request: Request[Any, Any, Any], account_id: int, data: dict[str, Any]
        ) -> Response[Any]:
            if refused := denied(request, "serviceaccounts:write"):
                return refused
            if account_id not in self.service_accounts:
                return _not_found("Failed to retrieve service account")
            if any(t["name"] == data["name"] for t in self.account_tokens[account_id]):
                return Response(
                    {"message": "service account token with given name already exists"},
                    status_code=409,
                )
            token = {
                "id": next(self._ids),
                "name": data["name"],
                "key": f"glsa_{secrets.token_hex(16)}",
            }
            self.account_tokens[account_id].append(token)
            self.tokens[token["key"]] = self.service_accounts[account_id]["role"]
            return Response({"id": token["id"], "name": token["name"], "key": token["key"]})

        @delete("/api/serviceaccounts/{account_id:int}/tokens/{token_id:int}", status_code=200)
        async def delete_token(
            request: Request[Any, Any, Any], account_id: int, token_id: int
        ) -> Response[Any]:
            if refused := denied(request, "serviceaccounts:write"):
                return refused
            kept = self.account_tokens.get(account_id, [])
            [gone] = [t for t in kept if t["id"] == token_id] or [None]
            if gone is None:
                return _not_found("Failed to delete API key")
            kept.remove(gone)
            del self.tokens[gone["key"]]
            return Response({"message": "API key deleted"})

        def provenance(request: Request[Any, Any, Any]) -> str:
            return "" if "x-disable-provenance" in request.headers else "api"

        def versioned(
            old: dict[str, Any] | None, new: dict[str, Any], source: str
        ) -> dict[str, Any]:
            """``new`` as stored: the old version when nothing changed, else the next."""
            stored = new | {"provenance": source}
            if old is not None:
                unchanged = {k: v for k, v in old.items() if k != "version"} == stored
                return stored | {"version": old["version"] + (0 if unchanged else 1)}
            return stored | {"version": 1}

        def shown(point: dict[str, Any]) -> dict[str, Any]:
            settings = dict(point["settings"])
            for key in _SECRET_WEBHOOK_SETTINGS:
                if key in settings:
                    settings[key] = "[REDACTED]"
            return {k: v for k, v in point.items() if k != "version"} | {"settings": settings}

        def contact_point_problem(data: dict[str, Any]) -> str | None:
            for key in ("name", "type"):
                if not data.get(key):
                    return f"invalid object specification: contact point '{key}' is required"
            if not isinstance(data.get("settings"), dict):
                return "contact point 'settings' field should not be empty"
            uid = data.get("uid") or ""
            if uid and not _UID.match(uid):
                return f"invalid object specification: uid {uid!r} is not valid"
            if data["type"] == "webhook":
                url = data["settings"].get("url") or ""
                if not re.match(r"^https?://[^/\s]+", url):
                    return f"failed to validate integration (UID {uid}): invalid url {url!r}"
            return None

        @get("/api/v1/provisioning/contact-points")
        async def get_contact_points(
            request: Request[Any, Any, Any], name: str | None = None
        ) -> Response[Any]:
            if refused := denied(request, "alert.notifications.receivers:read"):
                return refused
            return Response(
                [
                    shown(point)
                    for point in self.contact_points.values()
                    if name is None or point["name"] == name
                ]
            )

        @post("/api/v1/provisioning/contact-points", status_code=202)
        async def create_contact_point(
            request: Request[Any, Any, Any], data: dict[str, Any]
        ) -> Response[Any]:
            if refused := denied(request, "alert.notifications.receivers:create"):
                return refused
            if problem := contact_point_problem(data):
                return _invalid(problem)
            uid = data.get("uid") or f"c{next(self._ids)}"
            if uid in self.contact_points:
                return _invalid(f"invalid object specification: uid {uid} is already used")
            point = _contact_point(uid, data)
            self.contact_points[uid] = versioned(None, point, provenance(request))
            return Response(shown(self.contact_points[uid]), status_code=202)

        @put("/api/v1/provisioning/contact-points/{uid:str}", status_code=202)
        async def update_contact_point(
            request: Request[Any, Any, Any], uid: str, data: dict[str, Any]
        ) -> Response[Any]:
            if refused := denied(request, "alert.notifications.receivers:write"):
                return refused
            if problem := contact_point_problem(data | {"uid": uid}):
                return _invalid(problem)
            old = self.contact_points.get(uid)
            if old is None:
                return _not_found(f"contact point with uid {uid} not found")
            if old["settings"].get("url") != data["settings"].get("url") and (
                refused := denied(request, "alert.notifications.receivers.protected:write")
            ):
                return refused
            point = _contact_point(uid, data)
            self.contact_points[uid] = versioned(old, point, provenance(request))
            return Response({"message": "contactpoint updated"}, status_code=202)

        @get("/api/v1/provisioning/policies")
        async def get_policies(request: Request[Any, Any, Any]) -> Response[Any]:
            if refused := denied(request, "alert.notifications.receivers:read"):
                return refused
            if self.policy is None:  # Grafana's default configuration (notifier/alertmanager)
                return Response(
                    {"receiver": DEFAULT_RECEIVER, "group_by": ["grafana_folder", "alertname"]}
                )
            return Response({k: v for k, v in self.policy.items() if k != "version"})

        @put("/api/v1/provisioning/policies", status_code=202)
        async def set_policies(
            request: Request[Any, Any, Any], data: dict[str, Any]
        ) -> Response[Any]:
            if refused := denied(request, "alert.provisioning:write"):
                return refused
            receivers = {point["name"] for point in self.contact_points.values()}
            receivers.add(DEFAULT_RECEIVER)  # in every organisation's default configuration
            if problems := _route_problems(data, receivers, root=True):
                return _invalid("; ".join(problems))
            self.policy = versioned(self.policy, data, provenance(request))
            return Response({"message": "policies updated"}, status_code=202)

        @get("/api/v1/provisioning/folder/{folder:str}/rule-groups/{group:str}")
        async def get_rule_group(
            request: Request[Any, Any, Any], folder: str, group: str
        ) -> Response[Any]:
            if refused := denied(request, "alert.rules:read"):
                return refused
            stored = self.rule_groups.get((folder, group))
            if stored is None:
                return _not_found("rule group not found under this folder")
            return Response(stored)

        @put("/api/v1/provisioning/folder/{folder:str}/rule-groups/{group:str}")
        async def replace_rule_group(
            request: Request[Any, Any, Any], folder: str, group: str, data: dict[str, Any]
        ) -> Response[Any]:
            if refused := denied(request, "alert.rules:write"):
                return refused
            if folder not in self.folders:
                return _invalid(f"invalid alert rule: folder {folder} does not exist")
            interval = data.get("interval")
            if not isinstance(interval, int) or interval <= 0 or interval % BASE_INTERVAL_SECONDS:
                return _invalid(
                    f"invalid alert rule: interval ({interval}) should be non-zero and divided "
                    f"exactly by scheduler interval: {BASE_INTERVAL_SECONDS}s"
                )
            rules = data.get("rules") or []
            titles = [rule.get("title") for rule in rules]
            if len(set(titles)) != len(titles):
                return _invalid("failed to save alert rules: a rule title is used twice")
            for rule in rules:
                if problems := _rule_problems(rule, folder, group, set(self.datasources)):
                    return _invalid("; ".join(problems))
            old = self.rule_groups.get((folder, group))
            old_rules = {rule["uid"]: rule for rule in (old or {}).get("rules", [])}
            source = provenance(request)
            stored = []
            for rule in rules:
                uid = rule.get("uid") or f"r{next(self._ids)}"
                body = rule | {"uid": uid, "folderUID": folder, "ruleGroup": group}
                stored.append(versioned(old_rules.get(uid), body, source))
            self.rule_groups[(folder, group)] = {
                "title": group,
                "folderUid": folder,
                "interval": interval,
                "rules": stored,
            }
            return Response(data | {"title": group, "folderUid": folder})

        @get("/api/v1/provisioning/alert-rules/{uid:str}")
        async def get_alert_rule(request: Request[Any, Any, Any], uid: str) -> Response[Any]:
            if refused := denied(request, "alert.rules:read"):
                return refused
            for stored in self.rule_groups.values():
                for rule in stored["rules"]:
                    if rule["uid"] == uid:
                        return Response(rule)
            return Response(None, status_code=404)

        return Litestar(
            route_handlers=[
                frontend_settings,
                get_folder,
                create_folder,
                get_datasource,
                create_datasource,
                update_datasource,
                save_dashboard,
                add_annotation,
                search_accounts,
                create_account,
                list_tokens,
                create_token,
                delete_token,
                get_contact_points,
                create_contact_point,
                update_contact_point,
                get_policies,
                set_policies,
                get_rule_group,
                replace_rule_group,
                get_alert_rule,
            ],
            guards=[authorized],
            exception_handlers={NotAuthorizedException: _unauthorized},
        )
