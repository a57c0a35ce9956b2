"""The dataset description: which columns exist, their types and bounds, and the target.

Everything downstream (validation, training, the API schema, monitoring) reads this object, so a
team's own table needs a YAML file, not code.
"""

from __future__ import annotations

import hashlib
import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

EXAMPLE = "california_housing.yaml"
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


class Feature(BaseModel):
    """One input column."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\[\]<]+$")
    """The column's name as tables and API requests write it (``Gr Liv Area`` is fine; XGBoost
    refuses ``[``, ``]`` and ``<`` in feature names)."""
    type: Literal["numeric", "categorical"]
    description: str = ""
    min: float | None = None
    """Smallest valid value (numeric features)."""
    max: float | None = None
    """Largest valid value (numeric features)."""
    categories: tuple[str, ...] = ()
    """Known values (categorical features); others are treated as unknown, not rejected."""
    codes: Literal["text", "integer"] = "text"
    """How a categorical's values are written: ``text`` (``"NAmes"``) or ``integer`` (class codes,
    ZIP codes: ``60``, ``98178``). Listing the categories as YAML integers makes it ``integer``.
    Integer codes are compared as their digits whether a table stores them as numbers or text,
    and the API takes them as JSON integers or strings."""

    @model_validator(mode="before")
    @classmethod
    def _integer_codes(cls, data: Any) -> Any:
        """Categories listed as integers are integer codes, kept as their digits."""
        if not isinstance(data, dict):
            return data
        categories = data.get("categories") or ()
        numbers = [c for c in categories if isinstance(c, int) and not isinstance(c, bool)]
        if not numbers:
            return data
        return {
            **data,
            "categories": [str(c) if c in numbers else c for c in categories],
            "codes": data.get("codes", "integer"),
        }

    nullable: bool = False
    """Whether a missing value is valid input."""
    max_missing: float | None = Field(default=None, ge=0, le=1)
    """Largest share of missing values a batch may carry (0.02 = 2 %); unset means 0 for a
    non-nullable feature and no limit for a nullable one."""
    mostly: float = Field(default=1.0, gt=0, le=1)
    """Share of rows that must lie within the bounds or categories (1 = every row)."""

    @property
    def missing_budget(self) -> float:
        """The share of missing values a batch may carry."""
        if self.max_missing is not None:
            return self.max_missing
        return 1.0 if self.nullable else 0.0

    @model_validator(mode="after")
    def _check_kind(self) -> Feature:
        if self.type == "categorical" and not self.categories:
            raise ValueError(f"categorical feature {self.name!r} needs a list of categories")
        if self.type == "numeric" and self.categories:
            raise ValueError(f"numeric feature {self.name!r} cannot have categories")
        if self.codes == "integer":
            if self.type != "categorical":
                raise ValueError(f"numeric feature {self.name!r} cannot have integer codes")
            wrong = [c for c in self.categories if not is_integer_code(c)]
            if wrong:
                raise ValueError(
                    f"categorical feature {self.name!r} has integer codes, but these categories "
                    f"are not integers: {', '.join(wrong)}"
                )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r} has min > max")
        if self.max_missing and not self.nullable:
            raise ValueError(
                f"feature {self.name!r} allows missing values (max_missing) but is not nullable"
            )
        return self


class Thresholds(BaseModel):
    """What a model must reach on its holdout before it may be served, in the target's units for
    MAE and RMSE. All optional: without them a model must still clearly beat always predicting
    the median, and a later model must be no worse than the champion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_mae: float | None = Field(default=None, gt=0)
    max_rmse: float | None = Field(default=None, gt=0)
    min_r2: float | None = Field(default=None, le=1)
    """Smallest R² (share of the target's variance explained)."""
    max_mape: float | None = Field(default=None, gt=0)
    """Largest mean absolute percentage error (0.2 = 20 %)."""


