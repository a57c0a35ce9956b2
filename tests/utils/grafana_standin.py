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
}
"""The lowest basic role holding each permission the stand-in's endpoints ask for."""


def _forbidden(permission: str) -> Response[dict[str, str]]:
    return Response(
        {
            "title": "Access denied",
            "message": "You'll need additional permissions to perform this action. "
            f"Permissions needed: {permission}",
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
            ],
            guards=[authorized],
            exception_handlers={NotAuthorizedException: _unauthorized},
        )
