"""What the prediction endpoints do, apart from HTTP: decode, predict, log.

Bodies are decoded here with msgspec decoders built once per dataset description (strict: a
number sent as a string is refused): the description the served model was trained under, so the
request schema swaps with the model. Only a body that fails is parsed a second time, leniently,
to name every bad field.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np

from api.coalesce import Coalescer
from api.errors import (
    RecordChecker,
    UnreadableBodyError,
    batch_errors,
    parse_lenient,
    single_errors,
)
from api.ids import made_at, prediction_ids
from api.metrics import ApiMetrics
from api.predictor import ModelSlot, Predictor
from api.schemas import (
    ErrorResponse,
    Feedback,
    FeedbackAccepted,
    FeedbackStatus,
    FieldError,
    ModelRef,
    Prediction,
    PredictionResponse,
    RecordIds,
    RequestTypes,
)
from lakeloop.dataset import DatasetSpec, attribute, in_units
from lakeloop.settings import UnknownPredictions
from lakeloop.stores.prediction_log import (
    CLOCK_SKEW,
    Entry,
    FeedbackEntry,
    LogLookup,
    SegmentWriter,
)

NO_CHAMPION_YET = "no champion model yet"
NO_CHAMPION = (
    f"{NO_CHAMPION_YET}: train one by committing data to lakeFS (`lakeloop demo`, or "
    "`lakeloop ingest <file>` with the stack up), or point the registry's champion alias at a "
    "version"
)
_AT = re.compile(r" - at `(?P<location>[^`]+)`$")
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")
# Batches this large are predicted in a worker thread (XGBoost releases the GIL), so a big batch
# does not hold up single-record requests on the event loop.
_THREAD_ROWS = 200


class ApiError(Exception):
    """An answer other than 2xx, with the body to send."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        errors: list[FieldError] | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.response = ErrorResponse(status_code=status_code, detail=detail, errors=errors or [])
        self.headers = headers or {}
        """Headers the answer carries (``Retry-After``)."""


def msgspec_error(error: Exception) -> FieldError:
    """A msgspec message (``Expected ... - at `$.x.y` ``) as a field error."""
    message = str(error)
    match = _AT.search(message)
    location = match["location"] if match else "$"
    field = re.sub(r"\[\d+\]", "", location).rsplit(".", 1)[-1].lstrip("$")
    if missing := _MISSING.search(message):
        field = missing["field"]
        location = f"{location}.{field}"
    return FieldError(field=field, location=location, message=_AT.sub("", message))