class EventTime(BaseModel):
    """When each row happened (a sale's date): one column with an optional ``strptime`` format
    (ISO 8601 without one), or a ``year`` column with an optional ``month`` column. Never a
    feature; with it every training split is by time (the holdout is the most recent rows)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str | None = None
    format: str | None = None
    year: str | None = None
    month: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> EventTime:
        if (self.column is None) == (self.year is None):
            raise ValueError("event_time needs either column (with an optional format) or year")
        if self.column is None and self.format is not None:
            raise ValueError("event_time format applies to column, not to year and month")
        if self.year is None and self.month is not None:
            raise ValueError("event_time month needs year")
        return self

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.column, self.year, self.month) if c is not None]

    def parse(self, frame: pd.DataFrame) -> pd.Series:
        """Each row's time (UTC); missing where it does not parse."""
        if self.column is not None:
            values = frame[self.column]
            if self.format is not None:
                return pd.to_datetime(values, format=self.format, errors="coerce", utc=True)
            return pd.to_datetime(values, format="ISO8601", errors="coerce", utc=True)
        parts = pd.DataFrame(
            {
                "year": pd.to_numeric(frame[self.year], errors="coerce"),
                "month": pd.to_numeric(frame[self.month], errors="coerce") if self.month else 1,
                "day": 1,
            }
        )
        return pd.to_datetime(parts, errors="coerce", utc=True)

    def written(self, times: pd.Series) -> dict[str, pd.Series]:
        """Times (UTC) written as this description stores them, by column: what ``parse`` reads
        back (to the month, for a year and month pair)."""
        times = pd.to_datetime(times, utc=True)
        if self.column is not None:
            return {self.column: times.dt.strftime(self.format or "%Y-%m-%dT%H:%M:%SZ")}
        assert self.year is not None  # one of the two ways (checked at load)
        written = {self.year: times.dt.year.astype("Int64")}
        if self.month is not None:
            written[self.month] = times.dt.month.astype("Int64")
        return written


class Target(BaseModel):
    """The column the model predicts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    unit: str = ""
    min: float | None = None
    max: float | None = None
    max_missing: float = Field(default=0.0, ge=0, le=1)
    """Largest share of rows a batch may carry without a target (0.05 = 5 %): rows not labelled
    yet are stored with the rest and left out of training and monitoring references."""
    thresholds: Thresholds = Thresholds()
    """The promotion gate's absolute bars for this target."""


class Check(BaseModel):
    """What every domain rule shares: how bad breaking it is, and how many rows must keep it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: Literal["failure", "warning"] = "failure"
    """``failure`` blocks the batch; ``warning`` is reported and lets it through."""
    mostly: float = Field(default=1.0, gt=0, le=1)
    """Share of rows that must keep the rule (1 = every row)."""
    description: str = ""
    """The rule in the analyst's words, shown in reports."""
    scope: Literal["batch", "history"] = "batch"
    """Where the rule must hold: within each batch (table) on its own, or across every table on
    the production branch. Only ``unique`` can span the history (the other rules hold row by
    row); it does by default, so a batch sent twice under two names is refused."""

    def columns_used(self) -> tuple[str, ...]:
        """Columns the rule reads (all of them when it names none)."""
        raise NotImplementedError


class LessOrEqual(Check):
    """Column ``left`` is at most column ``right`` on every row (rows missing either skip)."""

    rule: Literal["less_or_equal"]
    left: str
    right: str

    def columns_used(self) -> tuple[str, ...]:
        return (self.left, self.right)

    @model_validator(mode="after")
    def _row_rule_scope(self) -> LessOrEqual:
        _refuse_history_scope(self)
        return self


class Unique(Check):
    """No two rows share the same values of ``columns`` (the whole record when omitted)."""

    rule: Literal["unique"]
    columns: tuple[str, ...] | None = Field(default=None, min_length=1)
    scope: Literal["batch", "history"] = "history"

    def columns_used(self) -> tuple[str, ...]:
        return self.columns or ()


