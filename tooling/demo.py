"""`lakeloop demo`: the whole loop on the synthetic market, as a user would watch it."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import pandas as pd
import typer
from rich.table import Table

from lakeloop import lakefs_client, loop
from lakeloop.dataset import DatasetSpec, in_units, load_spec
from lakeloop.ingest import inspect_source, write_parquet
from lakeloop.settings import Settings
from monitoring.store import describe
from tooling import market
from tooling.terminal import (
    console,
    log_state,
    prepare_repository,
    publish,
    run_monitor,
    settings_or_exit,
    start_stack,
    urls,
)


def demo(
    keep: Annotated[bool, typer.Option(help="Leave the stack running after the demo.")] = False,
    rows: Annotated[int, typer.Option(min=200, help="Rows in the first batch.")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic market.")] = 1,
    drift: Annotated[
        bool, typer.Option(help="Then send stable and shifted traffic and watch it retrain.")
    ] = True,
) -> None:
    """Run the whole loop: commit a batch to lakeFS, watch it train, get predictions; then send
    traffic, shift the market, and watch drift detected, retraining and the new champion."""
    logging.basicConfig(level=logging.WARNING)
    # A demo shows the retrain every time it runs, so the cooldown since the last retrain (an
    # hour by default) is a minute here unless set; the flows inherit it from this process.
    os.environ.setdefault("LAKELOOP_MONITORING__POLICY__COOLDOWN", "PT1M")
    settings = settings_or_exit()
    spec = load_spec(settings.dataset)
    started = time.monotonic()
    stack = start_stack(settings)
    try:
        console.log(f"stack up in {time.monotonic() - started:.1f} s")
        prepare_repository(settings)
        batch_file = write_parquet(
            market.generate_batch(rows=rows, seed=seed),
            settings.state_dir / f"demo-seed{seed}.parquet",
        )
        committed = time.monotonic()
        published = publish(
            settings,
            [inspect_source(batch_file)],
            name=f"demo-seed{seed}",
            source=f"lakeloop synthetic market, seed {seed}",
            dataset_version=spec.version,
            description=spec.to_yaml(),
        )
        if published.commit_id is None:
            raise loop.LoopError(f"the demo batch was blocked: {published.rejection}")
        with console.status("waiting for the lakeFS webhook to trigger training") as status:
            run = loop.wait_for_training(
                settings, commit_id=published.commit_id, on_state=lambda s: log_state(status, s)
            )
            trained = time.monotonic()
            status.update("waiting for the API to serve the new champion")
            model = loop.wait_until_served(settings, commit_id=published.commit_id)
        served = time.monotonic()
        sample = market.generate_batch(rows=5, seed=seed + 1000)
        answer = loop.predict(settings, loop.json_records(sample[spec.feature_names]))
        console.print(_predictions(sample, answer, spec))
        console.print(
            _timings(
                model,
                run.name,
                started=started,
                committed=committed,
                trained=trained,
                served=served,
            )
        )
        if drift:
            _drift_act(settings, spec, champion=str(model["version"]), seed=seed)
        console.print(urls(settings, title="where to look (while the stack runs)"))
    except (loop.LoopError, lakefs_client.LakeFSError) as error:
        console.print(f"[red]the loop did not close:[/red] {error}")
        console.print(f"logs: {settings.state_dir / 'logs'}")
        raise typer.Exit(1) from error
    finally:
        if keep:
            console.print("the stack keeps running; stop it with [bold]lakeloop down[/bold]")
        elif not stack.launched:
            console.print("the stack was running before the demo and keeps running")
        else:
            with console.status("stopping the stack"):
                stack.down()
            console.print("stack stopped; `lakeloop demo --keep` or `lakeloop up` keeps it running")


DEMO_TRAFFIC_ROWS = 1500
SHIFTED_MARKET = market.Scenario(new_region_share=0.5, income_multiplier=1.2)
"""What the demo's market turns into: half the sales new builds in a new region, incomes +20 %."""


