"""A first dataset description drafted from a table (``lakeloop dataset init``).

Every column is given a role from what the table shows and what its name suggests: ids, the event
time, features (numeric with widened bounds, categorical with the categories seen, integer codes),
or ignored. What was inferred, and why, goes into the YAML's header as comments for a person to
check; the draft always accepts the table it was drafted from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import yaml

from lakeloop.dataset import DatasetSpec

# Names that say "identifier" or "code": the values alone cannot tell an order number from an area.
_ID = re.compile(r"(?i)(^|[\s_])(id|pid|uuid|key|order|no|number)$|^id[\s_]")
_CODE = re.compile(r"(?i)(class|code|zip|postal|type|category|kind)")
_YEAR = re.compile(r"(?i)(^|[\s_])(yr|year)([\s_]|$)")
_MONTH = re.compile(r"(?i)(^|[\s_])(mo|month)([\s_]|$)")
_TIME = re.compile(r"(?i)(date|time|timestamp|sold_at|created|updated)")
_DATE_TEXT = re.compile(r"\d{4}[-/]\d{1,2}[-/]\d{1,2}")
_UNUSABLE = re.compile(r"[\[\]<\x00-\x1f]")
MAX_CATEGORIES = 200
"""A text column with more distinct values is free text: ignored, not a categorical."""
MAX_CODES = 60
"""An integer column named like a code with at most this many values is a categorical."""
NEW_VALUES = 0.99
"""``mostly`` of a drafted categorical: a value the drafting table did not show (a rare quality
grade, a new neighbourhood) passes in up to 1 % of a batch's rows, as an unknown category."""


@dataclass
class Draft:
    """The drafted description (as the YAML mapping) and the notes for its reader."""

    description: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> DatasetSpec:
        return DatasetSpec.model_validate(self.description)

    def to_yaml(self) -> str:
        header = [
            "# Drafted by `lakeloop dataset init` from the table's values and column names.",
            "# Check each decision below, then set LAKELOOP_DATASET to this file.",
            *(f"# - {note}" for note in self.notes),
            "",
        ]
        return "\n".join(header) + yaml.safe_dump(self.description, sort_keys=False)


def draft(frame: pd.DataFrame, *, target: str, name: str) -> Draft:
    """A description of ``frame`` predicting ``target``; ``ValueError`` naming the problem when
    the target is missing or not numeric."""
    if target not in frame.columns:
        raise ValueError(f"the target {target!r} is not a column of the table")
    if not pd.api.types.is_numeric_dtype(frame[target]):
        raise ValueError(f"the target {target!r} is not numeric ({frame[target].dtype})")
    notes: list[str] = []
    others = [column for column in frame.columns if column != target]
    ids = [c for c in others if _is_id(frame[c], c)]
    if ids:
        notes.append(f"ids: {', '.join(ids)} (named like ids and unique per row): never features")
    # Which columns hold dates, found once (each look parses a whole text column).
    dated = [c for c in others if c not in ids and _dates(frame[c])]
    event_time, time_columns = _event_time(frame, [c for c in others if c not in ids], dated)
    if event_time:
        notes.append(
            f"event_time: {', '.join(time_columns)} (training splits by it: the newest rows are "
            "the holdout)"
        )
    features, ignored = [], []
    for column in others:
        if column in ids or column in time_columns:
            continue
        if column in dated:
            ignored.append(column)
            notes.append(
                f"ignored: {column} (dates: a second time, not a feature; derive what matters "
                "from it, such as an age, as a column of its own)"
            )
            continue
        feature, why = _feature(frame[column], column)
        if feature is None:
            ignored.append(column)
            notes.append(f"ignored: {column} ({why})")
        else:
            features.append(feature)
            if why:
                notes.append(f"{column}: {why}")
    if not features:
        raise ValueError("no column of the table can be a feature")
    values = frame[target].dropna()
    unlabelled = _missing(frame[target]).get("max_missing")
    if unlabelled:
        notes.append(
            f"target: {len(frame) - len(values):,} rows have no {target} (kept, never trained "
            f"on); a batch may carry up to {unlabelled:.0%} of them (target.max_missing)"
        )
    description: dict[str, Any] = {
        "name": name,
        "version": 1,
        "description": f"Drafted from a table of {len(frame):,} rows.",
        "target": {
            "name": target,
            **_bounds(values),
            **({"max_missing": unlabelled} if unlabelled else {}),
        },
        "ids": ids,
        "event_time": event_time,
        "features": features,
        "ignore": ignored,
    }
    notes.append(
        "numeric bounds are what the table holds, widened by half its range (0 kept as the "
        "floor of a column that never goes below it); categories are those seen: add the ones "
        "you expect (a value not seen yet passes in up to 1 % of a batch's rows, mostly: 0.99, "
        "and the model treats it as unknown)"
    )
    notes.append(
        "no target.thresholds: the gate serves a model that beats always predicting the median "
        "by 10 % and, later, the champion; set max_mae etc. if your use needs a bar"
    )
    return Draft({k: v for k, v in description.items() if v not in ([], None)}, notes)


