"""A stand-in for the part of Grafana's HTTP API that ``lakeloop.grafana`` calls.

It answers with Grafana's own shapes and status codes (404 with a ``message`` for a missing
folder or datasource, 412 for an existing dashboard saved without ``overwrite``, 401 for a wrong
token) and keeps what it was sent, so tests assert what Grafana would have stored. Endpoints:
``GET /api/frontend/settings`` (the client's health check), ``GET|POST /api/folders``,
``GET|PUT /api/datasources/uid/{uid}``, ``POST /api/datasources``, ``POST /api/dashboards/db``,
``POST /api/annotations``.
"""

from __future__ import annotations

import hmac
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar, Request, Response, get, post, put
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import BaseRouteHandler

VERSION = "11.3.0"


def _not_found(message: str) -> Response[dict[str, str]]:
    return Response({"message": message}, status_code=404)


def _unauthorized(_: Request[Any, Any, Any], __: Exception) -> Response[dict[str, str]]:
    return Response({"message": "Unauthorized"}, status_code=401)


@dataclass
class GrafanaStandIn:
    token: str
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    """uid -> {"dashboard": model, "folderUid": ..., "version": n}."""
    annotations: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    """The Authorization header of every request, in order."""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> Litestar:
        def authorized(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
            given = connection.headers.get("authorization", "")
            self.authorizations.append(given)
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                raise NotAuthorizedException("Unauthorized")

        @get("/api/frontend/settings")
        async def frontend_settings() -> dict[str, Any]:
            return {"buildInfo": {"version": VERSION, "edition": "Open Source"}}

        @get("/api/folders/{uid:str}")
        async def get_folder(uid: str) -> Response[dict[str, Any]]:
            if uid not in self.folders:
                return _not_found("folder not found")
            return Response(self.folders[uid])

        @post("/api/folders", status_code=200)
        async def create_folder(data: dict[str, Any]) -> Response[dict[str, Any]]:
            uid = data.get("uid") or f"f{next(self._ids)}"
            if uid in self.folders:
                return Response(
                    {"message": "a folder with the same uid already exists"}, status_code=409
                )
            folder = {"id": next(self._ids), "uid": uid, "title": data["title"], "version": 1}
            self.folders[uid] = folder
            return Response(folder)

        @get("/api/datasources/uid/{uid:str}")
        async def get_datasource(uid: str) -> Response[dict[str, Any]]:
            if uid not in self.datasources:
                return _not_found("Data source not found")
            return Response(self.datasources[uid])

        @post("/api/datasources", status_code=200)
        async def create_datasource(data: dict[str, Any]) -> Response[dict[str, Any]]:
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
        async def update_datasource(uid: str, data: dict[str, Any]) -> Response[dict[str, Any]]:
            if uid not in self.datasources:
                return _not_found("Data source not found")
            stored = data | {"id": self.datasources[uid]["id"]}
            self.datasources[uid] = stored
            return Response(
                {"datasource": stored, "id": stored["id"], "message": "Datasource updated"}
            )

        @post("/api/dashboards/db", status_code=200)
        async def save_dashboard(data: dict[str, Any]) -> Response[dict[str, Any]]:
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
        async def add_annotation(request: Request[Any, Any, Any]) -> dict[str, Any]:
            annotation = await request.json() | {"id": next(self._ids)}
            self.annotations.append(annotation)
            return {"message": "Annotation added", "id": annotation["id"]}

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
            ],
            guards=[authorized],
            exception_handlers={NotAuthorizedException: _unauthorized},
        )
