"""The prediction API: an app factory, thin handlers, the model held in a swappable slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY, HTTP_503_SERVICE_UNAVAILABLE

import lakeloop
from api.predictor import ModelSlot, Predictor, follow_champion
from api.schemas import Health, ModelInfo, ModelRef, PredictionResponse, request_type
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.settings import Settings


def _unprocessable(_: Request[Any, Any, Any], error: ValidationException) -> Response[Any]:
    """Body validation errors are 422 with the offending field named, not Litestar's 400."""
    return Response(
        {"status_code": 422, "detail": error.detail, "errors": error.extra or []},
        status_code=HTTP_422_UNPROCESSABLE_ENTITY,
    )


def _require(slot: ModelSlot) -> Predictor:
    predictor = slot.current
    if predictor is None:
        detail = "no champion model yet: train one by committing data to lakeFS"
        raise HTTPException(status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=detail)
    return predictor


def create_app(
    settings: Settings,
    *,
    spec: DatasetSpec | None = None,
    slot: ModelSlot | None = None,
    follow_registry: bool = True,
) -> Litestar:
    """The API for these settings. Tests pass a ``slot`` holding a small real model and
    ``follow_registry=False``; in production the slot follows the registry's champion."""
    spec = spec or load_spec(settings.dataset)
    slot = slot or ModelSlot()
    request = request_type(spec, max_batch=settings.api.max_batch)
    alias = settings.mlflow.champion_alias

    # The handler's body type is generated from the dataset description at start-up.
    async def predict(data: request) -> PredictionResponse:  # type: ignore[valid-type]
        """Predict the target for one or more records."""
        predictor = _require(slot)
        records = msgspec.to_builtins(data.records)  # type: ignore[attr-defined]
        return PredictionResponse(
            predictions=predictor.predict(records),
            model=ModelRef(name=predictor.name, version=predictor.version),
        )

    predict.__annotations__["data"] = request
    predict_route = post(
        "/v1/predict", operation_id="predict", summary="Predict prices", status_code=200
    )(predict)

    @get("/v1/model", operation_id="getModel", summary="Served model")
    async def model_info() -> ModelInfo:
        """The model version being served and the lakeFS commit it was trained on."""
        predictor = _require(slot)
        return ModelInfo(
            name=predictor.name,
            version=predictor.version,
            alias=alias,
            run_id=predictor.run_id,
            lakefs_repository=predictor.lakefs_repository,
            lakefs_commit_id=predictor.lakefs_commit_id,
            metrics=predictor.metrics,
            loaded_at=predictor.loaded_at,
        )

    @get("/healthz", operation_id="health", summary="Liveness")
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @get("/readyz", operation_id="ready", summary="Readiness")
    async def readyz() -> Response[Health]:
        """Ready once a champion model is loaded."""
        if slot.current is None:
            detail = slot.last_error or "waiting for a champion model in the registry"
            return Response(Health(status="not ready", detail=detail), status_code=503)
        return Response(Health(status="ready", detail=f"serving version {slot.current.version}"))

    lifespan: list[Callable[[Litestar], Any]] = []
    if follow_registry:

        @asynccontextmanager
        async def watch_registry(_: Litestar) -> AsyncIterator[None]:
            watcher = asyncio.create_task(follow_champion(settings, slot))
            try:
                yield
            finally:
                watcher.cancel()

        lifespan.append(watch_registry)

    return Litestar(
        route_handlers=[predict_route, model_info, healthz, readyz],
        lifespan=lifespan,
        exception_handlers={ValidationException: _unprocessable},
        openapi_config=OpenAPIConfig(
            title="lakeloop prediction API",
            version=lakeloop.__version__,
            description=f"Predicts `{spec.target.name}` from the features of `{spec.name}`.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
    )
