"""Great Expectations validation vs a plain pandas pass computing the same checks.

Run with ``python -m benchmarks.validation``. Prints figures side by side; never asserts timing
(the goal it informs: the pre-merge hook answers a 100k-row batch well under 10 s on 2 cores).
"""

from __future__ import annotations

import time

import pandas as pd

from benchmarks.timing import best_of
from lakeloop.dataset import Between, DatasetSpec, LessOrEqual, Unique, load_spec
from tooling import market

SIZES = (100_000, 1_000_000)
REPEATS = 3


def pandas_checks(frame: pd.DataFrame, spec: DatasetSpec) -> bool:
    """The suite's checks written directly in pandas: what GX's bookkeeping is compared with."""
    if len(frame) < spec.min_rows or set(frame.columns) != set(spec.columns):
        return False
    ok = True
    for feature in spec.features:
        column = frame[feature.name]
        numeric = pd.api.types.is_numeric_dtype(column)
        ok &= numeric if feature.type == "numeric" else not numeric
        ok &= column.isna().mean() <= feature.missing_budget
        if feature.type == "categorical":
            inside = column.dropna().isin(feature.categories)
        else:
            inside = column.dropna().between(
                feature.min or -float("inf"), feature.max or float("inf")
            )
        ok &= inside.mean() >= feature.mostly if len(inside) else True
    target = frame[spec.target.name]
    ok &= bool(target.notna().all()) and pd.api.types.is_numeric_dtype(target)
    ok &= bool(target.between(spec.target.min, spec.target.max).all())
    for check in spec.checks:
        ok &= _rule_holds(frame, check) or check.severity == "warning"
    return bool(ok)


def _rule_holds(frame: pd.DataFrame, check: LessOrEqual | Unique | Between) -> bool:
    if isinstance(check, LessOrEqual):
        pair = frame[[check.left, check.right]].dropna()
        kept = (pair[check.left] <= pair[check.right]).mean() if len(pair) else 1.0
    elif isinstance(check, Unique):
        kept = 1 - frame.duplicated(list(check.columns or frame.columns), keep=False).mean()
    else:
        kept = frame[check.column].between(check.min, check.max).mean()
    return bool(kept >= check.mostly)


def main() -> None:
    """Print cold set-up time, then warm GX vs pandas per batch size."""
    spec = load_spec()
    started = time.perf_counter()
    from lakeloop.validation.checks import Validator  # noqa: PLC0415 - the import is part of the cold cost

    validator = Validator(spec)
    cold = time.perf_counter() - started
    print(
        f"cold set-up (import GX + context + suite of {len(validator.suite.expectations)}): "
        f"{cold:.2f} s"
    )
    print(f"{'rows':>10} {'GX warm (s)':>12} {'pandas (s)':>11} {'ratio':>7}  outcome")
    for rows in SIZES:
        frame = market.generate_batch(rows=rows, seed=1)
        result = validator.validate(frame)
        gx_seconds = best_of(lambda frame=frame: validator.validate(frame), repeats=REPEATS)
        pandas_seconds = best_of(lambda frame=frame: pandas_checks(frame, spec), repeats=REPEATS)
        print(
            f"{rows:>10,} {gx_seconds:>12.3f} {pandas_seconds:>11.3f} "
            f"{gx_seconds / pandas_seconds:>6.1f}x  GX {result.outcome}, "
            f"pandas {'passed' if pandas_checks(frame, spec) else 'failed'}"
        )


def history_verdicts() -> None:
    """The pre-merge verdict on main + one new batch as main's history grows: with every old
    table's check kept (what the gateway and the training flow do) it costs the new batch's GX
    check plus comparing fingerprints, side by side with checking every table again."""
    from lakeloop.datagate import DataGate  # noqa: PLC0415
    from lakeloop.validation.checks import warm_validator  # noqa: PLC0415

    spec = load_spec()
    gate = DataGate(spec, warm_validator, prefix="data/", state_dir=None)
    batch_rows = 20_000
    print(f"{'tables on main':>15} {'kept checks (s)':>16} {'all again (s)':>14} {'ratio':>7}")
    for history in (1, 10, 50):
        frames = [market.generate_batch(rows=batch_rows, seed=seed) for seed in range(history + 1)]
        checks = {f"data/{i:03d}/batch.parquet": gate.check_table(f) for i, f in enumerate(frames)}
        new_path = max(checks)
        kept = {path: check for path, check in checks.items() if path != new_path}

        def with_kept(
            kept: dict = kept, new: pd.DataFrame = frames[-1], path: str = new_path
        ) -> None:
            gate.judge({**kept, path: gate.check_table(new)})

        def all_again(frames: list = frames) -> None:
            gate.judge({f"data/{i:03d}/b": gate.check_table(f) for i, f in enumerate(frames)})

        fast = best_of(with_kept, repeats=REPEATS)
        slow = best_of(all_again, repeats=1)
        print(f"{history:>15} {fast:>16.3f} {slow:>14.3f} {slow / fast:>6.1f}x")


if __name__ == "__main__":
    main()
    history_verdicts()