class RequestSchema:
    """How request bodies are decoded, checked and documented under one dataset description:
    the generated msgspec types and decoders, the lenient checker that names every bad field,
    and a valid example record. A served model brings its own (the description it was trained
    under), so a swap changes the model and its request schema together."""

    def __init__(self, spec: DatasetSpec, *, max_batch: int) -> None:
        self.spec = spec
        self.max_batch = max_batch
        self.types = RequestTypes.for_spec(spec, max_batch=max_batch)
        self.checker = RecordChecker(spec)
        self._record = msgspec.json.Decoder(self.types.record)
        self._batch = msgspec.json.Decoder(self.types.batch)

    def example(self) -> Any:
        """A valid record (midpoints of the bounds, first categories) to warm a new model with."""
        values: dict[str, Any] = {}
        for feature in self.spec.features:
            if feature.type == "categorical":
                value: Any = feature.categories[0]
            else:
                low = feature.min if feature.min is not None else 0.0
                high = feature.max if feature.max is not None else low
                value = (low + high) / 2
            values[attribute(feature.name)] = value  # the record's attribute, not the JSON name
        return self.types.record(**values)

    def decode_record(self, body: bytes) -> Any:
        try:
            return self._record.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise self._invalid(body, error, single_errors) from None

    def decode_batch(self, body: bytes) -> tuple[list[Any] | None, dict[str, list[Any]] | None]:
        """Records or columns, checked for the batch limit and equal column lengths."""
        try:
            batch = self._batch.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise self._invalid(body, error, batch_errors) from None
        records, columns = batch.records, batch.columns  # type: ignore[attr-defined]
        if (records is msgspec.UNSET) == (columns is msgspec.UNSET):
            problem = FieldError(
                field="records",
                location="$",
                message="send exactly one of `records` (objects) or `columns` (arrays)",
            )
            raise ApiError(422, "invalid request", [problem])
        if records is not msgspec.UNSET:
            self._check_size(len(records))
            return records, None
        by_name = {name: getattr(columns, attribute(name)) for name in self.spec.feature_names}
        for name in self.spec.context_columns:  # ids and times, when sent
            if (values := getattr(columns, attribute(name))) is not None:
                by_name[name] = values
        lengths = {len(values) for values in by_name.values()}
        if len(lengths) > 1:
            problem = FieldError(
                field="columns",
                location="$.columns",
                message=f"columns differ in length: {sorted(lengths)}",
            )
            raise ApiError(422, "invalid request", [problem])
        self._check_size(lengths.pop())
        return None, by_name

    def ids_of(self, record: Any) -> RecordIds | None:
        """The record's own ids as sent (``None`` when it sent none)."""
        ids = {
            name: value
            for name in self.spec.ids
            if (value := getattr(record, attribute(name))) is not None
        }
        return ids or None

    def batch_ids(
        self, records: list[Any] | None, columns: dict[str, list[Any]] | None
    ) -> list[RecordIds] | None:
        """Each record's own ids as sent, in order (``None`` when no record sent any)."""
        if not self.spec.ids:
            return None
        if records is not None:
            ids = [self.ids_of(record) or {} for record in records]
        else:
            given = columns or {}
            sent = {name: given[name] for name in self.spec.ids if name in given}
            rows = zip(*sent.values(), strict=True)
            ids = [
                {name: value for name, value in zip(sent, row, strict=True) if value is not None}
                for row in rows
            ]
        return ids if any(ids) else None

    def _check_size(self, rows: int) -> None:
        if rows > self.max_batch:
            raise ApiError(
                413, f"{rows} records is more than the limit of {self.max_batch} per request"
            )

    def _invalid(self, body: bytes, error: Exception, explain: Any) -> ApiError:
        try:
            raw = parse_lenient(body)
        except UnreadableBodyError as bad:
            return ApiError(400, str(bad))
        errors = explain(self.checker, raw) or [msgspec_error(error)]
        return ApiError(422, f"invalid request: {len(errors)} problem(s)", errors)


