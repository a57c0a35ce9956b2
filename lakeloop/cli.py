"""The ``lakeloop`` command: the composition root that builds the settings and runs the stack."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from lakeloop import lakefs_client, loop, market
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.settings import Settings, load_settings
from lakeloop.stack import Stack, StackError, down_recorded

app = typer.Typer(
    help="lakeloop: lakeFS commits trigger Prefect flows that train, register and serve models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as error:
        console.print(f"[red]invalid settings:[/red] {error}")
        raise typer.Exit(2) from error


def _start(settings: Settings) -> Stack:
    stack = Stack(settings)
    try:
        with console.status("starting the stack") as status:
            stack.up(progress=lambda message: _step(status, message))
    except StackError as error:
        console.print(f"[red]cannot start the stack:[/red] {error}")
        raise typer.Exit(1) from error
    return stack


def _step(status: Any, message: str) -> None:
    status.update(message)
    if message.endswith("ready"):
        console.log(message)


def _urls(settings: Settings, *, title: str = "lakeloop is running") -> Table:
    table = Table(title=title, show_header=False)
    table.add_row("Prefect UI", settings.prefect_api_url.removesuffix("/api"))
    table.add_row("MLflow UI", settings.mlflow_tracking_uri)
    table.add_row("Swagger UI", f"{settings.api_url}/schema/swagger")
    table.add_row("lakeFS API", settings.lakefs_endpoint)
    table.add_row("Webhook gateway", f"{settings.gateway.url}/webhooks/lakefs")
    table.add_row("Logs", str(settings.state_dir / "logs"))
    return table


def _prepare_repository(settings: Settings) -> None:
    client = lakefs_client.connect(settings)
    lakefs_client.ensure_repository(client, settings)
    lakefs_client.install_actions(client, settings)


@app.command()
def up() -> None:
    """Start the local stack and leave it running (stop it with `lakeloop down`)."""
    settings = _settings()
    _start(settings)
    _prepare_repository(settings)
    console.print(_urls(settings))


@app.command()
def down() -> None:
    """Stop a stack started by `lakeloop up` or `lakeloop demo --keep`."""
    settings = _settings()
    stopped = down_recorded(settings)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "no lakeloop stack was running")


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready records: missing values become null."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Leave the stack running after the demo.")] = False,
    rows: Annotated[int, typer.Option(min=200, help="Rows in the first batch.")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic market.")] = 1,
) -> None:
    """Run the whole loop once: commit a batch to lakeFS, watch it train, get predictions."""
    logging.basicConfig(level=logging.WARNING)
    settings = _settings()
    spec = load_spec(settings.dataset)
    started = time.monotonic()
    stack = _start(settings)
    try:
        console.log(f"stack up in {time.monotonic() - started:.1f} s")
        _prepare_repository(settings)
        batch = market.generate_batch(rows=rows, seed=seed)
        committed = time.monotonic()
        published = lakefs_client.publish_batch(
            lakefs_client.connect(settings),
            settings,
            batch,
            name=f"demo-seed{seed}",
            source=f"lakeloop synthetic market, seed {seed}",
            dataset_version=spec.version,
        )
        console.log(
            f"merged {published.rows} rows into {settings.lakefs.repository}/"
            f"{settings.lakefs.branch}: commit {published.commit_id:.12}"
        )
        with console.status("waiting for the lakeFS webhook to trigger training") as status:
            run = loop.wait_for_training(
                settings, commit_id=published.commit_id, on_state=lambda s: _log_state(status, s)
            )
            trained = time.monotonic()
            status.update("waiting for the API to serve the new champion")
            model = loop.wait_until_served(settings, commit_id=published.commit_id)
        served = time.monotonic()
        sample = market.generate_batch(rows=5, seed=seed + 1000)
        answer = loop.predict(settings, _records(sample[spec.feature_names]))
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
        console.print(_urls(settings, title="where to look (while the stack runs)"))
    except (loop.LoopError, lakefs_client.LakeFSError) as error:
        console.print(f"[red]the loop did not close:[/red] {error}")
        console.print(f"logs: {settings.state_dir / 'logs'}")
        raise typer.Exit(1) from error
    finally:
        if keep:
            console.print("the stack keeps running; stop it with [bold]lakeloop down[/bold]")
        else:
            with console.status("stopping the stack"):
                stack.down()
            console.print("stack stopped; `lakeloop demo --keep` or `lakeloop up` keeps it running")


def _log_state(status: Any, message: str) -> None:
    status.update(message)
    console.log(message)


def _predictions(sample: pd.DataFrame, answer: dict[str, Any], spec: DatasetSpec) -> Table:
    model = answer["model"]
    table = Table(title=f"predictions from {model['name']} v{model['version']}")
    shown = spec.feature_names[-3:]  # a few features for context; the API got them all
    for column in [*shown, f"predicted {spec.target.name}", "actual"]:
        table.add_column(column)
    for (_, row), predicted in zip(sample.iterrows(), answer["predictions"], strict=True):
        actual = row[spec.target.name]
        table.add_row(*(str(row[c]) for c in shown), f"{predicted:,.0f}", f"{actual:,.0f}")
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
        f"MAE {metrics.get('mae', 0):,.0f}  RMSE {metrics.get('rmse', 0):,.0f}  "
        f"R² {metrics.get('r2', 0):.3f}",
    )
    table.add_row("commit → trained", f"{trained - committed:.1f} s")
    table.add_row("trained → served", f"{served - trained:.1f} s")
    table.add_row("commit → served", f"[bold]{served - committed:.1f} s[/bold]")
    table.add_row("whole demo", f"{served - started:.1f} s")
    return table
