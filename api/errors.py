"""Field-level explanations of a rejected request body.

The hot path decodes with msgspec, which stops at the first problem. Only when it fails does the
body get parsed again, leniently, to name every bad field; this costs nothing on good requests.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec

from api.schemas import FieldError, context_type, feature_type
from lakeloop.dataset import DatasetSpec

# A 1,000-record batch with one bad column would otherwise answer a thousand errors.
MAX_ERRORS = 50


class UnreadableBodyError(ValueError):
    """The body is not JSON at all."""


def parse_lenient(body: bytes) -> Any:
    """JSON including the non-standard ``NaN`` and ``Infinity`` tokens, so they can be named."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        raise UnreadableBodyError(f"the body is not valid JSON: {error}") from error


class RecordChecker:
    """Checks raw (lenient-parsed) records against the dataset description."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.types = {feature.name: feature_type(feature) for feature in spec.features}
        """The features: each required."""
        self.optional = {name: context_type(spec, name) for name in spec.context_columns}
        """The id and event-time columns a record may carry."""

    def value_error(self, name: str, value: Any) -> str | None:
        """Why ``value`` is not valid for column ``name``; ``None`` when it is."""
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number (NaN and infinity are not numbers JSON can carry)"
        try:
            msgspec.convert(value, self.types.get(name) or self.optional[name], strict=True)
        except msgspec.ValidationError as error:
            return str(error)
        return None

    def missing(self, given: dict[str, Any], location: str) -> list[FieldError]:
        """One error per feature absent from ``given`` (a record or a columnar batch)."""
        return [
            FieldError(field=name, location=f"{location}.{name}", message="required, missing")
            for name in self.types
            if name not in given
        ]

    def record_errors(self, record: Any, location: str) -> list[FieldError]:
        """Missing, unknown and invalid fields of one record."""
        if not isinstance(record, dict):
            return [FieldError(field="", location=location, message="expected an object")]
        errors = self.missing(record, location)
        for name, value in record.items():
            if name not in self.types and name not in self.optional:
                message = "unknown field (not a feature, id or event time of this dataset)"
            else:
                message = self.value_error(name, value) or ""
            if message:
                errors.append(
                    FieldError(field=name, location=f"{location}.{name}", message=message)
                )
        return errors

    def column_errors(self, columns: Any, location: str) -> list[FieldError]:
        """Missing, unknown and invalid columns of a columnar batch."""
        if not isinstance(columns, dict):
            return [FieldError(field="columns", location=location, message="expected an object")]
        errors = self.missing(columns, location)
        for name, values in columns.items():
            where = f"{location}.{name}"
            if name not in self.types and name not in self.optional:
                errors.append(FieldError(field=name, location=where, message="unknown field"))
            elif not isinstance(values, list) or not values:
                errors.append(FieldError(field=name, location=where, message="expected an array"))
            else:
                errors.extend(
                    FieldError(field=name, location=f"{where}[{index}]", message=message)
                    for index, value in enumerate(values)
                    if (message := self.value_error(name, value) or "")
                )
        return errors


def single_errors(checker: RecordChecker, raw: Any) -> list[FieldError]:
    """Problems of a single-record body."""
    return checker.record_errors(raw, "$")[:MAX_ERRORS]


def batch_errors(checker: RecordChecker, raw: Any) -> list[FieldError]:
    """Problems of a batch body (``records`` or ``columns``)."""
    if not isinstance(raw, dict):
        return [FieldError(field="", location="$", message="expected an object")]
    unknown = sorted(set(raw) - {"records", "columns"})
    errors = [
        FieldError(field=name, location=f"$.{name}", message="unknown field") for name in unknown
    ]
    if ("records" in raw) == ("columns" in raw):
        message = "send exactly one of `records` (objects) or `columns` (arrays)"
        errors.append(FieldError(field="records", location="$", message=message))
    records = raw.get("records")
    if "records" in raw and (not isinstance(records, list) or not records):
        errors.append(
            FieldError(field="records", location="$.records", message="expected a non-empty array")
        )
    elif isinstance(records, list):
        for index, record in enumerate(records):
            errors.extend(checker.record_errors(record, f"$.records[{index}]"))
            if len(errors) >= MAX_ERRORS:
                break
    if "columns" in raw:
        errors.extend(checker.column_errors(raw["columns"], "$.columns"))
    return errors[:MAX_ERRORS]