class Between(Check):
    """Values of ``column`` lie within [min, max]; usually a ``warning`` band inside the bounds."""

    rule: Literal["between"]
    column: str
    min: float | None = None
    max: float | None = None

    def columns_used(self) -> tuple[str, ...]:
        return (self.column,)

    @model_validator(mode="after")
    def _check_range(self) -> Between:
        _refuse_history_scope(self)
        if self.min is None and self.max is None:
            raise ValueError(f"between rule on {self.column!r} needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"between rule on {self.column!r} has min > max")
        return self


def _refuse_history_scope(check: Check) -> None:
    # A row rule holds or breaks row by row: every batch passing it is the whole history passing
    # it, so "history" would promise a check that adds nothing.
    if check.scope == "history":
        raise ValueError(
            f"{getattr(check, 'rule', 'this')} rule holds row by row: only unique can have "
            "scope: history"
        )


DomainCheck = Annotated[LessOrEqual | Unique | Between, Field(discriminator="rule")]


class DatasetSpec(BaseModel):
    """A table lakeloop can validate, train on and serve."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: int = Field(ge=1)
    description: str = ""
    target: Target
    features: tuple[Feature, ...] = Field(min_length=1)
    min_rows: int = Field(default=1, ge=0)
    """Fewest rows a batch may have."""
    checks: tuple[DomainCheck, ...] = ()
    """Domain rules beyond each column's own type, bounds and categories."""
    ids: tuple[str, ...] = ()
    """Columns that identify a row (an order number, a parcel id): stored with the data, part of
    what makes a record unique, never features and not otherwise validated."""
    ignore: tuple[str, ...] = ()
    """Other columns a table carries (notes, columns not used yet): must be present, are kept in
    the data, are neither validated nor features."""
    event_time: EventTime | None = None
    """When each row happened: checked (parses, not in the future), never a feature; training
    splits by it."""
    group: str | None = None
    """A column whose rows belong together (a parcel sold twice): they always fall on the same
    side of every training split, so the holdout never judges a house the model learned."""

    @model_validator(mode="after")
    def _unique_names(self) -> DatasetSpec:
        roles: dict[str, list[str]] = {}
        for role, names in (
            ("id", self.ids),
            ("event time", self.event_time.columns if self.event_time else []),
            ("feature", self.feature_names),
            ("target", [self.target.name]),
            ("ignored", self.ignore),
        ):
            for name in names:
                roles.setdefault(name, []).append(role)
        twice = {name: found for name, found in roles.items() if len(found) > 1}
        if twice:
            named = "; ".join(f"{name} ({' and '.join(found)})" for name, found in twice.items())
            raise ValueError(f"column names appear twice: {named}")
        return self

    @model_validator(mode="after")
    def _group_is_kept(self) -> DatasetSpec:
        if self.group is not None and self.group not in self.record_columns:
            raise ValueError(
                f"group {self.group!r} must be an id, the event time, a feature or the target "
                "(ignored columns are not kept for training)"
            )
        return self

    @model_validator(mode="after")
    def _distinct_attributes(self) -> DatasetSpec:
        by_attribute: dict[str, list[str]] = {}
        for name in self.feature_names:
            by_attribute.setdefault(attribute(name), []).append(name)
        clashes = [names for names in by_attribute.values() if len(names) > 1]
        if clashes:
            raise ValueError(
                "feature names differ only in punctuation, which the API cannot tell apart: "
                + "; ".join(" / ".join(names) for names in clashes)
            )
        return self

    @model_validator(mode="after")
    def _checks_name_known_columns(self) -> DatasetSpec:
        numeric = {*self.numeric_features, self.target.name}
        for check in self.checks:
            unknown = sorted(set(check.columns_used()) - set(self.record_columns))
            if unknown:
                raise ValueError(f"{check.rule} rule names unknown columns: {', '.join(unknown)}")
            # Comparing text columns would fail on every batch, not just bad ones.
            if not isinstance(check, Unique) and not set(check.columns_used()) <= numeric:
                raise ValueError(f"{check.rule} rule needs numeric columns")
        return self

    @cached_property
    def history_checks(self) -> tuple[Unique, ...]:
        """Rules that must hold across every table on the production branch, not just per batch."""
        return tuple(
            check for check in self.checks if isinstance(check, Unique) and check.scope == "history"
        )

    @cached_property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    @cached_property
    def numeric_features(self) -> list[str]:
        return [feature.name for feature in self.features if feature.type == "numeric"]

    @cached_property
    def categorical_features(self) -> list[str]:
        return [feature.name for feature in self.features if feature.type == "categorical"]

    @cached_property
    def columns(self) -> list[str]:
        """Feature columns followed by the target: what the model reads and learns."""
        return [*self.feature_names, self.target.name]

    @cached_property
    def context_columns(self) -> list[str]:
        """The id and event-time columns: never features, but a prediction request may carry
        them (the API echoes the ids, the log keeps both, feedback can name a record by id)."""
        times = self.event_time.columns if self.event_time else []
        return [*self.ids, *times]

    @cached_property
    def record_columns(self) -> list[str]:
        """The id columns, the event time, the features and the target: what a record is
        (uniqueness, row keys, the training data)."""
        return [*self.context_columns, *self.columns]

    @cached_property
    def stored_columns(self) -> list[str]:
        """Every column a table under this description has: the record and the ignored ones."""
        return [*self.record_columns, *self.ignore]

    @cached_property
    def digest(self) -> str:
        """A short digest of the description's content: equal digests judge tables and build
        training data the same way."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """``name@vN`` (what lineage tags and reports show)."""
        return f"{self.name}@v{self.version}"

    def to_yaml(self) -> str:
        """The description as YAML: stored beside each ingested batch and with each model."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def feature(self, name: str) -> Feature:
        return next(feature for feature in self.features if feature.name == name)


def attribute(name: str) -> str:
    """A feature's name as a Python identifier (decoded API records hold features as attributes;
    the JSON keeps the name as written): other characters become ``_``, a leading digit gets one."""
    safe = re.sub(r"\W", "_", name)
    return f"_{safe}" if safe[0].isdigit() else safe


def parse_spec(text: str | bytes, *, source: str) -> DatasetSpec:
    """A description from its YAML text; ``ValueError`` naming ``source`` when it is not one."""
    try:
        return DatasetSpec.model_validate(yaml.safe_load(text))
    except Exception as error:
        raise ValueError(f"invalid dataset description {source}: {error}") from error


def load_spec(path: Path | None = None) -> DatasetSpec:
    """Read a dataset description; ``None`` reads the shipped California housing example."""
    if path is None:
        text = resources.files("lakeloop.datasets").joinpath(EXAMPLE).read_text()
        source = f"lakeloop/datasets/{EXAMPLE}"
    else:
        try:
            text = path.read_text()
        except OSError as error:
            raise ValueError(f"cannot read dataset description {path}: {error}") from error
        source = str(path)
    return parse_spec(text, source=source)


def codes_as_text(values: pd.Series) -> pd.Series:
    """A categorical column as the text its categories are listed in: codes a table stores as
    numbers (an integer column, or floats because the column has gaps) become their integer's
    digits, so ``60``, ``60.0`` and ``"60"`` are one category; text and missing values stay as
    they are. A number that is not a whole number stays a number's text (an unknown category)."""
    if pd.api.types.is_bool_dtype(values):
        return values
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.astype("Float64")
        if bool((numbers.isna() | (numbers == numbers.round())).all()):
            return numbers.astype("Int64").astype("string")
        return values.astype("string")
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) != "string":
        # Mixed text and numbers (records sent as JSON): numbers become their digits.
        return values.map(_code_text, na_action="ignore").astype("string")
    return values


def _code_text(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def is_integer_code(category: str) -> bool:
    """Whether a category is an integer's canonical digits (``60``; not ``060``, not ``6a``)."""
    return _INTEGER.fullmatch(category) is not None


def integer_codes_as_text(values: pd.Series) -> pd.Series:
    """Integer codes as their canonical digits, however a table writes them: ``60``, ``60.0``,
    ``"60"`` and ``"060"`` are all ``"60"``."""
    text = codes_as_text(values)
    return text.str.replace(r"^(-?)0+(?=\d)", r"\1", regex=True)


def described(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """``frame`` with each categorical feature's values as text (:func:`codes_as_text`): what
    validation, fingerprints and the model's encoder compare with the listed categories."""
    changed = {}
    for name in spec.categorical_features:
        if name in frame.columns:
            values = frame[name]
            if spec.feature(name).codes == "integer":
                changed[name] = integer_codes_as_text(values)
                continue
            text = codes_as_text(values)
            if text is not values:
                changed[name] = text
    return frame.assign(**changed) if changed else frame


def in_units(value: float) -> str:
    """A value in the target's units as people read it: whole units with thousands separators
    when large (``215,000``), three significant digits when small (``2.47`` degrees)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
