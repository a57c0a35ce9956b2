"""What the CLI prints from what the services answer."""

from __future__ import annotations

from pathlib import Path

from lakeloop.cli import _batch_name, _rejection_lines


def test_blocked_merge_lists_one_failed_check_per_line() -> None:
    reason = (
        "pre-merge hook aborted, run id 'r1': hook run id '0000_0000' failed on action "
        "'lakeloop-data-checks' hook 'lakeloop_validate': "
        "webhook request failed (status code: 400): "
        "data checks failed on data/b/bad.parquet: median_income: column values to be between "
        "(12 rows); missing column households"
    )
    lines = _rejection_lines(reason)
    assert lines[1] == "data checks failed on data/b/bad.parquet:"
    assert lines[2:] == [
        "  - median_income: column values to be between (12 rows)",
        "  - missing column households",
    ]


def test_other_refusals_are_shown_whole() -> None:
    assert _rejection_lines("webhook request failed: connection refused") == [
        "webhook request failed: connection refused"
    ]


def test_batch_names_are_safe_for_lakefs_branch_names() -> None:
    assert _batch_name(Path("Sales 2026/11 (final).csv")) == "11--final"
    assert _batch_name(Path("...csv")) == "batch"
