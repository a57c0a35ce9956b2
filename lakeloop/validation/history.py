"""Rules that span tables: a verdict on a whole state of the data, not on one batch.

A batch is checked on its own by Great Expectations (:class:`checks.Validator`); a rule with
``scope: history`` (today: ``unique``) must also hold across every table on the production branch.
Tables are compared by row fingerprints, a 64-bit hash per row of the rule's key columns, computed
once per stored table and kept with its check (:mod:`lakeloop.datagate`), so judging
a new state never re-reads the tables already judged.

Fingerprints compare values, not how a file stored them: a whole number read as ``int64`` from
one CSV and as ``float64`` from another Parquet file (where a missing value forced floats) is the
same value, as pandas would compare them after concatenating the tables. Rows whose key values are
all missing are ignored, as Great Expectations' compound uniqueness ignores them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lakeloop.dataset import DatasetSpec, Unique
from lakeloop.validation.results import Finding

UNIQUE = "expect_compound_columns_to_be_unique"
_NONE = np.empty(0, dtype=np.uint64)
RECORD = "record"
"""Key of the fingerprints of whole records (every described column present)."""


def key_columns(check: Unique, spec: DatasetSpec) -> tuple[str, ...]:
    """The columns a uniqueness rule compares: its own, or every described column."""
    return check.columns or tuple(spec.record_columns)


def key_name(columns: Sequence[str]) -> str:
    """The name fingerprints of ``columns`` are kept under."""
    return ",".join(columns)


def fingerprints(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """One unsigned 64-bit hash per row of ``columns`` (missing columns count as missing values);
    rows whose values are all missing get no fingerprint (they are dropped)."""
    hashes, kept = row_fingerprints(frame, columns)
    return np.asarray(hashes[kept])


def row_fingerprints(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per row, in order: the hash of ``columns``, and whether the row has any value there."""
    present = [column for column in columns if column in frame.columns]
    if not present or frame.empty:
        return np.zeros(len(frame), dtype=np.uint64), np.zeros(len(frame), dtype=bool)
    keys = pd.DataFrame({column: _comparable(frame[column]) for column in present})
    hashed = pd.util.hash_pandas_object(keys, index=False, categorize=False)
    return np.asarray(hashed, dtype=np.uint64), keys.notna().any(axis=1).to_numpy()


def _comparable(column: pd.Series) -> pd.Series:
    """Values as pandas compares them after a concat: numbers as float64, anything else as
    Python objects with one missing marker."""
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return column.astype("float64")
    values = column.astype(object)
    return values.where(values.notna(), None)


def record_fingerprints(frame: pd.DataFrame, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the fingerprint of the whole record (what "the same row" means for idempotent
    ingest), and whether the row has any value."""
    return row_fingerprints(frame, spec.record_columns)


def wanted_keys(spec: DatasetSpec) -> dict[str, tuple[str, ...]]:
    """Every fingerprint a stored table keeps: whole records, and each history rule's key."""
    keys = {RECORD: tuple(spec.record_columns)}
    for check in spec.history_checks:
        columns = key_columns(check, spec)
        keys[key_name(columns)] = columns
    return keys


def all_fingerprints(frame: pd.DataFrame, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """The fingerprints :func:`wanted_keys` names, for one table."""
    return {name: fingerprints(frame, columns) for name, columns in wanted_keys(spec).items()}


def history_findings(
    tables: Mapping[str, Mapping[str, np.ndarray]], spec: DatasetSpec
) -> list[Finding]:
    """What breaks the history rules across ``tables`` (path → its fingerprints, in the order the
    tables were added). Duplicates within one table are the batch check's to report; here a row
    counts when its key also appears in another table, and each finding names the later table,
    the one a repair would remove, and the earlier tables it repeats."""
    findings: list[Finding] = []
    for check in spec.history_checks:
        findings += _duplicates_across(tables, check=check, spec=spec)
    return findings


def _duplicates_across(
    tables: Mapping[str, Mapping[str, np.ndarray]], *, check: Unique, spec: DatasetSpec
) -> list[Finding]:
    name = key_name(key_columns(check, spec))
    # An unreadable table has no fingerprints: its own check already refuses it.
    rows_of = {path: tables[path].get(name, _NONE) for path in tables}
    paths = list(rows_of)
    if len(paths) < 2:
        return []
    keys = [np.unique(rows_of[path]) for path in paths]
    merged = np.sort(np.concatenate(keys))
    # A key two tables share sits next to itself once sorted (each table's keys are unique).
    shared = np.unique(merged[1:][merged[1:] == merged[:-1]])
    if shared.size == 0:
        return []
    total = sum(len(rows) for rows in rows_of.values())
    unexpected = sum(int(np.isin(rows, shared).sum()) for rows in rows_of.values())
    share = unexpected / total
    if share <= 1 - check.mostly:
        return []
    tolerance = "" if check.mostly >= 1 else f" in at least {check.mostly:.1%} of rows"
    findings = []
    seen = keys[0]
    for index in range(1, len(paths)):
        rows = rows_of[paths[index]]
        repeated = np.isin(rows, seen)
        if repeated.any():
            earlier = [paths[other] for other in range(index) if np.isin(keys[other], rows).any()]
            findings.append(
                Finding(
                    expectation=UNIQUE,
                    column=", ".join(check.columns) if check.columns else None,
                    severity="warning" if check.severity == "warning" else "failure",
                    observed=(
                        f"{int(repeated.sum())} of its {len(rows)} rows repeat rows of "
                        f"{', '.join(earlier)} ({unexpected} of {total} rows, {share:.2%}, "
                        f"are duplicates across {len(paths)} tables)"
                    ),
                    allowed="no duplicate records across tables" + tolerance,
                    unexpected_count=int(repeated.sum()),
                    table=paths[index],
                    scope="history",
                )
            )
        seen = np.union1d(seen, keys[index])
    return findings
