"""The clean-holdout gate end to end: the training pipeline (``pipelines.train.train_and_promote``)
against a real MLflow server, on a training frame built from tables as the training flow builds it
(``DataGate.training_frame``, which marks the rows of ``feedback-*`` tables).

A drift retrain folds the prices clients reported into a feedback table. Feedback rows are recent,
so they make the holdout that judges the model trained on them: prices reported 1.5 times too high
would carry a worse model through the usual gate. The gate judges that model and the champion on
the rows that predate the feedback too, and refuses it there; the same retrain with the true prices
is promoted. On the synthetic market (the hash split) and on the Ames sales (the time split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from lakeloop import datagate, draft, model, registry
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.lakefs_client import StoredTable
from lakeloop.settings import Settings
from lakeloop.validation.checks import warm_validator
from pipelines import train
from tests.utils.mlflow_server import mlflow_server
from tests.utils.real_data import read_ames
from tests.utils.training import lineage, registry_settings
from tooling import market

pytestmark = pytest.mark.integration

POISON = 1.5
"""Every reported price this many times the true one (all within the description's bounds)."""


@dataclass(frozen=True)
class Retrain:
    """A champion's data and the feedback a drift retrain folds in, with true prices."""

    spec: DatasetSpec
    champion_data: pd.DataFrame
    feedback: pd.DataFrame

    def reported(self, factor: float) -> pd.DataFrame:
        """The feedback with every reported price ``factor`` times the true one."""
        target = self.spec.target.name
        return self.feedback.assign(**{target: self.feedback[target] * factor})


def synthetic_market() -> Retrain:
    """California-like market: 4,000 rows for the champion; a drifted window of 1,000 sales (half
    in a new region, incomes 20 % higher) reported back."""
    drifted = market.Scenario(new_region_share=0.5, income_multiplier=1.2)
    return Retrain(
        spec=load_spec(),
        champion_data=market.generate_batch(rows=4000, seed=1),
        feedback=market.generate_batch(rows=1000, seed=2, scenario=drifted),
    )


def ames() -> Retrain:
    """Ames (dated sales: the time split): the champion on the sales up to 2008, the sales of
    2009 and 2010 reported back. (The 2009 sales alone are 25 % of the rows: the time split keeps
    the most recent 30 % out of fit, so none of them would be fitted on, and the model, learning
    from none of the poison, is rightly not refused.)"""
    raw = read_ames()
    spec = draft.draft(raw, target="SalePrice", name="ames").spec
    return Retrain(
        spec=spec,
        champion_data=raw[raw["Yr Sold"] <= 2008],
        feedback=raw[raw["Yr Sold"] >= 2009],
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = registry_settings(tmp_path_factory.mktemp("clean-gate"))
    with mlflow_server(settings):
        yield settings


def _training_data(spec: DatasetSpec, tables: dict[str, pd.DataFrame]) -> datagate.TrainingData:
    """The tables (path → frame) as the training flow makes them one frame."""
    gate = datagate.DataGate(spec, warm_validator, prefix="data/", state_dir=None)
    return gate.training_frame(
        {path: StoredTable(checksum=path, frame=frame) for path, frame in tables.items()},
        lambda _: spec,
    )


def _train(
    settings: Settings,
    spec: DatasetSpec,
    tables: dict[str, pd.DataFrame],
    *,
    commit: str,
    report: Path,
) -> train.Outcome:
    """Train the tables as the validated data of ``commit``, as the training flow does."""
    data = _training_data(spec, tables)
    return train.train_and_promote(
        settings,
        spec,
        data.frame,
        feedback=data.feedback,
        lineage=lineage(spec, commit, trigger="drift"),
        report=report,
    )


@pytest.mark.parametrize("make", [synthetic_market, ames], ids=["market", "ames"])
def test_poisoned_feedback_is_refused_on_the_rows_that_predate_it_and_true_prices_promoted(
    make: Callable[[], Retrain], server: Settings, tmp_path: Path
) -> None:
    retrain = make()
    name = f"clean-gate-{retrain.spec.name}"
    settings = server.model_copy(
        update={"mlflow": server.mlflow.model_copy(update={"model_name": name, "experiment": name})}
    )
    report = tmp_path / "validation"
    report.mkdir()
    (report / "result.json").write_text("{}")
    client = registry.connect(settings)
    digit = "a" if retrain.spec.name == "ames" else "c"
    history = {"data/2026/champion.parquet": retrain.champion_data}

    first = _train(settings, retrain.spec, history, commit=digit + "1" * 63, report=report)
    assert first.promoted, first.failures
    assert first.trained.clean_holdout is None  # no feedback: judged as always

    with_poison = history | {"data/feedback-window_1.parquet": retrain.reported(POISON)}
    poisoned = _train(settings, retrain.spec, with_poison, commit=digit + "2" * 63, report=report)
    assert poisoned.trained.clean_holdout is not None
    rows = len(poisoned.trained.clean_holdout)
    champion = f"champion v{first.logged.version}"
    refusals = [r for r in poisoned.failures if r.startswith(f"on the {rows} rows that predate")]
    assert refusals, poisoned.failures
    assert "MAE" in refusals[0]
    assert f"{champion}'s" in refusals[0]
    # On the holdout the poison shaped, it is no worse than the champion: the usual comparison
    # alone would have let it through.
    assert not [r for r in poisoned.failures if "on the same holdout" in r], poisoned.failures
    current = registry.champion(client, settings)
    assert current is not None
    assert current.version == first.logged.version
    version = client.get_model_version(name, poisoned.logged.version)
    assert refusals[0] in version.tags[registry.TAG_GATE_REASONS]
    metrics = client.get_run(poisoned.logged.run_id).data.metrics
    assert metrics["clean_holdout_mae"] == poisoned.trained.clean_metrics["mae"]  # type: ignore[index]
    assert metrics["champion_clean_holdout_mae"] > 0
    assert client.get_run(poisoned.logged.run_id).data.params["clean_holdout_rows"] == str(rows)
    assert f"the {rows} rows that predate the folded feedback" in poisoned.summary
    # `lakeloop model promote` judges it again by the same rule, on the same data.
    data = _training_data(retrain.spec, with_poison)
    again = registry.rejudge(
        client,
        settings,
        version=poisoned.logged.version,
        rows=model.split_rows(data.frame, retrain.spec, settings.training, feedback=data.feedback),
        spec=retrain.spec,
        commit_id=digit + "2" * 63,
    )
    assert refusals[0] in again.reasons

    legitimate = _train(
        settings,
        retrain.spec,
        history | {"data/feedback-window_1.parquet": retrain.reported(1.0)},
        commit=digit + "3" * 63,
        report=report,
    )
    assert legitimate.promoted, legitimate.failures
    assert legitimate.champion is not None
    assert legitimate.champion.clean_metrics is not None
    clean = legitimate.trained.clean_metrics
    assert clean is not None
    assert clean["mae"] <= legitimate.champion.clean_metrics["mae"] * (
        1 + settings.training.champion_tolerance
    )
