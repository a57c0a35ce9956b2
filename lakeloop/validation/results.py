"""What a validation found, in words: findings, the result of one run, and their renderings.

Great Expectations answers with one record per expectation; this module turns the broken ones
into :class:`Finding` objects a data owner can act on, naming each cause once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing great_expectations costs seconds: only who validates pays
    from great_expectations.alias_types import JSONValues
    from great_expectations.core import ExpectationValidationResult
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

EXAMPLES = 3
"""How many offending values a finding quotes."""
COLUMN_EXISTS = "expect_column_to_exist"
COLUMN_TYPES = "expect_column_values_to_be_in_type_list"
COLUMN_SET = "expect_table_columns_to_match_set"
PAIR = "expect_column_pair_values_a_to_be_greater_than_b"


@dataclass(frozen=True)
class Finding:
    """One broken expectation, in words a data owner can act on."""

    expectation: str
    """Great Expectations' name for it, e.g. ``expect_column_values_to_be_between``."""
    column: str | None
    """The column, ``"a, b"`` for a pair or compound key, ``None`` for the table."""
    severity: str
    """``failure`` (blocks) or ``warning`` (reported only)."""
    observed: str
    """What the batch holds: the observed value, or how many rows break it and a few of them."""
    allowed: str
    """What the description allows."""
    unexpected_count: int | None
    table: str | None = None
    """The stored table it was found in, when a result judges several (a lakeFS path)."""
    scope: str = "batch"
    """``batch`` (the table on its own) or ``history`` (across every table on the branch)."""

    @property
    def line(self) -> str:
        """One readable line: table, column, expectation, what was seen and what is allowed."""
        within = f"{self.table}: " if self.table else ""
        if self.expectation == "expect_column_to_exist":
            return f"{within}missing column {self.column} ({self.expectation})"
        phrase = self.expectation.removeprefix("expect_").replace("_", " ")
        if self.scope == "history":
            phrase += " across the history"
        where = self.column or "table"
        return (
            f"{within}{where}: {self.expectation} ({phrase}): {self.observed}; "
            f"allowed {self.allowed}"
        )


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of checking one table."""

    success: bool
    """No failure-severity finding."""
    rows: int
    findings: list[Finding]
    """Failures first, then warnings."""
    raw: dict[str, JSONValues]
    """Great Expectations' own result (``to_json_dict()``), for Data Docs and audits."""
    tables: dict[str, dict[str, JSONValues]] = field(default_factory=dict)
    """When the result judges several stored tables: Great Expectations' result of each, by path
    (``raw`` is then empty)."""

    @property
    def failures(self) -> list[str]:
        """One readable line per failure-severity finding."""
        return [finding.line for finding in self.findings if finding.severity == "failure"]

    @property
    def warnings(self) -> list[str]:
        """One readable line per warning-severity finding."""
        return [finding.line for finding in self.findings if finding.severity == "warning"]

    @property
    def failing_tables(self) -> list[str]:
        """Stored tables named by a failure, in order (when the result judges several)."""
        named = (f.table for f in self.findings if f.severity == "failure" and f.table)
        return list(dict.fromkeys(named))

    @property
    def outcome(self) -> str:
        """``passed``, ``passed with N warnings`` or ``failed: <failures>``."""
        if not self.success:
            return "failed: " + "; ".join(self.failures)
        if self.warnings:
            return f"passed with {len(self.warnings)} warnings"
        return "passed"

    def to_markdown(self) -> str:
        """A table of findings (table, column, expectation, observed, allowed, severity, scope)
        and a summary."""
        where = f" in {len(self.tables)} tables" if self.tables else ""
        lines = [
            f"**Data checks {self.outcome.split(':')[0]}** on {self.rows} rows{where}: "
            f"{len(self.failures)} failures, {len(self.warnings)} warnings."
        ]
        if self.findings:
            lines += [
                "",
                "| table | column | expectation | observed | allowed | severity | scope |",
                "|---|---|---|---|---|---|---|",
            ]
            lines += [
                "| "
                + " | ".join(
                    _cell(value)
                    for value in (
                        finding.table or "(this batch)",
                        finding.column or "(table)",
                        finding.expectation,
                        finding.observed,
                        finding.allowed,
                        finding.severity,
                        "across the history" if finding.scope == "history" else "within a batch",
                    )
                )
                + " |"
                for finding in self.findings
            ]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, object]:
        """Summary, findings and Great Expectations' raw result, ready for ``json.dumps``."""
        return {
            "success": self.success,
            "outcome": self.outcome,
            "rows": self.rows,
            "failures": self.failures,
            "warnings": self.warnings,
            "findings": [asdict(finding) for finding in self.findings],
            "raw": self.raw,
            "tables": self.tables,
        }

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> ValidationResult:
        """The result :meth:`to_json` stored (``json.loads`` of it, read unchecked)."""
        return cls(
            success=stored["success"],
            rows=stored["rows"],
            findings=[Finding(**finding) for finding in stored["findings"]],
            raw=stored["raw"],
            tables=stored.get("tables") or {},
        )

    def in_table(self, path: str) -> ValidationResult:
        """The same result with each finding naming the stored table ``path``."""
        return replace(self, findings=[replace(f, table=path) for f in self.findings])


