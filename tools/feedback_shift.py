"""Measure how far reported prices sit from a champion's predictions (the factor the retrain's
feedback check compares with ``LAKELOOP_MONITORING__FEEDBACK_TOLERANCE``, monitoring.labels) for
real market moves and for poisoned feeds, on the synthetic market and on the raw Ames sales:

    .venv/bin/python tools/feedback_shift.py

A champion is trained on 4,000 sales of the market (seeds 1 and 7) and on the Ames sales up to
2008; each window is 1,000 later sales (Ames: the 2009-2010 sales) with their true prices, or
those prices times a factor. The Ames table is read here only, never at run time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lakeloop import model
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.draft import draft
from lakeloop.settings import Settings
from tooling import market

AMES = (
    Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ames_housing" / "AmesHousing.csv"
)
WINDOWS = {
    "stable market": market.Scenario(),
    "demo's shifted market": market.Scenario(new_region_share=0.5, income_multiplier=1.2),
    "incomes +30 %": market.Scenario.preset("income-shift"),
    "prices +25 %": market.Scenario.preset("inflation"),
}
FEEDS = (1.0, 1.2, 1.5)


def factor(
    trained: model.TrainedModel, spec: DatasetSpec, window: pd.DataFrame, feed: float
) -> float:
    """The check's factor: window's median log(actual / predicted) against the holdout's."""
    predicted = np.asarray(trained.pipeline.predict(window[spec.feature_names]), dtype=float)
    live = model.median_log_ratio(window[spec.target.name].to_numpy() * feed, predicted)
    usual = trained.metrics[model.MEDIAN_LOG_RATIO]
    assert live is not None
    return math.exp(live - usual)


def main() -> None:
    training = Settings().training
    spec = load_spec(Settings().dataset)
    print(f"{'window':38s} " + " ".join(f"{'feed x' + str(feed):>10s}" for feed in FEEDS))
    for seed in (1, 7):
        trained = model.train(market.generate_batch(rows=4000, seed=seed), spec, training)
        for offset, (name, scenario) in enumerate(WINDOWS.items()):
            window = market.generate_batch(
                rows=1000, seed=seed + 2000 + 1000 * offset, scenario=scenario
            )
            row = " ".join(f"{factor(trained, spec, window, feed):10.2f}" for feed in FEEDS)
            print(f"{f'market seed {seed}, {name}':38s} {row}")
    sales = pd.read_csv(AMES)
    earlier, later = sales[sales["Yr Sold"] <= 2008], sales[sales["Yr Sold"] > 2008]
    ames = draft(earlier, target="SalePrice", name="ames").spec
    trained = model.train(earlier, ames, training)
    row = " ".join(f"{factor(trained, ames, later, feed):10.2f}" for feed in FEEDS)
    print(f"{'Ames, 2009-2010 sales':38s} {row}")


if __name__ == "__main__":
    main()
