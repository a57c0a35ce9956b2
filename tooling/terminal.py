"""What the `lakeloop` commands share: the console, settings that fail with a message, the
stack started with progress, write-audit-publish with a progress bar, the monitor run now."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from lakeloop import lakefs_client, loop
from lakeloop.ingest import SourceTable
from lakeloop.settings import Settings, load_settings
from monitoring.history import HistoryEntry
from monitoring.store import history_keys, read_history
from tooling import supervised
from tooling.stack import StackError

console = Console()


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ValueError as error:
        console.print(f"[red]invalid settings:[/red] {error}")
        raise typer.Exit(2) from error


def start_stack(settings: Settings) -> supervised.LocalStack:
    """Start what is not running of the stack, saying what it found running already."""
    try:
        with console.status("starting the stack") as status:
            stack = supervised.up(settings, progress=lambda message: _step(status, message))
        console.log(stack.lakefs_note)
        if stack.orphans_stopped:
            console.log(
                "the supervisor of this state folder had died; stopped what it left running ("
                + ", ".join(stack.orphans_stopped)
                + ") and started the stack again"
            )
    except StackError as error:
        console.print(f"[red]cannot start the stack:[/red] {error}", highlight=False)
        raise typer.Exit(1) from error
    if not stack.launched:
        started = ", ".join(stack.started) if stack.started else "nothing"
        console.log(f"the stack was running; started {started}")
    return stack


def _step(status: Any, message: str) -> None:
    status.update(message)
    if message.endswith("ready"):
        console.log(message)


def urls(settings: Settings, *, title: str = "lakeloop is running") -> Table:
    table = Table(title=title, show_header=False)
    table.add_row("Prefect UI", settings.prefect_api_url.removesuffix("/api"))
    table.add_row("MLflow UI", settings.mlflow_tracking_uri)
    table.add_row("Swagger UI", f"{settings.api_url}/schema/swagger")
    table.add_row("lakeFS API", settings.lakefs_endpoint)
    table.add_row("Webhook gateway", f"{settings.gateway.url}/webhooks/lakefs")
    table.add_row("Logs", str(settings.state_dir / "logs"))
    return table


def prepare_repository(settings: Settings) -> None:
    client = lakefs_client.connect(settings)
    lakefs_client.ensure_repository(client, settings)
    installed = lakefs_client.install_actions(client, settings)
    where = f"{settings.lakefs.repository}/{settings.lakefs.branch}"
    if installed:
        console.log(f"installed lakeFS actions on {where} (commit {installed:.12})")


def publish(
    settings: Settings,
    tables: list[SourceTable],
    *,
    name: str,
    source: str,
    dataset_version: int,
    metadata: dict[str, str] | None = None,
    description: str | None = None,
) -> lakefs_client.Published:
    """Run write-audit-publish with a progress bar, and say what happened."""
    total = sum(table.size for table in tables)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"uploading {len(tables)} file(s)", total=total)

        def report(done: int) -> None:
            bar.update(task, completed=done)

        try:
            published = lakefs_client.publish(
                lakefs_client.connect(settings),
                settings,
                tables,
                name=name,
                source=source,
                dataset_version=dataset_version,
                progress=lakefs_client.Progress(total=total, report=report),
                metadata=metadata,
                description=description,
            )
        except lakefs_client.LakeFSError as error:
            console.print(
                f"[red]lakeFS at {settings.lakefs_endpoint} refused the ingest:[/red] {error}"
            )
            raise typer.Exit(1) from error
    if published.merged:
        console.log(
            f"merged {published.rows} rows into {settings.lakefs.repository}/"
            f"{settings.lakefs.branch}: commit {published.commit_id:.12}"
        )
    return published


def log_state(status: Any, message: str) -> None:
    status.update(message)
    console.log(message)


def run_monitor(settings: Settings, **parameters: Any) -> HistoryEntry | None:
    """Run the monitor deployment now; its history entry, or None when it checked nothing."""
    before = len(history_keys(settings.monitoring_store))
    with console.status("running the monitor flow") as status:
        run = loop.run_deployment(
            settings,
            loop.MONITOR_DEPLOYMENT,
            parameters=parameters,
            on_state=status.update,
        )
    if len(history_keys(settings.monitoring_store)) > before:
        return read_history(settings.monitoring_store, last=1)[-1]
    # The flow's own log says why (no champion, too few predictions); Prefect ships logs in
    # batches, so the last lines may not have arrived yet: the run's name finds them in the UI.
    for line in loop.flow_run_logs(settings, run.id, limit=3):
        console.log(line)
    console.log(f"flow run {run.name}: {settings.prefect_api_url.removesuffix('/api')}")
    return None