class PredictionService:
    """Decodes requests under the served model's description, asks that model, queues the log
    rows."""

    def __init__(
        self,
        spec: DatasetSpec,
        slot: ModelSlot,
        *,
        max_batch: int,
        metrics: ApiMetrics,
        log: SegmentWriter | None,
        feedback_log: SegmentWriter | None,
        lookup: LogLookup | None = None,
        unknown_predictions: UnknownPredictions = "refuse",
    ) -> None:
        self.spec = spec
        """The configured description: the request schema of a model that recorded none, and
        of the API before its first model."""
        self.slot = slot
        self.max_batch = max_batch
        self.metrics = metrics
        self.log = log
        self.feedback_log = feedback_log
        self.lookup = lookup
        """Where feedback's prediction ids are looked up; ``None`` without a log (not checked)."""
        self.unknown_predictions = unknown_predictions
        """What feedback for a prediction id not in the log gets: a 404, or stored ``unmatched``."""
        self.coalescer = Coalescer()
        self._schemas: dict[str, RequestSchema] = {}
        self._feedback = msgspec.json.Decoder(Feedback)

    def schema(self, predictor: Predictor | None) -> RequestSchema:
        """The request schema of ``predictor``: the description it was trained under (built once
        per description), else the configured one."""
        spec = predictor.spec if predictor is not None and predictor.spec else self.spec
        schema = self._schemas.get(spec.digest)
        if schema is None:
            schema = self._schemas[spec.digest] = RequestSchema(spec, max_batch=self.max_batch)
        return schema

    def served(self) -> tuple[Predictor | None, RequestSchema]:
        """The model serving this request and its schema, taken together (the request keeps
        both even if a swap happens meanwhile); the model is ``None`` before the first one."""
        predictor = self.slot.current
        return predictor, self.schema(predictor)

    def predictor(self) -> Predictor:
        """The model serving this request (it keeps it even if a swap happens meanwhile)."""
        return self.loaded(self.slot.current)

    def loaded(self, predictor: Predictor | None) -> Predictor:
        """``predictor``, or the 503 that says there is no champion yet, and why when a model
        was trained and refused."""
        if predictor is None:
            refused = self.slot.refused
            raise ApiError(503, f"{NO_CHAMPION_YET}: {refused.summary}" if refused else NO_CHAMPION)
        return predictor

    def example(self, predictor: Predictor) -> Any:
        """A valid record for ``predictor`` (to warm it before it is swapped in)."""
        return self.schema(predictor).example()

    # Predicting -------------------------------------------------------------------------
    async def answer_one(self, predictor: Predictor, record: Any) -> Prediction:
        """One prediction (computed together with others arriving at once), logged."""
        value = await self.coalescer.predict(predictor, record)
        [prediction_id] = prediction_ids(1)
        self._logged(predictor, [prediction_id], np.array([value]), records=[record])
        model = ModelRef(name=predictor.name, version=predictor.version)
        return Prediction(
            prediction=float(value),
            prediction_id=prediction_id,
            model=model,
            ids=self.schema(predictor).ids_of(record),
        )

    def predict_batch(
        self, predictor: Predictor, records: list[Any] | None, columns: dict[str, list[Any]] | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions of a decoded batch, and the encoded matrix when the hot path made one
        (the log takes the numbers from it)."""
        kernel = predictor.kernel
        if kernel is None:
            if records is not None:
                return predictor.predict_records(records), None
            assert columns is not None  # decode_batch returns exactly one of the two
            return predictor.predict_columns(columns), None
        if records is not None:
            matrix = kernel.matrix_from_records(records)
        else:
            assert columns is not None
            matrix = kernel.matrix_from_columns(columns)
        return kernel.predict(matrix), matrix

    def answer_batch(
        self,
        predictor: Predictor,
        values: np.ndarray,
        *,
        records: list[Any] | None,
        columns: dict[str, list[Any]] | None,
        matrix: np.ndarray | None = None,
    ) -> PredictionResponse:
        """The batch answer, logged."""
        ids = prediction_ids(len(values))
        self._logged(predictor, ids, values, records=records or (), columns=columns, matrix=matrix)
        return PredictionResponse(
            predictions=values.tolist(),
            prediction_ids=ids,
            model=ModelRef(name=predictor.name, version=predictor.version),
            ids=self.schema(predictor).batch_ids(records, columns),
        )

    @staticmethod
    def needs_thread(records: list[Any] | None, columns: dict[str, list[Any]] | None) -> bool:
        rows = (
            len(records) if records is not None else len(next(iter((columns or {}).values()), []))
        )
        return rows >= _THREAD_ROWS

    def _logged(
        self,
        predictor: Predictor,
        ids: list[str],
        values: np.ndarray,
        *,
        records: Any = (),
        columns: dict[str, list[Any]] | None = None,
        matrix: np.ndarray | None = None,
    ) -> None:
        self.metrics.predicted(predictor.version, values)
        if self.log is None:
            return
        entry = Entry(
            at=datetime.now(UTC),
            model_name=predictor.name,
            model_version=predictor.version,
            prediction_ids=ids,
            predictions=values,
            records=records,
            columns=columns,
            matrix=matrix,
            matrix_names=predictor.kernel.names if matrix is not None and predictor.kernel else (),
            spec=self.schema(predictor).spec,
        )
        self.log.put(entry)

    # Feedback ---------------------------------------------------------------------------
    def feedback(self, body: bytes, *, client: str) -> FeedbackAccepted:
        """Store the actual value ``client`` reported for an earlier prediction, named by its
        prediction id or by the record's own ids (the served description's id columns).

        A prediction id must be in the prediction log (:meth:`_match`: 404 otherwise, or stored
        as ``unmatched``); a report for one already reported is a ``correction`` that says what
        it replaces. Ids are not checked against the log (a record's predictions may not have
        sent them), nor is anything without a log (``log_predictions`` off: nothing to check
        against, and nothing is stored). Looks up the log (maybe S3): call it from a thread."""
        try:
            reported = self._feedback.decode(body)
        except msgspec.DecodeError as error:
            try:
                parse_lenient(body)
            except UnreadableBodyError as bad:
                raise ApiError(400, str(bad)) from None
            raise ApiError(422, "invalid feedback", [msgspec_error(error)]) from None
        except msgspec.ValidationError as error:
            raise ApiError(422, "invalid feedback", [msgspec_error(error)]) from None
        if (reported.prediction_id is None) == (reported.ids is None):
            problem = FieldError(
                field="prediction_id",
                location="$",
                message="send exactly one of `prediction_id` or `ids` (the record's own ids)",
            )
            raise ApiError(422, "invalid feedback", [problem])
        spec = self.served()[1].spec
        self._check_bounds(reported.actual, spec)
        if reported.ids is not None:
            self._check_ids(reported.ids, spec)
        status: FeedbackStatus = "accepted"
        replaces = None
        if reported.prediction_id is not None:
            status, replaces = self._match(reported.prediction_id)
        if self.feedback_log is not None:
            entry = FeedbackEntry(
                at=datetime.now(UTC),
                prediction_id=reported.prediction_id,
                actual=reported.actual,
                ids=reported.ids,
                client=client,
                replaces=replaces,
            )
            self.feedback_log.put(entry)
        self.metrics.feedback.labels(status).inc()
        return FeedbackAccepted(
            status=status,
            prediction_id=reported.prediction_id,
            ids=reported.ids,
            client=client,
            replaces=replaces,
        )

    def _match(self, prediction_id: str) -> tuple[FeedbackStatus, float | None]:
        """What a report for ``prediction_id`` is: ``accepted``, or a ``correction`` with the
        value it replaces, when the prediction is in the log; ``unmatched`` when it is not and
        the API keeps those; else the 404 (:func:`unknown_prediction`), counted."""
        try:
            made = made_at(prediction_id)
        except ValueError:  # the schema's pattern lets a trailing newline through
            problem = FieldError(
                field="prediction_id",
                location="$.prediction_id",
                message="not a prediction id: expected a UUIDv7, as the API issues them",
            )
            raise ApiError(422, "invalid feedback", [problem]) from None
        if self.lookup is None:
            return "accepted", None
        now = datetime.now(UTC)
        if self.lookup.predicted(prediction_id, made=made, now=now):
            replaces = self.lookup.reported(prediction_id, made=made)
            return ("accepted" if replaces is None else "correction"), replaces
        if self.unknown_predictions == "unmatched":
            return "unmatched", None
        self.metrics.feedback.labels("unknown").inc()
        raise unknown_prediction(prediction_id, made=made, now=now, lag=self.lookup.lag)

    @staticmethod
    def _check_bounds(actual: float, spec: DatasetSpec) -> None:
        """A reported value outside the target's bounds in the served description is refused at
        the door: stored, it would count in the monitor's error and reach training data, to be
        refused only by the checks of the fold, after a retrain was asked for."""
        target = spec.target
        bound = None
        if target.min is not None and actual < target.min:
            bound = f"at least {in_units(target.min)}"
        elif target.max is not None and actual > target.max:
            bound = f"at most {in_units(target.max)}"
        if bound is not None:
            unit = f" {target.unit}" if target.unit else ""
            problem = FieldError(
                field="actual",
                location="$.actual",
                message=(
                    f"{target.name} must be {bound}{unit} (the dataset's bounds); "
                    f"got {in_units(actual)}"
                ),
            )
            raise ApiError(422, "invalid feedback", [problem])

    def _check_ids(self, ids: RecordIds, spec: DatasetSpec) -> None:
        """Feedback's ids must be id columns of the served description."""
        declared = spec.ids
        unknown = sorted(set(ids) - set(declared))
        if unknown:
            allowed = ", ".join(declared) if declared else "none: the dataset declares no `ids`"
            problems = [
                FieldError(
                    field=name,
                    location=f"$.ids.{name}",
                    message=f"not an id column of the dataset (id columns: {allowed})",
                )
                for name in unknown
            ]
            raise ApiError(422, "invalid feedback", problems)


def unknown_prediction(
    prediction_id: str, *, made: datetime, now: datetime, lag: timedelta
) -> ApiError:
    """The 404 for feedback naming a prediction id that is not in the log. While the id is
    younger than ``lag`` another replica may still be about to write it: the answer says so, with
    ``Retry-After`` (seconds until it would be written)."""
    unknown = f"unknown prediction id {prediction_id}"
    if made > now + CLOCK_SKEW:
        return ApiError(404, f"{unknown}: it is dated {made:%Y-%m-%dT%H:%M:%SZ}, in the future")
    wait = (made + lag - now).total_seconds()
    if wait > 0:
        retry = math.ceil(wait)
        return ApiError(
            404,
            f"{unknown}: not in the prediction log yet; it was made "
            f"{max((now - made).total_seconds(), 0):.0f} s ago and the replica that made it may "
            f"not have written it yet: retry after {retry} s",
            headers={"Retry-After": str(retry)},
        )
    return ApiError(404, f"{unknown}: no prediction with this id is in the prediction log")
