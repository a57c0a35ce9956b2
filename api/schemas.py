"""Request and response schemas of the prediction API.

The record schema is generated from the dataset description, so the OpenAPI document, the
validation and the model all agree on one list of features with their bounds. Requests are
decoded strictly (a number sent as a string is a 422, not a silent coercion).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from api.ids import UUID7_PATTERN
from lakeloop.dataset import DatasetSpec, Feature, attribute

# JSON cannot carry NaN or infinity and msgspec refuses numbers beyond a double; bounding every
# number by the largest finite double also refuses them when they arrive by another route.
_FINITE = sys.float_info.max


def feature_type(feature: Feature) -> Any:
    """The msgspec type of one feature's value: bounds, length limits, ``None`` when nullable."""
    if feature.type == "categorical":
        known = ", ".join(feature.categories)
        integer = feature.codes == "integer"
        written = " Integer codes: send them as JSON integers or strings." if integer else ""
        description = (
            f"{feature.description} Known values: {known}.{written} Any other value is accepted "
            "and treated as unknown (like a missing value), not rejected."
        )
        example: Any = int(feature.categories[0]) if integer else feature.categories[0]
        kind: Any = Annotated[
            str, Meta(min_length=1, max_length=200, description=description, examples=[example])
        ]
        if integer:
            kind = kind | Annotated[int, Meta(description=description, examples=[example])]
    else:
        low = feature.min if feature.min is not None else -_FINITE
        high = feature.max if feature.max is not None else _FINITE
        kind = Annotated[float, Meta(description=feature.description, ge=low, le=high)]
    return kind | None if feature.nullable else kind


def context_type(spec: DatasetSpec, name: str) -> Any:
    """The msgspec type of an id or event-time column (:attr:`DatasetSpec.context_columns`): an
    optional JSON string or integer, never used to predict."""
    if name in spec.ids:
        description = (
            "Optional: the record's own id, echoed in the answer and kept in the prediction log; "
            "feedback may name the record by it instead of the prediction id."
        )
    else:
        description = (
            "Optional: when the record happened, as the dataset stores it; kept in the prediction "
            "log (reported prices become training rows dated by it)."
        )
    text = Annotated[str, Meta(min_length=1, max_length=200, description=description)]
    return text | Annotated[int, Meta(description=description)] | None


def record_type(spec: DatasetSpec) -> type[msgspec.Struct]:
    """A msgspec struct with one required field per feature, bounds as constraints, and the
    optional id and event-time columns."""
    return _feature_struct(
        "HouseFeatures", spec, feature_type, lambda name: context_type(spec, name)
    )


def _feature_struct(name: str, spec: DatasetSpec, kind: Any, context: Any) -> type[msgspec.Struct]:
    """A struct with one field per feature, of type ``kind(feature)``, then one optional field
    per context column, of type ``context(name)`` (default ``None``): attributes are
    identifiers, the JSON keeps each column's name as written, unknown fields are refused."""
    fields: list[Any] = [(attribute(feature.name), kind(feature)) for feature in spec.features]
    fields += [(attribute(column), context(column), None) for column in spec.context_columns]
    named = [*spec.feature_names, *spec.context_columns]
    renames = {attribute(n): n for n in named if attribute(n) != n}
    # Decoded requests hold only numbers, strings and lists of them, so they can never be part of
    # a reference cycle: their structs stay out of the garbage collector's bookkeeping
    # (``gc=False``), which a 1,000-record batch would otherwise pay for on every request, and
    # again while the prediction log keeps the records alive across collections.
    return msgspec.defstruct(
        name,
        fields,
        forbid_unknown_fields=True,
        kw_only=True,
        gc=False,
        module=__name__,
        rename=renames,
    )


def columns_type(spec: DatasetSpec, *, max_batch: int | None) -> type[msgspec.Struct]:
    """One list per feature, all of the same length (checked after decoding)."""

    def column(feature: Feature) -> Any:
        return Annotated[
            list[feature_type(feature)],  # type: ignore[misc]
            Meta(min_length=1, max_length=max_batch),
        ]

    def context(name: str) -> Any:
        values: Any = list[context_type(spec, name)]  # type: ignore[misc]
        return Annotated[values, Meta(min_length=1, max_length=max_batch)] | None

    return _feature_struct("HouseFeatureColumns", spec, column, context)


def batch_type(
    spec: DatasetSpec, record: type[msgspec.Struct], *, max_batch: int | None
) -> type[msgspec.Struct]:
    """``{"records": [...]}`` or ``{"columns": {name: [...]}}``: exactly one of the two.

    ``max_batch=None`` builds the type requests are decoded with: the batch limit is checked
    after decoding so that it answers 413, while the documented type shows it as ``maxItems``.
    """
    records = Annotated[
        list[record],  # type: ignore[valid-type]
        Meta(min_length=1, max_length=max_batch, description="Records, one object each."),
    ]
    columns: Any = Annotated[
        columns_type(spec, max_batch=max_batch),  # type: ignore[valid-type]
        Meta(description="The same records as one array per feature (columnar)."),
    ]
    return msgspec.defstruct(
        "BatchPredictionRequest",
        [
            ("records", records | msgspec.UnsetType, msgspec.UNSET),
            ("columns", columns | msgspec.UnsetType, msgspec.UNSET),
        ],
        forbid_unknown_fields=True,
        kw_only=True,
        gc=False,
        module=__name__,
    )


