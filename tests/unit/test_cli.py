"""What the CLI prints from what the services answer."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from lakeloop.settings import Settings
from tooling import market
from tooling.cli import _rejection_lines, app


def test_blocked_merge_lists_one_failed_check_per_line() -> None:
    # lakeFS's 412 message on one line, then the hook's answer read from the hook run's output.
    reason = (
        "pre-merge hook aborted, run id 'r1': 1 error occurred: * hook run id '0000_0000' "
        "failed on action 'lakeloop-data-checks' hook 'lakeloop_validate': action failed: "
        "webhook request failed (status code: 400): "
        "data checks failed on data/b/bad.parquet:\n"
        "- median_income: column values to be between (12 rows, e.g. -1, -1; allowed 0.5 to 15)\n"
        "- missing column households"
    )
    lines = _rejection_lines(reason)
    assert lines[1] == "data checks failed on data/b/bad.parquet:"
    assert lines[2:] == [
        "  - median_income: column values to be between (12 rows, e.g. -1, -1; allowed 0.5 to 15)",
        "  - missing column households",
    ]


def test_other_refusals_are_shown_whole() -> None:
    assert _rejection_lines("webhook request failed: connection refused") == [
        "webhook request failed: connection refused"
    ]


def test_validate_passes_a_good_file_and_names_what_is_wrong_with_a_bad_one(
    settings: Settings, tmp_path: Path
) -> None:
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.csv"
    market.generate_batch(rows=500, seed=1).to_parquet(good, index=False)
    damaged = market.generate_batch(rows=500, seed=2)
    damaged.loc[:49, "median_income"] = -1.0
    damaged.to_csv(bad, index=False)
    runner = CliRunner()
    passed = runner.invoke(app, ["validate", str(good)])
    assert passed.exit_code == 0, passed.output
    failed = runner.invoke(app, ["validate", str(bad), "--report", str(tmp_path / "report")])
    assert failed.exit_code == 1
    assert "median_income" in failed.output
    assert "expect_column_values_to_be_between" in failed.output
    assert (tmp_path / "report" / "data_docs" / "index.html").exists()
