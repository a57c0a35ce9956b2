"""The prediction API: an app factory, thin handlers, the model held in a swappable slot."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException
from litestar.logging.config import LoggingConfig
from litestar.middleware import DefineMiddleware
from litestar.middleware.rate_limit import RateLimitConfig, get_remote_address
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Reference, RequestBody
from prometheus_client import CONTENT_TYPE_LATEST

import lakeloop
from api.metrics import ApiMetrics
from api.predictor import ModelLoadError, ModelSlot, Predictor, follow_champion, refresh
from api.schemas import (
    ErrorResponse,
    Feedback,
    FeedbackAccepted,
    Health,
    ModelInfo,
    Prediction,
    PredictionResponse,
    Readiness,
    ReloadResult,
)
from api.service import ApiError, PredictionService, RequestSchema
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.settings import Settings
from lakeloop.stores.prediction_log import (
    FEEDBACK,
    PREDICTIONS,
    LogLookup,
    SegmentWriter,
    feedback_table,
    lookup_lag,
    prediction_table,
)
from lakeloop.swagger import ASSETS_PATH, SCHEMA_PATH, swagger_assets, swagger_page

logger = logging.getLogger(__name__)

_SCHEMAS = "#/components/schemas/{name}"
_ERRORS = {
    400: ResponseSpec(ErrorResponse, generate_examples=False, description="The body is not JSON."),
    413: ResponseSpec(
        ErrorResponse,
        generate_examples=False,
        description="Body or batch over the configured limits.",
    ),
    422: ResponseSpec(
        ErrorResponse, generate_examples=False, description="Every bad field, named."
    ),
    503: ResponseSpec(
        ErrorResponse, generate_examples=False, description="No champion model loaded yet."
    ),
}

_PREDICT_ERRORS = {
    **_ERRORS,
    401: ResponseSpec(
        ErrorResponse,
        generate_examples=False,
        description="Missing or unknown client token (only when the API is configured with "
        "prediction tokens: `LAKELOOP_API__PREDICTION_TOKENS`).",
    ),
    429: ResponseSpec(
        ErrorResponse,
        generate_examples=False,
        description="Over the client's limit per minute (`LAKELOOP_API__PREDICTIONS_PER_MINUTE`); "
        "`RateLimit-Reset` says when to retry.",
    ),
}


def _error_response(_: Request[Any, Any, Any], error: Exception) -> Response[ErrorResponse]:
    """Every error answers the same shape: status, detail, field errors (and the headers the
    error carries: when to retry after a 429, or after a 404 for a prediction not logged yet)."""
    headers: dict[str, str] = {}
    if isinstance(error, ApiError):
        body = error.response
        headers.update(error.headers)
    elif isinstance(error, HTTPException):
        body = ErrorResponse(status_code=error.status_code, detail=str(error.detail))
        headers.update(error.headers or {})
    else:
        body = ErrorResponse(status_code=500, detail="internal error")
    if body.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(body, status_code=body.status_code, headers=headers or None)


def _authorize(request: Request[Any, Any, Any], settings: Settings) -> None:
    # Read per call, not at start-up: the deploy step may create the stored token first.
    token = settings.api_admin_token()
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Constant-time comparison: the time taken says nothing about how much of the token matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "a valid `Authorization: Bearer <admin token>` header is required")


def _rate_limits(
    settings: Settings, clients: dict[str, str]
) -> tuple[list[DefineMiddleware], list[DefineMiddleware]]:
    """The middleware that limits feedback per client (by its token's name; a request without a
    valid token, by its address) and, when configured, predictions per client address; each
    answers 429 beyond its limit, with ``RateLimit-*`` headers saying when to retry."""

    def feedback_sender(request: Request[Any, Any, Any]) -> str:
        client = token_client(request.headers.get("authorization", ""), clients)
        return f"feedback:{client}" if client else f"feedback@{get_remote_address(request)}"

    predicting_clients = settings.prediction_clients()

    def predicting_address(request: Request[Any, Any, Any]) -> str:
        client = token_client(request.headers.get("authorization", ""), predicting_clients)
        return f"predict:{client}" if client else f"predict@{get_remote_address(request)}"

    feedback = RateLimitConfig(
        ("minute", settings.api.feedback_per_minute), identifier_for_request=feedback_sender
    )
    per_minute = settings.api.predictions_per_minute
    predictions = (
        []
        if per_minute is None
        else [
            RateLimitConfig(
                ("minute", per_minute), identifier_for_request=predicting_address
            ).middleware
        ]
    )
    return [feedback.middleware], predictions


def _check_caller(request: Request[Any, Any, Any], clients: dict[str, str]) -> None:
    """With client tokens set (``clients``), a 401 before the body is read unless the request
    carries one of them."""
    if clients and not token_client(request.headers.get("authorization", ""), clients):
        raise ApiError(401, "a valid `Authorization: Bearer <client token>` header is required")


def token_client(authorization: str, clients: dict[str, str]) -> str | None:
    """The client whose token the ``Authorization`` header carries, else ``None``. Every token
    is compared, each in constant time: the time taken says neither which client matched nor
    how much of a token did."""
    scheme, _, given = authorization.partition(" ")
    found = None
    for name, token in clients.items():
        if hmac.compare_digest(given.encode(), token.encode()):
            found = name
    return found if scheme.lower() == "bearer" else None


def _request_bodies(schema: RequestSchema) -> tuple[dict[str, Any], dict[str, str]]:
    """JSON schemas of the bodies this app decodes itself, and which path takes which."""
    types = schema.types
    _, components = msgspec.json.schema_components(
        [types.record, types.documented_batch, Feedback], ref_template=_SCHEMAS
    )
    batch = components[types.documented_batch.__name__]
    batch["description"] = "Send `records` or `columns`, not both."
    batch["oneOf"] = [{"required": ["records"]}, {"required": ["columns"]}]
    bodies = {
        "/v1/predict": types.record.__name__,
        "/v1/predict/batch": types.documented_batch.__name__,
        "/v1/feedback": Feedback.__name__,
    }
    return components, bodies


def _description(spec: DatasetSpec) -> str:
    return (
        f"Predicts `{spec.target.name}` from the features of `{spec.name}` under dataset "
        f"description v{spec.version}, the one the served model was trained under (the request "
        "schema swaps with the model). Every answer names the model version and carries a "
        "prediction id to quote in `POST /v1/feedback`."
    )


def document_bodies(app: Litestar, schema: RequestSchema) -> None:
    """Put the request bodies (decoded by the service, not by Litestar) into the OpenAPI
    document, with the schemas generated from the served model's description; called again
    when a model trained under another description is swapped in."""
    openapi = app.openapi_schema
    openapi.info.description = _description(schema.spec)
    # Litestar renders the document to a dict once and serves that copy from then on
    # (`OpenAPIPlugin.provide_openapi_schema`); forget it so the next request renders this one.
    app.plugins.get(OpenAPIPlugin)._openapi_schema = None
    components, bodies = _request_bodies(schema)
    schemas = openapi.components.schemas
    schemas.update(components)  # type: ignore[arg-type] # plain JSON schema dicts render as-is
    for path, name in bodies.items():
        operation = openapi.paths[path].post  # type: ignore[index]
        assert operation is not None
        media = OpenAPIMediaType(schema=Reference(ref=_SCHEMAS.format(name=name)))
        operation.request_body = RequestBody(content={"application/json": media}, required=True)


def _log_state(log: SegmentWriter | None) -> str:
    if log is None:
        return "off"
    return f"failing: {log.last_error}" if log.failing else "ok"


def _why_no_model(slot: ModelSlot, registry: str) -> str:
    """The first reason nothing is served."""
    if slot.last_error:
        return f"the registry is {registry}"
    if slot.failed_version is not None:
        return f"the champion, version {slot.failed_version}, cannot be loaded: {slot.load_error}"
    for known in (slot.blocked, slot.refused):
        if known is not None:
            return f"no champion model loaded; {known.summary}"
    return "no champion model loaded"


def _readiness(
    slot: ModelSlot, *, following: bool, log: SegmentWriter | None = None
) -> Response[Readiness]:
    """Ready while a model answers: a registry outage, a champion that would not load and a
    prediction log that cannot write make it ``degraded`` (still 200: serving matters more than
    following the registry or logging, and taking the instance out of rotation would fix
    neither); only having no model at all is 503."""
    registry = "unknown"
    if slot.last_check is not None:
        registry = f"unreachable: {slot.last_error}" if slot.last_error else "ok"
    elif not following:
        registry = "not followed"
    failed = slot.failed_version
    load_error = slot.load_error or None
    prediction_log = _log_state(log)
    current = slot.current
    blocked = slot.blocked
    training = "unknown" if slot.last_check is None else "ok"
    if blocked is not None:
        training = f"blocked: {blocked.summary}"
    behind = blocked.commits_behind if blocked else None
    if current is None:
        body = Readiness(
            status="not ready",
            detail=_why_no_model(slot, registry),
            registry=registry,
            last_registry_check=slot.last_check,
            failed_version=failed,
            load_error=load_error,
            prediction_log=prediction_log,
            training=training,
            refused_version=slot.refused.version if slot.refused else None,
            refused_reasons=slot.refused.reasons if slot.refused else None,
        )
        return Response(body, status_code=503)
    problems = []
    if slot.last_error:
        problems.append("the registry is unreachable, so a new champion will not be picked up")
    if failed is not None:
        problems.append(f"the champion, version {failed}, cannot be loaded: {slot.load_error}")
    if log is not None and log.failing:
        problems.append(f"predictions are not being logged: {log.last_error}")
    if blocked is not None:
        problems.append(f"the champion is stale: {blocked.summary}")
    body = Readiness(
        status="degraded" if problems else "ready",
        detail="; ".join([f"serving version {current.version}", *problems]),
        model_version=current.version,
        registry=registry,
        last_registry_check=slot.last_check,
        failed_version=failed,
        load_error=load_error,
        prediction_log=prediction_log,
        training=training,
        champion_commits_behind=behind,
    )
    return Response(body)


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
    metrics = ApiMetrics.for_target(spec.target)
    log, feedback_log = _logs(settings, spec, metrics)
    lookup = None
    if log is not None and feedback_log is not None:
        lookup = LogLookup(log, feedback_log, lag=lookup_lag(settings.api.log_flush_seconds))
    service = PredictionService(
        spec,
        slot,
        max_batch=settings.api.max_batch,
        metrics=metrics,
        log=log,
        feedback_log=feedback_log,
        lookup=lookup,
        unknown_predictions=settings.api.unknown_predictions,
    )

    def swapped(predictor: Predictor) -> None:
        metrics.swaps.inc()
        metrics.served(predictor.version)
        document_bodies(app, service.schema(predictor))

    slot.on_load_failure = lambda version: metrics.load_failures.labels(version).inc()
    if slot.current is not None:
        metrics.served(slot.current.version)
    handlers = _handlers(settings, service, following=follow_registry)
    known = frozenset(path for handler in handlers for path in handler.paths)
    metrics.seed(
        (path, method, handler.status_code)
        for handler in handlers
        for path in handler.paths
        for method in sorted(handler.http_methods)
    )

    @asynccontextmanager
    async def running(_: Litestar) -> AsyncIterator[None]:
        for writer in (log, feedback_log):
            if writer is not None:
                writer.start()
        watcher = None
        if follow_registry:
            watcher = asyncio.create_task(follow_champion(settings, slot, example=service.example))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            for writer in (log, feedback_log):
                if writer is not None:
                    await anyio.to_thread.run_sync(writer.stop)  # flushes what is queued

    app = Litestar(
        route_handlers=[*handlers, swagger_assets()],
        lifespan=[running],
        # Swagger UI's files are a browser loading the docs page, not API traffic: uncounted.
        middleware=[metrics.middleware(known, unmeasured=(f"{ASSETS_PATH}/",))],
        exception_handlers={ApiError: _error_response, HTTPException: _error_response},
        request_max_body_size=settings.api.max_body_bytes,
        # A 500 must leave its traceback in the log (Litestar logs them only in debug mode).
        logging_config=LoggingConfig(log_exceptions="always"),
        cors_config=CORSConfig(allow_origins=settings.api.cors_origins)
        if settings.api.cors_origins
        else None,
        openapi_config=OpenAPIConfig(
            title="lakeloop prediction API",
            version=lakeloop.__version__,
            description=_description(spec),
            path=SCHEMA_PATH,
            use_handler_docstrings=True,
            # Its scripts and styles served by this app, not a CDN: the page works offline.
            render_plugins=[swagger_page()],
        ),
    )
    slot.on_swap = swapped
    document_bodies(app, service.schema(slot.current))
    app.state.service = service
    return app


def _logs(
    settings: Settings, spec: DatasetSpec, metrics: ApiMetrics
) -> tuple[SegmentWriter | None, SegmentWriter | None]:
    if not settings.api.log_predictions:
        return None, None
    writers = []
    store = settings.object_store
    for name, to_table in ((PREDICTIONS, prediction_table(spec)), (FEEDBACK, feedback_table)):
        dropped = metrics.log_dropped.labels(name)
        write_errors, lost = metrics.log_write_errors.labels(name), metrics.log_lost.labels(name)

        def failed(rows: int, write_errors: Any = write_errors, lost: Any = lost) -> None:
            write_errors.inc()
            lost.inc(rows)

        writers.append(
            SegmentWriter(
                store.child(name),
                to_table,
                max_rows=settings.api.log_queue_rows,
                flush_rows=settings.api.log_flush_rows,
                flush_seconds=settings.api.log_flush_seconds,
                on_drop=dropped.inc,
                on_write_error=failed,
            )
        )
    return writers[0], writers[1]


def _handlers(settings: Settings, service: PredictionService, *, following: bool) -> list[Any]:
    slot = service.slot
    # Read once: configured, or generated into the state folder on first use (the command line
    # reads the same file to report prices).
    feedback_clients = settings.feedback_clients()
    prediction_clients = settings.prediction_clients()
    feedback_limit, prediction_limit = _rate_limits(settings, feedback_clients)

    @post(
        "/v1/predict",
        operation_id="predict",
        middleware=prediction_limit,
        summary="Predict one record",
        status_code=200,
        responses=_PREDICT_ERRORS,
    )
    async def predict(request: Request[Any, Any, Any]) -> Prediction:
        """Predict the target for one record (the body is the record itself)."""
        _check_caller(request, prediction_clients)
        body = await request.body()
        predictor, schema = service.served()
        record = schema.decode_record(body)
        return await service.answer_one(service.loaded(predictor), record)

    @post(
        "/v1/predict/batch",
        operation_id="predictBatch",
        middleware=prediction_limit,
        summary="Predict many records",
        status_code=200,
        responses=_PREDICT_ERRORS,
    )
    async def predict_batch(request: Request[Any, Any, Any]) -> PredictionResponse:
        """Predict the target for many records, sent as `records` or as `columns`."""
        _check_caller(request, prediction_clients)
        body = await request.body()
        served, schema = service.served()
        records, columns = schema.decode_batch(body)
        predictor = service.loaded(served)
        if service.needs_thread(records, columns):
            values, matrix = await anyio.to_thread.run_sync(
                service.predict_batch, predictor, records, columns
            )
        else:
            values, matrix = service.predict_batch(predictor, records, columns)
        return service.answer_batch(
            predictor, values, records=records, columns=columns, matrix=matrix
        )

    @get(
        "/v1/model", operation_id="getModel", summary="Served model", responses={503: _ERRORS[503]}
    )
    async def model_info() -> ModelInfo:
        """The model version being served, its training metrics and the lakeFS commit it saw."""
        predictor = service.predictor()
        return _model_info(predictor, alias=settings.mlflow.champion_alias)

    @post(
        "/v1/feedback",
        operation_id="sendFeedback",
        middleware=feedback_limit,
        summary="Report an actual value",
        status_code=202,
        responses={
            **{code: _ERRORS[code] for code in (400, 413, 422)},
            404: ResponseSpec(
                ErrorResponse,
                generate_examples=False,
                description="The prediction id is not in the prediction log (unless the API "
                "keeps such reports as `unmatched`: `LAKELOOP_API__UNKNOWN_PREDICTIONS`). While "
                "the id is only seconds old, the replica that made it may not have logged it "
                "yet: the answer says so and `Retry-After` says when to try again.",
            ),
            401: ResponseSpec(
                ErrorResponse,
                generate_examples=False,
                description="Missing or unknown client token.",
            ),
            429: ResponseSpec(
                ErrorResponse,
                generate_examples=False,
                description="Over the client's limit per minute; `RateLimit-Reset` says when "
                "to retry.",
            ),
        },
    )
    async def feedback(request: Request[Any, Any, Any]) -> FeedbackAccepted:
        """Report the real value for an earlier prediction (it measures the champion's error
        and becomes training data at the next retrain): only a client with a token may, sent as
        `Authorization: Bearer <client token>`; the report records the client's name. A
        `prediction_id` must be one the API issued and logged; a second report for it is a
        `correction` (the latest counts) and the answer says which value it replaces."""
        client = token_client(request.headers.get("authorization", ""), feedback_clients)
        if client is None:
            raise ApiError(401, "a valid `Authorization: Bearer <client token>` header is required")
        body = await request.body()
        # The prediction id is looked up in the log's segments (maybe on S3): not on the loop.
        return await anyio.to_thread.run_sync(partial(service.feedback, body, client=client))

    @post(
        "/v1/admin/reload",
        operation_id="reloadModel",
        summary="Check the registry now",
        status_code=200,
        responses={
            401: ResponseSpec(
                ErrorResponse, generate_examples=False, description="Missing or wrong admin token."
            )
        },
    )
    async def reload(request: Request[Any, Any, Any]) -> ReloadResult:
        """Check the registry's champion now and swap it in if it moved (needs the admin token)."""
        _authorize(request, settings)
        previous = slot.current.version if slot.current else None
        try:
            changed = await refresh(settings, slot, example=service.example, force=True)
        except ModelLoadError as error:
            raise ApiError(
                503, f"cannot load the champion, {error}; still serving {previous}"
            ) from error
        except Exception as error:
            raise ApiError(503, f"cannot reach the registry: {slot.last_error or error}") from error
        current = slot.current.version if slot.current else None
        return ReloadResult(changed=changed, version=current, previous_version=previous)

    @get("/healthz", operation_id="health", summary="Liveness")
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @get("/readyz", operation_id="ready", summary="Readiness")
    async def readyz() -> Response[Readiness]:
        """Ready (200) once a model is loaded; degraded (200) while the registry is unreachable,
        the champion will not load or the prediction log cannot write; 503 without a model."""
        return _readiness(slot, following=following, log=service.log)

    @get("/metrics", operation_id="metrics", summary="Prometheus metrics", media_type="text/plain")
    async def prometheus() -> Response[bytes]:
        """Request, prediction, log and swap metrics in the Prometheus text format."""
        return Response(_metrics_text(service), media_type=CONTENT_TYPE_LATEST)

    return [predict, predict_batch, model_info, feedback, reload, healthz, readyz, prometheus]


def _metrics_text(service: PredictionService) -> bytes:
    """The API's metrics, with the gauges read at scrape time brought up to date."""
    metrics = service.metrics
    for name, writer in ((PREDICTIONS, service.log), (FEEDBACK, service.feedback_log)):
        if writer is not None:
            metrics.log_queued.labels(name).set(writer.queued_rows)
    metrics.blocked(service.slot.blocked)
    return metrics.render()


def _model_info(predictor: Predictor, *, alias: str) -> ModelInfo:
    return ModelInfo(
        name=predictor.name,
        version=predictor.version,
        alias=alias,
        run_id=predictor.run_id,
        lakefs_repository=predictor.lakefs_repository,
        lakefs_commit_id=predictor.lakefs_commit_id,
        metrics=predictor.metrics,
        loaded_at=predictor.loaded_at,
        dataset=predictor.dataset,
        dataset_digest=predictor.dataset_digest,
    )