def _drift_act(settings: Settings, spec: DatasetSpec, *, champion: str, seed: int) -> None:
    """Stable traffic (no retrain), then shifted traffic with its sale prices reported: the
    monitor finds drift, Prefect starts the retrain, the API swaps in the new champion."""
    console.rule("monitoring: live traffic against the champion's training data")
    for label, scenario, traffic_seed in (
        ("stable market", market.Scenario(), seed + 2000),
        ("shifted market (new region, higher incomes)", SHIFTED_MARKET, seed + 3000),
    ):
        sales = market.generate_batch(rows=DEMO_TRAFFIC_ROWS, seed=traffic_seed, scenario=scenario)
        sent = datetime.now(UTC)
        with console.status(f"{label}: {len(sales)} predictions, then their sale prices"):
            _, ids, _ = loop.send_traffic(settings, loop.json_records(sales[spec.feature_names]))
            loop.report_prices(settings, ids, sales[spec.target.name].tolist())
            loop.wait_for_logged(
                settings, model_version=champion, since=sent, rows=len(ids), feedback_rows=len(ids)
            )
        checked = time.monotonic()
        entry = run_monitor(settings)
        found = describe(entry) if entry else "the monitor checked nothing (see the flow run)"
        console.log(f"{label}: {found}")
        if entry is None or not entry.decision.retrain:
            continue
        with console.status("the drift event triggers a retrain") as status:
            retrain = loop.wait_for_flow_run(
                settings,
                loop.RETRAIN_FLOW,
                parameters={"window_id": entry.window.id},
                on_state=lambda message: log_state(status, message),
            )
            model = loop.served_model(settings) or {}
            if model.get("version") == champion:
                status.update("waiting for the API to serve the new champion")
                model = loop.wait_for_new_champion(settings, replacing=champion, timeout=60)
        since_event = (datetime.now(UTC) - entry.time).total_seconds()
        console.log(
            f"new champion v{model['version']} served {since_event:.1f} s after the drift event "
            f"({time.monotonic() - checked:.1f} s after the monitor started; retrain run "
            f"{retrain.name}, holdout MAE {in_units(model['metrics'].get('mae', 0))}); "
            "`lakeloop report --open` shows why"
        )
        return
    console.print("[yellow]no retrain happened[/yellow]: `lakeloop report` shows the decisions")


def _predictions(sample: pd.DataFrame, answer: dict[str, Any], spec: DatasetSpec) -> Table:
    model = answer["model"]
    table = Table(title=f"predictions from {model['name']} v{model['version']}")
    shown = spec.feature_names[-3:]  # a few features for context; the API got them all
    for column in [*shown, f"predicted {spec.target.name}", "actual"]:
        table.add_column(column)
    for (_, row), predicted in zip(sample.iterrows(), answer["predictions"], strict=True):
        actual = row[spec.target.name]
        table.add_row(*(str(row[c]) for c in shown), in_units(predicted), in_units(actual))
    return table


def _timings(
    model: dict[str, Any],
    run_name: str,
    *,
    started: float,
    committed: float,
    trained: float,
    served: float,
) -> Table:
    metrics = model["metrics"]
    table = Table(title="commit → served model", show_header=False)
    table.add_row("model", f"{model['name']} v{model['version']} (flow run {run_name})")
    table.add_row(
        "holdout",
        f"MAE {in_units(metrics.get('mae', 0))}  RMSE {in_units(metrics.get('rmse', 0))}  "
        f"R² {metrics.get('r2', 0):.3f}",
    )
    table.add_row("commit → trained", f"{trained - committed:.1f} s")
    table.add_row("trained → served", f"{served - trained:.1f} s")
    table.add_row("commit → served", f"[bold]{served - committed:.1f} s[/bold]")
    table.add_row("whole demo", f"{served - started:.1f} s")
    return table
