"""The monitor's whole step vs Evidently alone: a 50,000-row window against 20,000 reference rows.

Run with ``python -m benchmarks.drift``. Prints figures side by side; never asserts timing (the
goal it informs, from issue 7: the whole step within 1.2 times Evidently alone, under 5 s here).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset

from benchmarks.timing import best_of
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.settings import DriftPolicy
from lakeloop.stores.objects import ObjectStore
from lakeloop.stores.prediction_log import (
    FEEDBACK,
    PREDICTIONS,
    Entry,
    FeedbackEntry,
    SegmentWriter,
    feedback_table,
    prediction_table,
)
from monitoring.check import check_window
from monitoring.history import Window
from monitoring.window import champion_window
from tooling import market

WINDOW_ROWS = 50_000
REFERENCE_ROWS = 20_000
REPEATS = 3


def with_prediction(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    # A stand-in for the champion's output: monitoring only compares its distribution, so any
    # deterministic function of the features measures the same work.
    return frame.assign(prediction=frame["median_income"] * 40_000.0 + 50_000.0)[
        [*spec.feature_names, "prediction", spec.target.name]
    ]


def write_prediction_log(state: Path, window: pd.DataFrame, spec: DatasetSpec) -> None:
    """The window as the API logs it (Parquet segments of 5,000 rows) with every price reported,
    so selecting it reads and joins what a monitor run reads in production."""
    predictions = SegmentWriter(
        ObjectStore.folder(state / PREDICTIONS),
        prediction_table(spec),
        max_rows=10**6,
        flush_rows=10**6,
        flush_seconds=60,
    )
    feedback = SegmentWriter(
        ObjectStore.folder(state / FEEDBACK),
        feedback_table,
        max_rows=10**6,
        flush_rows=10**6,
        flush_seconds=60,
    )
    at = datetime.now(UTC)
    for start in range(0, len(window), 5_000):
        part = window.iloc[start : start + 5_000]
        ids = [f"p{start + i}" for i in range(len(part))]
        predictions.put(
            Entry(
                at=at,
                model_name="housing-price",
                model_version="1",
                prediction_ids=ids,
                predictions=part["prediction"].to_numpy(),
                columns={name: part[name].tolist() for name in spec.feature_names},
            )
        )
        predictions.flush()
        for prediction_id, price in zip(ids, part[spec.target.name], strict=True):
            feedback.put(FeedbackEntry(at=at, prediction_id=prediction_id, actual=float(price)))
        feedback.flush()


@contextmanager
def pushgateway() -> Iterator[str | None]:
    """A Pushgateway on loopback when Debian's package is installed, else None."""
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        yield None
        return
    port = 19091
    process = subprocess.Popen(
        # In memory: Debian's build otherwise reloads and rewrites a shared persistence file.
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    spec = load_spec()
    reference = with_prediction(market.generate_batch(rows=REFERENCE_ROWS, seed=1), spec)
    shifted = market.Scenario(new_region_share=0.3)
    window = with_prediction(
        market.generate_batch(rows=WINDOW_ROWS, seed=2, scenario=shifted), spec
    )
    without_feedback = window.drop(columns=[spec.target.name])
    drift_columns = [*spec.feature_names, "prediction"]

    def evidently_alone() -> object:
        return Report([DataDriftPreset()]).run(
            current_data=window[drift_columns], reference_data=reference[drift_columns]
        )

    with tempfile.TemporaryDirectory() as scratch, pushgateway() as gateway_url:
        runs = iter(range(1_000_000))

        def whole_step(current: pd.DataFrame) -> Callable[[], object]:
            def run() -> object:
                return check_window(
                    current=current,
                    reference=reference,
                    spec=spec,
                    window=Window(id=f"bench-{next(runs)}", rows=len(current)),
                    champion_version="1",
                    model_name="housing-price",
                    store=ObjectStore.folder(Path(scratch)),
                    now=datetime.now(UTC),
                    policy=DriftPolicy(),
                    baseline_quality={"mae": 40_000.0},
                    pushgateway_url=gateway_url,
                )

            return run

        state = Path(scratch) / "state"
        write_prediction_log(state, window, spec)
        select = best_of(
            lambda: champion_window(
                ObjectStore.folder(state), spec, model_version="1", rows=WINDOW_ROWS
            ),
            repeats=REPEATS,
        )
        evidently_alone()  # warm imports and caches once, for both sides
        alone = best_of(evidently_alone, repeats=REPEATS)
        step = best_of(whole_step(without_feedback), repeats=REPEATS)
        step_feedback = best_of(whole_step(window), repeats=REPEATS)

    pushed = "with a push to a local Pushgateway" if gateway_url else "no Pushgateway found"
    print(f"drift check: {WINDOW_ROWS:,}-row window vs {REFERENCE_ROWS:,} reference rows")
    print(
        f"(best of {REPEATS}; whole step = compute, parse, HTML report, history, decide; {pushed})"
    )
    print(f"{'Evidently Report.run alone (DataDriftPreset)':<52} {alone:7.2f} s")
    print(f"{'whole monitor step, no feedback prices':<52} {step:7.2f} s   {step / alone:4.2f}x")
    print(
        f"{'whole monitor step, with feedback (adds MAE/RMSE)':<52} {step_feedback:7.2f} s   "
        f"{step_feedback / alone:4.2f}x"
    )
    print(
        f"{'window read from the prediction log, prices joined':<52} {select:7.2f} s   "
        f"{select / alone:4.2f}x"
    )
    print("goal (issue 7): within 1.2x of Evidently alone and under 5 s")


if __name__ == "__main__":
    main()
