"""Training time and peak memory by data size (``python -m benchmarks.training``).

Each size runs in its own process, so peak memory (ru_maxrss) belongs to that size alone. Prints a
table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SIZES = (20_000, 200_000, 1_000_000)


def measure(rows: int) -> dict[str, float]:
    """Generate ``rows`` synthetic sales, train with the default settings, report times."""
    from lakeloop import market  # noqa: PLC0415 - imported in the measured child only
    from lakeloop.dataset import load_spec  # noqa: PLC0415
    from lakeloop.model import train  # noqa: PLC0415
    from lakeloop.settings import TrainingSettings  # noqa: PLC0415

    started = time.perf_counter()
    frame = market.generate_batch(rows=rows, seed=1)
    generated = time.perf_counter()
    trained = train(frame, load_spec(), TrainingSettings())
    finished = time.perf_counter()
    return {
        "rows": rows,
        "generate_s": generated - started,
        "train_s": finished - generated,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mae": trained.metrics["mae"],
        "rounds": float(trained.pipeline.named_steps["regress"].best_iteration + 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, help="measure one size (used by the parent run)")
    args = parser.parse_args()
    if args.rows:
        print(json.dumps(measure(args.rows)))
        return
    print(f"{'rows':>10} {'train s':>9} {'rows/s':>10} {'peak MB':>9} {'rounds':>7} {'MAE':>9}")
    for rows in SIZES:
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.training", "--rows", str(rows)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"{rows:>10,} {result['train_s']:>9.1f} {rows / result['train_s']:>10,.0f} "
            f"{result['peak_mb']:>9,.0f} {result['rounds']:>7.0f} {result['mae']:>9,.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