def combine(
    parts: dict[str, ValidationResult], *, history: list[Finding] | None = None
) -> ValidationResult:
    """One result for several stored tables, each judged on its own (``parts``, by path), plus
    the findings of rules that span them (``history``): it passes only when every part passes
    and no history rule failed."""
    findings = [finding for path, part in parts.items() for finding in part.in_table(path).findings]
    findings += history or []
    return ValidationResult(
        success=not any(finding.severity == "failure" for finding in findings),
        rows=sum(part.rows for part in parts.values()),
        findings=sorted(findings, key=lambda f: (f.severity != "failure", f.table or "")),
        raw={},
        tables={path: part.raw for path, part in parts.items()},
    )


def _cell(value: str) -> str:
    # A pipe or a newline would break the markdown table.
    return value.replace("|", "\\|").replace("\n", " ")


def finding_from(check: ExpectationValidationResult, *, rows: int) -> Finding | None:
    """The finding for one Great Expectations ``ExpectationValidationResult`` (None if it held)."""
    if check.success or check.expectation_config is None:
        return None
    config = check.expectation_config
    # GX's result details: a plain dict whose keys and value types vary with the result format.
    outcome: dict[str, Any] = dict(check.result or {})
    return Finding(
        expectation=config.type,
        column=", ".join(columns_of(config.kwargs)) or None,
        severity="warning" if str(_value(config.severity)) in {"warning", "info"} else "failure",
        observed=_observed(config, outcome, error=_error(check.exception_info), rows=rows),
        allowed=str((config.meta or {}).get("allowed", "")),
        unexpected_count=outcome.get("unexpected_count"),
    )


def summarise(findings: list[Finding | None]) -> list[Finding]:
    """Name each cause once, failures first.

    A missing column or a column of the wrong type breaks every other expectation on it;
    repeating those would bury the cause, so only the column-level finding is kept.
    """
    found = [finding for finding in findings if finding is not None]
    missing = {f.column for f in found if f.expectation == COLUMN_EXISTS}
    mistyped = {f.column for f in found if f.expectation == COLUMN_TYPES} - missing
    kept = [
        finding for finding in found if not _caused_by(finding, missing=missing, mistyped=mistyped)
    ]
    return sorted(kept, key=_reading_order)


def _reading_order(finding: Finding) -> tuple[bool, bool, str, str]:
    # Failures before warnings, table-level before columns; GX returns results in no set order.
    return (
        finding.severity != "failure",
        finding.column is not None,
        finding.column or "",
        finding.expectation,
    )


def _caused_by(finding: Finding, *, missing: set[str | None], mistyped: set[str | None]) -> bool:
    if finding.expectation == COLUMN_EXISTS:
        return False
    if finding.expectation == COLUMN_SET:
        # Only unexpected columns are news here; missing ones have their own finding.
        return "unexpected" not in finding.observed
    touched = set((finding.column or "").split(", "))
    if touched & missing:
        return True
    return finding.expectation != COLUMN_TYPES and bool(touched & mistyped)


def columns_of(kwargs: dict[str, Any]) -> list[str]:
    """The columns an expectation reads, from its kwargs (GX's plain ``dict``: column names,
    bounds, value sets)."""
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_A" in kwargs:
        # Our rules say left <= right; GX says A >= B with A = right, B = left.
        return [kwargs["column_B"], kwargs["column_A"]]
    return list(kwargs.get("column_list", []))


def _observed(
    config: ExpectationConfiguration, outcome: dict[str, Any], *, error: str | None, rows: int
) -> str:
    if error is not None:
        return f"could not be checked: {error}"
    if config.type == COLUMN_EXISTS:
        return "missing"
    if config.type == COLUMN_SET:
        mismatched = (outcome.get("details") or {}).get("mismatched") or {}
        unexpected = mismatched.get("unexpected") or []
        # Missing columns get their own finding; this one is about columns nobody described.
        return "unexpected " + ", ".join(unexpected) if unexpected else "missing columns"
    count = outcome.get("unexpected_count")
    if count is None:
        return f"observed {outcome.get('observed_value')}"
    share = count / rows if rows else 0.0
    examples = _examples(config.type, outcome.get("partial_unexpected_list") or [])
    return f"{count} of {rows} rows ({share:.2%})" + (f", e.g. {examples}" if examples else "")


def _examples(expectation: str, values: list[object]) -> str:
    shown = []
    for value in values[:EXAMPLES]:
        if isinstance(value, dict):
            return ""  # whole duplicated records: too long to quote, the count says enough
        if expectation == PAIR and isinstance(value, list | tuple):
            shown.append(f"{_show(value[1])} > {_show(value[0])}")
        else:
            shown.append(_show(value))
    return ", ".join(shown)


def _show(value: Any) -> str:  # any value a column held: float() is tried, not promised
    # numpy scalars repr as np.float64(1.0); a reader wants 1.
    if isinstance(value, str):
        return repr(value)
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return repr(value)


def _error(exception_info: object) -> str | None:
    """The first exception message in GX's exception info (flat or keyed by metric)."""
    if not isinstance(exception_info, dict):
        return None
    infos = [exception_info, *(v for v in exception_info.values() if isinstance(v, dict))]
    for info in infos:
        if info.get("raised_exception") and info.get("exception_message"):
            return str(info["exception_message"])
    return None


def _value(severity: object) -> object:
    return getattr(severity, "value", severity)
