"""A retrain folds the prices reported for its drift window into lakeFS once per window: the same
window checked twice (a repeated drift event, a retrain run again) adds nothing the second time,
even when more prices arrived for that window in between, and a later window is folded beside it.
Real lakeFS SDK against the lakeFS-compatible server; the predictions and prices are logged by
the API's own writer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lakefs
import numpy as np
import pandas as pd
import pytest

from lakeloop import lakefs_client
from lakeloop.dataset import DatasetSpec
from lakeloop.events import SKIP_TRAINING_KEY, WINDOW
from lakeloop.settings import Settings
from monitoring.labels import UNKNOWN_CLIENT
from monitoring.window import window_id
from pipelines.retrain import DriftWindow, Fold, feedback_table_name, fold_feedback
from tests.utils.api_logs import Logs
from tests.utils.local_lakefs import local_repository
from tooling import market

pytestmark = pytest.mark.integration

LAKEFS_SECRET = "retrain-window-lakefs-secret-0123456789"
CHAMPION = "3"
START = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Served:
    """A lakeFS repository and the logs the API wrote while the champion served."""

    settings: Settings
    client: lakefs.Client
    logs: Logs

    def main(self) -> lakefs.Reference:
        return lakefs_client.main_reference(self.client, self.settings)

    def head(self) -> str:
        return lakefs_client.head_commit(self.client, self.settings)

    def feedback_tables(self) -> list[str]:
        """The folded feedback tables on main, in the order they were folded."""
        paths = lakefs_client.table_paths(self.main(), self.settings)
        return [path for path in paths if path.rsplit("/", 1)[-1].startswith("feedback-")]

    def predicted(self, *, rows: int, seed: int, at: datetime) -> tuple[DriftWindow, list[str]]:
        """The champion predicts ``rows`` sales at ``at``: the drift window of those predictions
        (named as the monitor names it), and their prediction ids."""
        sales = market.generate_batch(rows=rows, seed=seed)
        ids = self.logs.predict(sales, version=CHAMPION, at=at)
        window = DriftWindow(
            champion_version=CHAMPION, window_id=window_id(at, at, rows), start=at, end=at
        )
        return window, ids

    def fold(self, spec: DatasetSpec, window: DriftWindow, *, bias: float | None = None) -> Fold:
        assert window.start is not None
        assert window.end is not None
        return fold_feedback(self.settings, spec, window, window.start, window.end, bias=bias)


@pytest.fixture
def served(tmp_path: Path, spec: DatasetSpec) -> Iterator[Served]:
    with local_repository(tmp_path, secret=LAKEFS_SECRET) as (settings, client):
        yield Served(settings, client, Logs(settings.state_dir, spec))


def test_the_same_window_folded_twice_is_in_lakefs_once(served: Served, spec: DatasetSpec) -> None:
    """A window already folded is not folded again, even when prices for more of its
    predictions were reported since: the second fold merges nothing and main keeps one
    feedback table for the window."""
    window, ids = served.predicted(rows=20, seed=11, at=START)
    served.logs.report(ids[:10], [250_000.0 + i for i in range(10)], at=START + timedelta(hours=1))

    first = served.fold(spec, window).published

    assert first is not None
    assert first.merged
    assert first.rows == 10
    assert first.metadata[WINDOW] == window.window_id
    assert first.metadata[SKIP_TRAINING_KEY] == "true"
    [table] = first.paths
    assert table.endswith("/" + feedback_table_name(window.window_id))
    assert served.feedback_tables() == [table]
    head = served.head()
    assert head == first.commit_id

    # Prices for five more of the window's predictions arrive; the window is checked again.
    served.logs.report(ids[10:15], [300_000.0 + i for i in range(5)], at=START + timedelta(hours=2))
    again = served.fold(spec, window)

    assert again.published is None
    assert "already in lakeFS" in again.note
    assert served.head() == head
    assert served.feedback_tables() == [table]
    stored = lakefs_client.read_table(
        served.client, served.settings, repository=served.settings.lakefs.repository, ref=head
    )
    assert len(stored) == 10


def test_a_later_window_is_folded_beside_one_already_folded(
    served: Served, spec: DatasetSpec
) -> None:
    """Folding is refused only for the window already folded: the next window's prices are
    published as their own table."""
    earlier, earlier_ids = served.predicted(rows=20, seed=11, at=START)
    served.logs.report(earlier_ids[:10], [250_000.0] * 10, at=START + timedelta(hours=1))
    folded = served.fold(spec, earlier).published
    assert folded is not None
    assert folded.merged

    later, later_ids = served.predicted(rows=12, seed=12, at=START + timedelta(days=1, minutes=5))
    served.logs.report(later_ids[:8], [260_000.0] * 8, at=START + timedelta(days=1, hours=1))
    published = served.fold(spec, later).published

    assert later.window_id != earlier.window_id
    assert published is not None
    assert published.merged
    assert published.rows == 8
    assert published.metadata[WINDOW] == later.window_id
    [table] = published.paths
    assert table.endswith("/" + feedback_table_name(later.window_id))
    assert served.feedback_tables() == [*folded.paths, table]
    assert served.head() == published.commit_id


def _sold(
    served: Served, spec: DatasetSpec, *, rows: int, seed: int
) -> tuple[DriftWindow, list[str], np.ndarray]:
    """The champion predicts ``rows`` sales of the market exactly (its predictions are their true
    prices): the window, the prediction ids and the true prices."""
    sales = market.generate_batch(rows=rows, seed=seed)
    truth = sales[spec.target.name].to_numpy(dtype=float)
    ids = served.logs.predict(sales, version=CHAMPION, at=START, predictions=truth)
    window = DriftWindow(
        champion_version=CHAMPION, window_id=window_id(START, START, rows), start=START, end=START
    )
    return window, ids, truth


def test_prices_shifted_beyond_the_tolerance_are_held_back(
    served: Served, spec: DatasetSpec
) -> None:
    """Every reported price times 1.5 (each within the target's bounds) is a systematic shift: the
    window is not folded, main is untouched, the rows wait in a file the user can ingest, and the
    verdict names the factor and the tolerance."""
    window, ids, truth = _sold(served, spec, rows=600, seed=21)
    poisoned = np.minimum(truth * 1.5, spec.target.max or np.inf)
    served.logs.report(ids, poisoned.tolist(), at=START + timedelta(hours=1), client="partner")
    head = served.head()

    fold = served.fold(spec, window)

    assert fold.check is not None
    assert not fold.check.passed
    assert fold.check.factor == pytest.approx(1.5, rel=0.03)
    assert "x1.40" in fold.check.reason  # the tolerance it exceeded
    assert fold.published is None
    assert not fold.folded
    assert served.head() == head
    assert served.feedback_tables() == []
    held = pd.read_parquet(fold.held_at)
    assert len(held) == 600
    assert fold.provenance is not None
    assert fold.provenance.clients == {"partner": 600}


def test_prices_within_the_tolerance_are_folded_with_who_reported_them(
    served: Served, spec: DatasetSpec
) -> None:
    """A 20 % rise is what retraining is for: folded, and the commit names the clients, how many
    prices each reported and when."""
    window, ids, truth = _sold(served, spec, rows=600, seed=22)
    risen = np.minimum(truth * 1.2, spec.target.max or np.inf)
    served.logs.report(
        ids[:400], risen[:400].tolist(), at=START + timedelta(hours=1), client="agency"
    )
    served.logs.report(
        ids[400:], risen[400:].tolist(), at=START + timedelta(hours=3), client="local"
    )

    fold = served.fold(spec, window)

    assert fold.check is not None
    assert fold.check.passed, fold.check.reason
    assert fold.folded
    assert fold.published is not None
    metadata = fold.published.metadata
    assert metadata["lakeloop.feedback.clients"] == "agency=400,local=200"
    assert metadata["lakeloop.feedback.rows"] == "600"
    assert metadata["lakeloop.feedback.first_reported"].startswith("2026-05-01T11:00:00")
    assert metadata["lakeloop.feedback.last_reported"].startswith("2026-05-01T13:00:00")
    [commit] = lakefs_client.commit_log(
        served.client, served.settings, ref=fold.published.commit_id, limit=1
    )
    assert commit.metadata["lakeloop.feedback.clients"] == "agency=400,local=200"


def test_the_shift_is_measured_against_the_champions_own_bias(
    served: Served, spec: DatasetSpec
) -> None:
    """A champion that priced its own holdout 1.5 times too low (its recorded bias) is expected
    to be as low live: prices times 1.5 are then as usual, and folded; the same prices with an
    unbiased champion are held back (the test above)."""
    window, ids, truth = _sold(served, spec, rows=600, seed=23)
    served.logs.report(ids, (truth * 1.5).tolist(), at=START + timedelta(hours=1))

    fold = served.fold(spec, window, bias=float(np.log(1.5)))

    assert fold.check is not None
    assert fold.check.passed, fold.check.reason
    assert fold.check.factor == pytest.approx(1.0, abs=0.02)
    assert fold.folded
    assert fold.provenance is not None
    assert fold.provenance.clients == {UNKNOWN_CLIENT: 600}


def test_a_window_overlapping_a_folded_one_is_judged_on_what_it_would_add(
    served: Served, spec: DatasetSpec
) -> None:
    """The monitor's windows overlap (the most recent predictions): prices already folded do not
    dilute the check of the ones that would be added, here all times 1.5."""
    earlier, ids, truth = _sold(served, spec, rows=600, seed=24)
    served.logs.report(ids, truth.tolist(), at=START + timedelta(hours=1))
    assert served.fold(spec, earlier).folded
    later_at = START + timedelta(days=1, minutes=5)
    sales = market.generate_batch(rows=600, seed=25)
    prices = sales[spec.target.name].to_numpy(dtype=float)
    later_ids = served.logs.predict(sales, version=CHAMPION, at=later_at, predictions=prices)
    served.logs.report(later_ids, (prices * 1.5).tolist(), at=later_at + timedelta(hours=1))
    both = DriftWindow(
        champion_version=CHAMPION,
        window_id=window_id(START, later_at, 1200),
        start=START,
        end=later_at,
    )

    fold = served.fold(spec, both)

    assert fold.check is not None
    assert fold.check.rows == 600
    assert not fold.check.passed, fold.check.reason
    assert not fold.folded
