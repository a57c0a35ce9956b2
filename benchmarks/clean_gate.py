"""The clean-holdout gate's tolerance, measured (``python -m benchmarks.clean_gate``).

A champion is trained on its data; a drift retrain folds a feedback table in (true prices, or
every price 1.2 or 1.5 times the true one) and trains on both, as the training flow does (tables
keyed as ingested, feedback rows marked). Printed: challenger / champion MAE and RMSE on the clean
holdout (the rows that predate the feedback), which the gate compares within
``training.champion_tolerance``, and on the usual holdout, which the feedback is part of.

- synthetic market (the hash split): champion on ``market.generate_batch(rows=4000, seed=1)``,
  feedback 1,000 rows of ``Scenario(new_region_share=0.5, income_multiplier=1.2)``, three seeds;
- Ames (the time split; the raw table from ``../shared/datasets``): champion on the sales up to
  2008, feedback the 2009 sales alone, then the 2009 and 2010 sales.

Asserts nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lakeloop import draft, model, rowkeys
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.settings import TrainingSettings
from tests.utils.real_data import read_ames
from tooling import market

TRAINING = TrainingSettings()
FACTORS = (1.0, 1.2, 1.5)


def ratios(
    label: str, spec: DatasetSpec, champion_data: pd.DataFrame, feedback: pd.DataFrame
) -> None:
    """Print the challenger / champion ratios for each reported-price factor."""
    champion = model.train(rowkeys.keyed(champion_data, spec), spec, TRAINING)
    target = spec.target.name
    for factor in FACTORS:
        reported = feedback.assign(**{target: feedback[target] * factor})
        frame = pd.concat([rowkeys.keyed(champion_data, spec), rowkeys.keyed(reported, spec)])
        marks = np.repeat([False, True], [len(champion_data), len(reported)])
        challenger = model.train(frame, spec, TRAINING, feedback=marks)
        assert challenger.clean_holdout is not None
        assert challenger.clean_metrics is not None
        clean = model.score(champion.pipeline, challenger.clean_holdout, spec)
        usual = model.score(champion.pipeline, challenger.holdout, spec)
        print(
            f"{label:<28} x{factor:<4} clean holdout {len(challenger.clean_holdout):>4} rows: "
            f"MAE {challenger.clean_metrics['mae'] / clean['mae']:.3f} "
            f"RMSE {challenger.clean_metrics['rmse'] / clean['rmse']:.3f} | "
            f"usual holdout {challenger.holdout_rows:>4} rows: "
            f"MAE {challenger.metrics['mae'] / usual['mae']:.3f} "
            f"RMSE {challenger.metrics['rmse'] / usual['rmse']:.3f}",
            flush=True,
        )


def main() -> None:
    drifted = market.Scenario(new_region_share=0.5, income_multiplier=1.2)
    champion_data = market.generate_batch(rows=4000, seed=1)
    for seed in (2, 3, 4):
        feedback = market.generate_batch(rows=1000, seed=seed, scenario=drifted)
        ratios(f"market, feedback seed {seed}", load_spec(), champion_data, feedback)
    raw = read_ames()
    spec = draft.draft(raw, target="SalePrice", name="ames").spec
    sold = raw["Yr Sold"]
    ratios("ames, feedback 2009", spec, raw[sold <= 2008], raw[sold == 2009])
    ratios("ames, feedback 2009-2010", spec, raw[sold <= 2008], raw[sold >= 2009])


if __name__ == "__main__":
    main()
