"""``lakeloop dataset init`` on large tables: drafting a description vs reading the table.

Run with ``python -m benchmarks.draft``. Prints figures side by side; never asserts timing (the
goal it informs: profiling a million rows takes seconds, not minutes). The table is the synthetic
market with what real exports add: an order id, a sale date, a ZIP code written as digits and a
free-text note.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.timing import best_of
from lakeloop.draft import draft
from lakeloop.ingest import read_source
from tooling import market

SIZES = (100_000, 1_000_000)


def export(rows: int) -> pd.DataFrame:
    """A market table as a real export would carry it."""
    frame = market.generate_batch(rows=rows, seed=11)
    rng = np.random.default_rng(11)
    frame.insert(0, "order_id", np.arange(rows) + 100_000)
    days = pd.to_datetime("2020-01-01") + pd.to_timedelta(rng.integers(0, 1800, rows), unit="D")
    frame.insert(1, "sold_at", days.strftime("%Y-%m-%d"))
    frame["zip_code"] = rng.choice(["02134", "02139", "98178", "98103"], rows)
    frame["notes"] = [f"note {i}" for i in range(rows)]
    return frame


def main() -> None:
    print(f"{'rows':>10}  {'read CSV s':>10}  {'draft s':>8}  {'draft / read':>12}  result")
    with tempfile.TemporaryDirectory() as folder:
        for rows in SIZES:
            path = Path(folder) / f"export-{rows}.csv"
            export(rows).to_csv(path, index=False)
            frame = read_source(path)
            read = best_of(lambda path=path: read_source(path), repeats=2)  # type: ignore[misc]
            started = time.perf_counter()
            drafted = draft(frame, target="median_house_value", name="export")
            once = time.perf_counter() - started
            spec = drafted.spec
            shape = (
                f"{len(spec.features)} features, ids {list(spec.ids)}, "
                f"time {spec.event_time.columns if spec.event_time else None}, "
                f"ignored {list(spec.ignore)}"
            )
            print(f"{rows:>10,}  {read:>10.2f}  {once:>8.2f}  {once / read:>12.2f}  {shape}")


if __name__ == "__main__":
    main()