@dataclass(frozen=True)
class RequestTypes:
    """The generated request types: ``documented`` carry the batch limit for OpenAPI,
    ``batch`` is what requests are decoded with."""

    record: type[msgspec.Struct]
    batch: type[msgspec.Struct]
    documented_batch: type[msgspec.Struct]

    @classmethod
    def for_spec(cls, spec: DatasetSpec, *, max_batch: int) -> RequestTypes:
        record = record_type(spec)
        return cls(
            record=record,
            batch=batch_type(spec, record, max_batch=None),
            documented_batch=batch_type(spec, record, max_batch=max_batch),
        )


class ModelRef(msgspec.Struct):
    """Which registered model version answered."""

    name: str
    version: str


RecordIds = dict[str, str | int]
"""A record's own ids, by id column (``{"PID": 526301100}``)."""


class Prediction(msgspec.Struct, omit_defaults=True):
    """The prediction for one record."""

    prediction: float
    prediction_id: str
    """Quote it in ``POST /v1/feedback`` when the real value is known (UUIDv7, time-ordered)."""
    model: ModelRef
    ids: RecordIds | None = None
    """The record's own ids, as sent (absent when it sent none)."""


class PredictionResponse(msgspec.Struct, omit_defaults=True):
    """One prediction and one prediction id per record, in request order."""

    predictions: list[float]
    prediction_ids: list[str]
    model: ModelRef
    ids: list[RecordIds] | None = None
    """Each record's own ids, as sent, in request order (absent when none sent any)."""


class ModelInfo(msgspec.Struct):
    """The served model and its lineage."""

    name: str
    version: str
    alias: str
    run_id: str
    lakefs_repository: str
    lakefs_commit_id: str
    metrics: dict[str, float]
    loaded_at: str
    dataset: str = ""
    """The dataset description the model was trained under (``name@vN``)."""
    dataset_digest: str = ""
    """Digest of that description's content."""


class Health(msgspec.Struct):
    """Liveness."""

    status: str
    detail: str = ""


class Readiness(msgspec.Struct):
    """Whether the API can answer predictions, and what needs attention while it does."""

    status: str
    """``ready``; ``degraded`` (serving, with status 200, but the registry is unreachable, the
    champion failed to load, or the prediction log cannot write); ``not ready`` (503, no model)."""
    detail: str
    model_version: str | None = None
    registry: str = "unknown"
    """``ok``, ``unreachable: <error>`` or ``unknown`` before the first check."""
    last_registry_check: str | None = None
    failed_version: str | None = None
    """The champion version that could not be loaded (the previous one keeps serving)."""
    load_error: str | None = None
    """Why ``failed_version`` could not be loaded."""
    prediction_log: str = "off"
    """``ok``, ``failing: <error>`` (predictions are answered but not logged) or ``off``."""
    training: str = "unknown"
    """``ok``, or ``blocked: <why>`` while the data on the production branch fails the checks, so
    no new model can train and the served champion is stale; ``unknown`` before the first check."""
    champion_commits_behind: int | None = None
    """While training is blocked: commits on the production branch newer than the champion's."""
    refused_version: str | None = None
    """While no model is served: the newest version, trained and refused by the gate."""
    refused_reasons: str | None = None
    """Why the gate refused ``refused_version``."""


class Feedback(msgspec.Struct, forbid_unknown_fields=True):
    """The real value of the target for an earlier prediction, named by its prediction id or by
    the record's own ids (exactly one of the two)."""

    actual: Annotated[float, Meta(ge=-_FINITE, le=_FINITE, description="The observed value.")]
    prediction_id: (
        Annotated[
            str,
            Meta(
                pattern=UUID7_PATTERN,
                description="From a prediction (a UUIDv7 this API issued): it must be in the "
                "prediction log.",
            ),
        ]
        | None
    ) = None
    ids: (
        Annotated[
            RecordIds,
            Meta(
                min_length=1,
                description="The record's own ids as sent with the prediction (the dataset's "
                "id columns): every prediction of that record gets the value.",
            ),
        ]
        | None
    ) = None


FeedbackStatus = Literal["accepted", "correction", "unmatched"]
"""What became of stored feedback (:class:`FeedbackAccepted`)."""


class FeedbackAccepted(msgspec.Struct, omit_defaults=True):
    """Feedback is stored beside the prediction log, with the name of the client that sent it. A
    prediction id must be in the log (else 404, or ``unmatched`` where the API is set to keep
    those); a record's own ids are not checked against it."""

    status: Annotated[
        FeedbackStatus,
        Meta(
            description="`accepted`; `correction`: an earlier report for this prediction id is "
            "replaced (the latest report counts); `unmatched`: the prediction id is not in the "
            "log and is stored anyway (`LAKELOOP_API__UNKNOWN_PREDICTIONS=unmatched`)."
        ),
    ]
    prediction_id: str | None = None
    ids: RecordIds | None = None
    client: str | None = None
    replaces: (
        Annotated[float, Meta(description="For a correction: the value the earlier report gave.")]
        | None
    ) = None


class ReloadResult(msgspec.Struct):
    """Outcome of a forced registry check."""

    changed: bool
    version: str | None
    previous_version: str | None


class FieldError(msgspec.Struct):
    """One problem with one field of the request."""

    field: str
    """The feature (or body field) at fault."""
    location: str
    """Where in the body: ``$.records[3].households``."""
    message: str


class ErrorResponse(msgspec.Struct):
    """Every error answer."""

    status_code: int
    detail: str
    errors: list[FieldError] = msgspec.field(default_factory=list)