def _is_id(values: pd.Series, name: str) -> bool:
    integer_or_text = pd.api.types.is_integer_dtype(values) or values.dtype == object
    return bool(_ID.search(name)) and integer_or_text and values.is_unique and values.notna().all()


def _event_time(
    frame: pd.DataFrame, columns: list[str], dated: list[str]
) -> tuple[dict[str, str] | None, list[str]]:
    """One time column of ``dated`` (those holding dates): the first named like a time, else the
    first; else a year column (and a month column)."""
    if dated:
        column = min(dated, key=lambda c: not _TIME.search(c))  # the first named like a time
        return {"column": column}, [column]
    years = [c for c in columns if _YEAR.search(c) and _within(frame[c], 1800, 2200)]
    months = [c for c in columns if _MONTH.search(c) and _within(frame[c], 1, 12)]
    # A year of a sale (Yr Sold), not of a building (Year Built): prefer the one beside a month.
    for year in years:
        for month in months:
            if _shared_words(year, month):
                return {"year": year, "month": month}, [year, month]
    return None, []


def _dates(values: pd.Series) -> bool:
    """Whether a column holds dates or times: a datetime column, or text in which 99 % of the
    values are ISO 8601 dates (``2010-06-15``, ``2010/06/15``, with or without a time)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return True
    present = values.dropna()
    if values.dtype != object or present.empty:
        return False
    if not _DATE_TEXT.match(str(present.iloc[0])):
        return False  # most columns are not dates: their first value says so at once
    text = present.astype(str)
    if not text.str.match(_DATE_TEXT).all():
        return False
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    return bool(parsed.notna().mean() >= 0.99)


def _shared_words(first: str, second: str) -> bool:
    words = {w.lower() for w in re.split(r"[\s_]", first)} - {"yr", "year"}
    return bool(words & {w.lower() for w in re.split(r"[\s_]", second)})


def _within(values: pd.Series, low: int, high: int) -> bool:
    present = values.dropna()
    return (
        pd.api.types.is_integer_dtype(present)
        and len(present) > 0
        and bool(present.between(low, high).all())
    )


def _feature(values: pd.Series, name: str) -> tuple[dict[str, Any] | None, str]:
    """The column as a feature, and a note; ``None`` and why when it cannot be one."""
    if why := _unusable(values, name):
        return None, why
    present = values.dropna()
    missing = _missing(values)
    codes = _integer_codes(present, name)
    if codes:
        feature = {
            "name": name,
            "type": "categorical",
            "categories": codes,
            "mostly": NEW_VALUES,
            **missing,
        }
        return feature, f"integer codes ({len(codes)} values; named like a code)"
    if pd.api.types.is_numeric_dtype(values):
        return {"name": name, "type": "numeric", **_bounds(present), **missing}, ""
    text = present.astype(str)
    distinct = text.nunique()
    if distinct > MAX_CATEGORIES:
        return None, f"free text ({distinct:,} distinct values)"
    feature = {
        "name": name,
        "type": "categorical",
        "categories": sorted(text.unique()),
        "mostly": NEW_VALUES,
        **missing,
    }
    return feature, ""


def _unusable(values: pd.Series, name: str) -> str:
    """Why the column cannot be a feature as it is; empty when it can."""
    if _UNUSABLE.search(name):
        return "XGBoost refuses [, ] and < in feature names; rename the column to use it"
    if values.isna().all():
        return "no values"
    if pd.api.types.is_bool_dtype(values):
        return "true/false values: declare it categorical by hand if it matters"
    return ""


def _integer_codes(present: pd.Series, name: str) -> list[int]:
    """The codes of a column named like a code whose values are few whole numbers, stored as
    numbers or as digits (``020``); empty otherwise."""
    if not _CODE.search(name) or present.nunique() > MAX_CODES:
        return []
    if pd.api.types.is_integer_dtype(present):
        return sorted({int(v) for v in present.unique()})
    text = present.astype(str)
    if present.dtype == object and text.str.fullmatch(r"-?\d+").all():
        return sorted({int(v) for v in text.unique()})
    return []


def _missing(values: pd.Series) -> dict[str, Any]:
    share = float(values.isna().mean())
    if share == 0:
        return {}
    # Twice the share seen, in whole percent: room for a worse batch, a stop for a broken one.
    return {"nullable": True, "max_missing": min(1.0, math.ceil(share * 200) / 100)}


def _bounds(values: pd.Series) -> dict[str, float]:
    low, high = float(values.min()), float(values.max())
    margin = (high - low) / 2
    floor = 0.0 if low >= 0 and low - margin < 0 else low - margin
    return {"min": _round(floor, down=True), "max": _round(high + margin, down=False)}


def _round(value: float, *, down: bool) -> float:
    """To two significant digits, outward, so the YAML reads like a person wrote it."""
    if value == 0:
        return 0.0
    step = 10 ** (math.floor(math.log10(abs(value))) - 1)
    rounded = (math.floor if down else math.ceil)(value / step) * step
    return float(rounded) if rounded != int(rounded) else float(int(rounded))
