"""The ``lakeloop`` command: the composition root that builds the settings and runs the stack."""

from __future__ import annotations

import re
import webbrowser
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import pandas as pd
import typer
from rich.table import Table

from lakeloop import datagate, evolution, grafana, lakefs_client, loop
from lakeloop.dataset import DatasetSpec, in_units, load_spec
from lakeloop.ingest import (
    SourceError,
    SourceTable,
    find_sources,
    inspect_source,
    read_source,
    write_parquet,
)
from lakeloop.settings import Settings
from monitoring.store import describe, read_folds, read_history
from tooling import supervised
from tooling.demo import demo
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

if TYPE_CHECKING:
    from lakeloop.registry import Rejudged

app = typer.Typer(
    help="lakeloop: lakeFS commits trigger Prefect flows that train, register and serve models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def up() -> None:
    """Start the local stack and leave it running (stop it with `lakeloop down`). When the dataset
    description changed, says what happens to the data on main first, and stops again without
    changing anything if the change cannot work (a renamed target, no trainable row left)."""
    settings = settings_or_exit()
    spec = load_spec(settings.dataset)
    stack = start_stack(settings)
    impact = _history_impact(settings, spec)
    if impact is not None and _print_impact(impact, quiet_when_unchanged=True):
        stack.down()
        console.print("[red]stack stopped; nothing on main or in the registry changed[/red]")
        raise typer.Exit(2)
    prepare_repository(settings)
    console.print(urls(settings))


def _history_impact(settings: Settings, spec: DatasetSpec) -> datagate.Impact | None:
    """What the data on main becomes under ``spec``; None when there is no repository yet."""
    client = lakefs_client.connect(settings)
    gate = datagate.for_settings(settings, spec)
    try:
        return datagate.impact(
            gate, client, repository=settings.lakefs.repository, ref=settings.lakefs.branch
        )
    except lakefs_client.NotFoundError:
        return None


def _print_impact(impact: datagate.Impact, *, quiet_when_unchanged: bool = False) -> bool:
    """Print what happens to each table; True when the description must be refused."""
    label = impact.spec.label
    unchanged = all(t.ingested == label and t.fate == "as it is" for t in impact.tables)
    if unchanged and quiet_when_unchanged:
        return False
    table = Table(title=f"the data on main under {label}")
    for column in ("table", "ingested under", "rows", "under the description"):
        table.add_column(column)
    for fate in impact.tables:
        table.add_row(fate.path, fate.ingested, str(fate.rows), fate.fate)
    console.print(table)
    console.print(f"{impact.trainable_rows} of {impact.rows} rows can train under {label}")
    for refusal in impact.refusals:
        console.print(f"[red]refused:[/red] {refusal}", highlight=False)
    return bool(impact.refusals)


@app.command()
def init() -> None:
    """Create the lakeFS repository if needed and install lakeloop's action files in it."""
    settings = settings_or_exit()
    try:
        prepare_repository(settings)
    except lakefs_client.LakeFSError as error:
        console.print(f"[red]cannot reach lakeFS at {settings.lakefs_endpoint}:[/red] {error}")
        raise typer.Exit(1) from error
    for path in lakefs_client.render_actions(settings):
        console.print(f"{settings.lakefs.repository}/{settings.lakefs.branch}/{path}")


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A CSV or Parquet file, or a directory of them.")],
    name: Annotated[str | None, typer.Option(help="Batch name (default: the file name).")] = None,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing",
            help="Merge a batch that partly repeats main without the rows main already holds.",
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(help="Follow the training the merge starts and print the gate's decision."),
    ] = True,
) -> None:
    """Write-audit-publish a batch: upload to an ingest branch, commit, merge into main if the data
    checks pass. A merge into main triggers training, which this follows to the gate's decision
    (`--no-wait` returns at the merge). A file main already holds (same content, any name) is not
    merged again."""
    settings = settings_or_exit()
    spec = load_spec(settings.dataset)
    try:
        tables = [inspect_source(found) for found in find_sources(path)]
        tables, skipped = _lakefs_call(
            settings,
            lambda client: _without_existing(
                settings, spec, client, tables, skip_existing=skip_existing
            ),
        )
    except SourceError as error:
        console.print(f"[red]cannot ingest:[/red] {error}")
        raise typer.Exit(2) from error
    if not tables:
        return
    published = publish(
        settings,
        tables,
        name=name or lakefs_client.batch_name(path.stem),
        source=str(path),
        dataset_version=spec.version,
        metadata=skipped,
        description=spec.to_yaml(),
    )
    if not published.merged:
        console.print("[red]blocked by the pre-merge data checks[/red]")
        for line in _rejection_lines(published.rejection):
            console.print(line, highlight=False)
        console.print(
            f"{settings.lakefs.branch} is unchanged; the batch stays on branch "
            f"[bold]{published.ingest_branch}[/bold] for inspection"
        )
        raise typer.Exit(1)
    if wait and published.commit_id is not None:
        _follow_training(settings, published.commit_id)


def _follow_training(settings: Settings, commit_id: str) -> None:
    """Wait for the training a merge started and print the gate's decision; exit 1 when the
    training failed (the merged data stays on main)."""
    from lakeloop import registry  # noqa: PLC0415 - MLflow costs every other command 1.5 s

    try:
        with console.status(f"training on {commit_id:.12}") as status:
            loop.wait_for_training(
                settings,
                commit_id=commit_id,
                timeout=settings.api.deploy_timeout_seconds + 900,
                on_state=lambda message: log_state(status, message),
            )
        client = registry.connect(settings)
        trained = registry.run_for_commit(client, settings, commit_id=commit_id, tuned=False)
    except loop.LoopError as error:
        console.print(f"[red]training on {commit_id:.12} did not succeed:[/red] {error}")
        console.print("the batch stays merged; `lakeloop status` says what is served")
        raise typer.Exit(1) from error
    except httpx.HTTPError as error:
        console.print(f"[yellow]cannot follow the training ({error}); `lakeloop status`[/yellow]")
        return
    if trained is not None:
        console.print(_training_outcome(client, settings, trained.info.run_id), highlight=False)


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="A CSV or Parquet file, or a directory of them.")],
    report: Annotated[
        Path | None, typer.Option(help="Folder for the report (JSON, markdown, Data Docs HTML).")
    ] = None,
) -> None:
    """Run the data checks on a local file before ingesting it (the same checks as the gates)."""
    from lakeloop.validation.checks import validate_frame  # noqa: PLC0415 - Great Expectations: 2-3 s
    from lakeloop.validation.report import write_report  # noqa: PLC0415

    settings = settings_or_exit()
    spec = load_spec(settings.dataset)
    try:
        frames = [read_source(found) for found in find_sources(path)]
    except SourceError as error:
        console.print(f"[red]cannot read:[/red] {error}")
        raise typer.Exit(2) from error
    result = validate_frame(pd.concat(frames, ignore_index=True), spec)
    console.print(result.to_markdown(), highlight=False)
    if report is not None:
        written = write_report(result, report, spec=spec)
        console.print(f"report: {written['html']}")
    if not result.success:
        raise typer.Exit(1)


def _without_existing(
    settings: Settings,
    spec: DatasetSpec,
    client: Any,
    tables: list[SourceTable],
    *,
    skip_existing: bool,
) -> tuple[list[SourceTable], dict[str, str]]:
    """The tables still to publish: a file main already holds (the same bytes, or every row) is
    left out, saying where it is; one that partly repeats main is refused (exit 1, nothing
    published) unless ``skip_existing``, which publishes only its new rows and records how many
    were skipped in the commit metadata."""
    from lakeloop import datagate  # noqa: PLC0415 - Great Expectations, only if a table is new

    gate = datagate.for_settings(settings, spec)
    where = f"{settings.lakefs.repository}/{settings.lakefs.branch}"
    remaining, refused, skipped = [], [], {}
    for table in tables:
        frame = read_source(table.path)
        found = datagate.overlap(
            gate,
            client,
            repository=settings.lakefs.repository,
            ref=settings.lakefs.branch,
            source=table,
            frame=frame,
        )
        if found.same_as is not None:
            commit = f" (commit {found.commit_id:.12})" if found.commit_id else ""
            console.print(
                f"{table.path}: already on {settings.lakefs.branch} as {found.same_as}{commit}"
            )
        elif found.already_there:
            console.print(f"{table.path}: every one of its {found.rows} rows is already on {where}")
        elif found.present_rows and not skip_existing:
            refused.append(
                f"{table.path}: {found.present_rows} of its {found.rows} rows are already on "
                f"{where}; remove them, or ingest with --skip-existing to merge only the "
                f"{len(frame) - found.present_rows} new rows"
            )
        elif found.present_rows:
            new_rows = frame[~found.present]
            fresh = settings.state_dir / "ingest" / f"{table.path.stem}-new-rows.parquet"
            remaining.append(inspect_source(write_parquet(new_rows, fresh)))
            skipped[f"skipped_existing:{table.name}"] = str(found.present_rows)
            skipped[f"source_sha256:{table.name}"] = table.sha256
            console.print(
                f"{table.path}: skipping {found.present_rows} rows already on {where}; "
                f"merging its {len(new_rows)} new rows"
            )
        else:
            remaining.append(table)
    if refused:
        console.print("[red]not ingested: rows already on main[/red]")
        for line in refused:
            console.print(f"  - {line}", highlight=False)
        raise typer.Exit(1)
    return remaining, skipped


def _rejection_lines(reason: str) -> list[str]:
    """The rejection is lakeFS's message followed by the data-checks hook's answer (read from the
    hook run's output): "data checks failed on <paths>:" and one "- <check>" line per failed
    check (a check's own text may hold ";" and ","). lakeFS's own preamble is dimmed above."""
    preamble, marker, answer = reason.partition("data checks failed on ")
    if not marker:
        return [reason]
    where, _, checks = answer.partition(":\n")
    return [
        f"[dim]{preamble.strip()}[/dim]",
        f"{marker}{where}:",
        *(f"  {check}" for check in checks.splitlines() if check.strip()),
    ]


@app.command()
def down() -> None:
    """Stop a stack started by `lakeloop up` or `lakeloop demo --keep`."""
    settings = settings_or_exit()
    stopped = supervised.down(settings)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "no lakeloop stack was running")


@app.command()
def logs(
    service: Annotated[
        str | None, typer.Argument(help="lakefs, mlflow, prefect, gateway, api or flows.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing what it writes (Ctrl-C stops).")
    ] = False,
    lines: Annotated[int, typer.Option(min=1, help="How many of its last lines.")] = 50,
) -> None:
    """A service's log (the last lines of every service's without SERVICE), from the state
    folder's logs/, where the stack writes them and rotates them at 10 MB."""
    settings = settings_or_exit()
    folder = settings.state_dir / "logs"
    known = sorted(path.stem for path in folder.glob("*.log"))
    if service is not None and service not in known:
        console.print(f"[red]no log of {service!r} in {folder}[/red]; there are: {known or 'none'}")
        raise typer.Exit(2)
    shown = [service] if service else known
    for name in shown:
        if len(shown) > 1:
            console.rule(name)
        for line in supervised.tail(folder / f"{name}.log", lines=lines):
            console.out(line, highlight=False)
    if follow:
        if service is None:
            console.print("[red]--follow needs a SERVICE[/red]")
            raise typer.Exit(2)
        try:
            for line in supervised.follow(folder / f"{service}.log"):
                console.out(line, highlight=False)
        except KeyboardInterrupt:
            return


app.command()(demo)


@app.command()
def monitor(
    rows: Annotated[
        int | None, typer.Option(min=1, help="Most recent predictions to check.")
    ] = None,
    minutes: Annotated[
        float | None, typer.Option(min=0, help="Only predictions of the last N minutes.")
    ] = None,
) -> None:
    """Run the monitor now: drift and error of the champion's recent predictions, and a retrain
    request when the policy says so."""
    settings = settings_or_exit()
    parameters = {"window_rows": rows, "window_minutes": minutes}
    try:
        entry = run_monitor(settings, **{k: v for k, v in parameters.items() if v is not None})
    except (loop.LoopError, httpx.HTTPError) as error:
        console.print(f"[red]the monitor did not run:[/red] {error}")
        raise typer.Exit(1) from error
    if entry is None:
        console.print("the monitor checked nothing (its flow run says why)")
        return
    console.print(describe(entry))
    console.print(f"report: {entry.report_path}")


@app.command()
def train(
    commit: Annotated[
        str | None,
        typer.Argument(help="lakeFS commit id (default: the newest on the production branch)."),
    ] = None,
    tune: Annotated[
        bool, typer.Option(help="Search hyperparameters first; each trial is a nested MLflow run.")
    ] = False,
    again: Annotated[
        bool,
        typer.Option(
            help="Train a commit that already trained once more (after the thresholds or the "
            "settings changed): a new version, judged by the gate, recorded as a second attempt."
        ),
    ] = False,
) -> None:
    """Train on a lakeFS commit now, through the training deployment: validate, train, register,
    and promote if the gate agrees. A commit already trained (tuned, with --tune) is skipped
    unless --again asks for a new attempt."""
    from lakeloop import registry  # noqa: PLC0415 - MLflow costs every other command 1.5 s

    settings = settings_or_exit()
    try:
        commit_id = commit or lakefs_client.head_commit(lakefs_client.connect(settings), settings)
        client = registry.connect(settings)
        done = registry.run_for_commit(client, settings, commit_id=commit_id, tuned=tune)
        if done is not None and not again:
            console.print(f"{commit_id:.12} is already trained (MLflow run {done.info.run_id})")
            console.print(_training_outcome(client, settings, done.info.run_id))
            console.print("`lakeloop train COMMIT --again` trains it once more as a new version")
            return
        with console.status(f"training on {commit_id:.12}") as status:
            loop.run_deployment(
                settings,
                settings.prefect.train_deployment,
                parameters={
                    "repository": settings.lakefs.repository,
                    "commit_id": commit_id,
                    "reason": "manual",
                    "tune": tune,
                    "again": again,
                },
                timeout=3600,
                on_state=lambda message: log_state(status, message),
            )
        trained = registry.run_for_commit(client, settings, commit_id=commit_id, tuned=tune)
    except (loop.LoopError, lakefs_client.LakeFSError, httpx.HTTPError) as error:
        console.print(f"[red]training did not complete:[/red] {error}")
        raise typer.Exit(1) from error
    if trained is not None:
        console.print(_training_outcome(client, settings, trained.info.run_id))


def _training_outcome(client: Any, settings: Settings, run_id: str) -> str:
    """One line: the version a training run registered and what the gate decided."""
    from lakeloop import registry  # noqa: PLC0415

    version = registry.version_of_run(client, settings, run_id=run_id)
    tags = version.tags or {}
    reasons = tags.get(registry.TAG_GATE_REASONS, "-")
    decision = tags.get(registry.TAG_GATE, "?")
    because = f": {reasons}" if reasons != "-" else ""
    return f"{settings.mlflow.model_name} v{version.version}: {decision}{because}"


@app.command()
def report(
    last: Annotated[int, typer.Option(min=1, help="How many monitor runs to list.")] = 5,
    open_report: Annotated[
        bool, typer.Option("--open", help="Open the latest Evidently report in a browser.")
    ] = False,
) -> None:
    """The monitor's latest decisions, what retrains did with the reported prices (folded into
    lakeFS or held back, and why), and where the Evidently reports are."""
    settings = settings_or_exit()
    store = settings.monitoring_store
    entries = read_history(store, last=last)
    if not entries:
        console.print("no monitor run yet; `lakeloop monitor` runs one")
        raise typer.Exit(1)
    for entry in entries:
        console.print(describe(entry), markup=False, soft_wrap=True)
    folds = read_folds(store, last=last)
    if folds:
        console.print("reported prices:")
        for fold in folds:
            console.print(fold.describe(), markup=False, soft_wrap=True)
    latest = entries[-1].report_path
    console.print(f"latest report: {latest}")
    if open_report and latest:
        if not store.local:
            console.print("the report is in the object store: download it to open it")
            raise typer.Exit(1)
        webbrowser.open(Path(latest).resolve().as_uri())


@app.command()
def status() -> None:
    """The stack's services (state, pid, port, uptime, restarts, readiness), the champion, what
    the API serves, and whether training is blocked (exit 1 while it is: the data on main fails
    the checks, so the champion is stale; or while a service of the stack is not running)."""
    from lakeloop import registry  # noqa: PLC0415 - MLflow costs every other command 1.5 s

    settings = settings_or_exit()
    services_running = _print_services(settings)
    try:
        client = registry.connect(settings)
        current = registry.champion(client, settings)
        blocked = registry.training_blocked(client, settings)
    except Exception as error:  # MLflow raises several types for a server it cannot reach
        console.print(
            f"[red]cannot read the registry at {settings.mlflow_tracking_uri}:[/red] {error}"
        )
        raise typer.Exit(1) from error
    try:
        served = loop.served_model(settings)
        serving = f"v{served['version']}" if served else "no model"
    except httpx.HTTPError as error:
        serving = f"API not reachable at {settings.api_url} ({type(error).__name__})"
    table = Table(title=f"{settings.mlflow.model_name}", show_header=False)
    commit = (current.tags or {}).get(registry.TAG_COMMIT, "") if current else ""
    table.add_row(
        "champion", f"v{current.version} (lakeFS commit {commit:.12})" if current else "none"
    )
    table.add_row("API serves", serving)
    table.add_row("training", "[red]blocked[/red]" if blocked else "ok")
    console.print(table)
    if blocked is None:
        if not services_running:
            raise typer.Exit(1)
        return
    console.print(f"[red]{blocked.summary}[/red]", highlight=False)
    for line in blocked.reason.splitlines():
        console.print(f"  - {line}", highlight=False)
    raise typer.Exit(1)


def _print_services(settings: Settings) -> bool:
    """The services of the stack running in this state folder, and the last log lines of any
    supervisord gave up on; False when one of them is not running (no stack at all is not a
    failure: the servers may be elsewhere)."""
    found = supervised.status(settings)
    if found is None:
        left = supervised.orphans(supervised.Supervisor(settings))
        if left:
            console.print(
                f"[red]the supervisor of {settings.state_dir} is not running, but "
                f"{len(left)} processes it started are[/red] ("
                + ", ".join(sorted({name for name, _ in left}))
                + "): nothing restarts them; `lakeloop up` stops them and starts the stack "
                "again, `lakeloop down` stops them",
                highlight=False,
            )
            return False
        console.print(f"no lakeloop stack runs in {settings.state_dir} (`lakeloop up` starts one)")
        return True
    table = Table(title="services")
    for column in ("service", "state", "pid", "port", "uptime", "restarts", "ready"):
        table.add_column(column)
    for service in found:
        colour = "green" if service.state == "RUNNING" else "red"
        table.add_row(
            service.name,
            f"[{colour}]{service.state}[/{colour}]",
            str(service.pid or "-"),
            str(service.port or "-"),
            _duration(service.uptime) if service.pid else "-",
            str(service.restarts),
            service.ready,
        )
    console.print(table)
    for service in found:
        if service.state == "FATAL":
            console.print(
                f"[red]{service.name} kept failing and is no longer restarted[/red]; "
                f"`lakeloop up` tries again. Its last lines ({service.log_path}):",
                highlight=False,
            )
            for line in supervised.tail(service.log_path, lines=10):
                console.out(f"  {line}", highlight=False)
    return all(service.state == "RUNNING" for service in found)


def _duration(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}h{minute:02d}m" if hours else f"{minute}m{second:02d}s"


model_app = typer.Typer(help="The registered model and its champion.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("list")
def model_list(
    last: Annotated[int, typer.Option(min=1, help="How many versions, newest first.")] = 20,
) -> None:
    """The registered versions: commit, trigger, description, holdout metrics, the gate's decision
    and its reasons, aliases."""
    from lakeloop import registry  # noqa: PLC0415 - MLflow costs every other command 1.5 s

    settings = settings_or_exit()
    try:
        rows = registry.version_rows(registry.connect(settings), settings, limit=last)
    except Exception as error:  # MLflow raises several types for a server it cannot reach
        console.print(f"[red]cannot read the registry:[/red] {error}")
        raise typer.Exit(1) from error
    if not rows:
        console.print(f"{settings.mlflow.model_name} has no registered version yet")
        return
    table = Table(title=settings.mlflow.model_name)
    for column in ("version", "commit", "trigger", "dataset", "MAE", "RMSE", "decision", "alias"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.version,
            row.commit_id[:12],
            row.trigger,
            row.dataset,
            "-" if row.mae is None else in_units(row.mae),
            "-" if row.rmse is None else in_units(row.rmse),
            row.decision + (f": {row.reasons}" if row.reasons else ""),
            ", ".join(row.aliases),
        )
    console.print(table)


@model_app.command("show")
def model_show(
    version: Annotated[
        str | None, typer.Argument(help="A version (default: the champion).")
    ] = None,
) -> None:
    """A registered version's lineage: lakeFS commit, dataset description (version and digest),
    gate decision, trigger, code version, holdout metrics."""
    from lakeloop import registry  # noqa: PLC0415 - MLflow costs every other command 1.5 s

    settings = settings_or_exit()
    name = settings.mlflow.model_name
    try:
        record = registry.version_record(registry.connect(settings), settings, version)
    except Exception as error:  # MLflow raises several types for a missing version or server
        console.print(f"[red]cannot read {name} {version or 'champion'}:[/red] {error}")
        raise typer.Exit(1) from error
    if record is None:
        console.print(f"{name} has no champion yet")
        raise typer.Exit(1)
    found, tags = record.version, record.tags
    table = Table(title=f"{name} v{found.version}", show_header=False)
    rows = {
        "aliases": ", ".join(found.aliases or []) or "-",
        "lakeFS": f"{tags.get(registry.TAG_REPOSITORY, '?')}@{tags.get(registry.TAG_COMMIT, '?')}",
        "dataset description": tags.get(registry.TAG_DATASET, "not recorded"),
        "description digest": tags.get(registry.TAG_DATASET_DIGEST) or "not recorded",
        "gate": f"{tags.get(registry.TAG_GATE, '?')} ({tags.get(registry.TAG_GATE_REASONS, '-')})",
        "trigger": tags.get(registry.TAG_TRIGGER, "?")
        + (" (a new attempt on its commit)" if tags.get(registry.TAG_AGAIN) == "true" else ""),
        "code version": tags.get(registry.TAG_CODE_VERSION, "?"),
        "run": found.run_id or "-",
    }
    for label, tag in (("override", registry.TAG_OVERRIDE), ("judged again", registry.TAG_REQUEST)):
        if tag in tags:
            rows[label] = tags[tag]
    for key in ("mae", "rmse", "r2"):
        if key in record.metrics:
            rows[f"holdout {key.upper()}"] = f"{record.metrics[key]:,.3f}"
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)


@model_app.command("promote")
def model_promote(
    version: Annotated[str, typer.Argument(help="The version to serve.")],
    force: Annotated[
        bool, typer.Option("--force", help="Override the gate's decision (needs --reason).")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why, recorded on the version with your name.")] = "",
) -> None:
    """Judge a version again through the gate, against the current champion on the newest data
    of the production branch, and serve it if it passes; --force --reason serves it over the
    gate's decision. Both are recorded on the version; `lakeloop model rollback` undoes them."""
    import getpass  # noqa: PLC0415

    from lakeloop import registry  # noqa: PLC0415 - MLflow costs every other command 1.5 s

    if force and not reason.strip():
        console.print(
            "[red]promoting over the gate needs --reason TEXT[/red] (the reason is recorded on "
            "the version with your name)"
        )
        raise typer.Exit(2)
    settings = settings_or_exit()
    by = getpass.getuser()
    client = registry.connect(settings)
    name = settings.mlflow.model_name
    judged = None
    try:
        if force:
            previous = registry.promote_by_hand(
                client, settings, version=version, reason=reason, by=by
            )
        else:
            judged = _rejudge(client, settings, version=version)
            previous = registry.record_request(client, settings, judged, by=by)
    except LookupError as error:
        console.print(f"[red]not promoted:[/red] {error}")
        raise typer.Exit(1) from error
    except Exception as error:  # MLflow and lakeFS raise several types for what is missing
        console.print(f"[red]cannot promote {name} v{version}:[/red] {error}")
        raise typer.Exit(1) from error
    how = f"promoted by hand by {by}: {reason}"
    if judged is not None:
        console.print(f"{name} v{version} {judged.summary()}", highlight=False, soft_wrap=True)
        if judged.reasons:
            console.print(
                f"[red]not promoted[/red] (recorded on v{version}); `lakeloop model promote "
                f"{version} --force --reason TEXT` serves it over the gate's decision"
            )
            raise typer.Exit(1)
        how = f"promoted through the gate at {by}'s request"
    console.print(
        f"{name}: champion is v{version} (was {'v' + previous if previous else 'none'}), {how}; "
        "the API follows within seconds, `lakeloop model rollback` undoes it",
        highlight=False,
        soft_wrap=True,
    )


def _rejudge(client: Any, settings: Settings, *, version: str) -> Rejudged:
    """The gate's verdict on ``version`` on the production branch's newest data
    (:func:`lakeloop.registry.rejudge`)."""
    import lakefs  # noqa: PLC0415

    from lakeloop import model, registry  # noqa: PLC0415

    spec = load_spec(settings.dataset)
    lakefs_api = lakefs_client.connect(settings)
    commit_id = lakefs_client.head_commit(lakefs_api, settings)
    reference = lakefs.Repository(settings.lakefs.repository, client=lakefs_api).ref(commit_id)
    with console.status(f"judging v{version} on the data at {commit_id:.12}"):
        data = datagate.for_settings(settings, spec).frame_at(reference)
        if data.frame.empty:
            raise LookupError(f"no table at {commit_id:.12} trains under {spec.label}")
        rows = model.split_rows(data.frame, spec, settings.training, feedback=data.feedback)
        return registry.rejudge(
            client, settings, version=version, rows=rows, spec=spec, commit_id=commit_id
        )


@model_app.command("rollback")
def model_rollback() -> None:
    """Give the champion alias back to the version the current champion replaced."""
    from lakeloop import registry  # noqa: PLC0415 - MLflow costs every other command 1.5 s

    settings = settings_or_exit()
    try:
        replaced, restored = registry.rollback(registry.connect(settings), settings)
    except LookupError as error:
        console.print(f"[red]cannot roll back:[/red] {error}")
        raise typer.Exit(1) from error
    console.print(
        f"{settings.mlflow.model_name}: champion is v{restored} again (was v{replaced}); "
        "the API follows within seconds"
    )


app.add_typer(grafana.app, name="grafana")

dataset_app = typer.Typer(help="The dataset description and its changes.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("init")
def dataset_init(
    path: Annotated[Path, typer.Argument(help="A CSV or Parquet table to describe.")],
    target: Annotated[str, typer.Option(help="The column to predict.")],
    output: Annotated[
        Path | None, typer.Option(help="Where to write the YAML (default: <table name>.yaml).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The dataset's name.")] = None,
) -> None:
    """Draft a dataset description from a table: ids, event time, features with their bounds,
    categories and codes; what was inferred is written at the top for you to check."""
    from lakeloop.draft import draft  # noqa: PLC0415 - only this command needs it

    output = output or path.with_suffix(".yaml")
    if output.exists():
        console.print(f"[red]{output} exists:[/red] choose another --output (nothing written)")
        raise typer.Exit(2)
    try:
        drafted = draft(read_source(path), target=target, name=name or _dataset_name(path))
        drafted.spec  # noqa: B018 - the draft must load as a description before it is written
    except (SourceError, ValueError) as error:
        console.print(f"[red]cannot draft a description:[/red] {error}")
        raise typer.Exit(2) from error
    output.write_text(drafted.to_yaml())
    spec = drafted.spec
    console.print(
        f"wrote {output}: {len(spec.features)} features, ids {', '.join(spec.ids) or 'none'}, "
        f"event time {', '.join(spec.event_time.columns) if spec.event_time else 'none'}, "
        f"{len(spec.ignore)} ignored",
        highlight=False,
        soft_wrap=True,
    )
    for note in drafted.notes:
        console.print(f"  - {note}", highlight=False, soft_wrap=True)
    console.print(
        f"check it, then: LAKELOOP_DATASET={output} lakeloop validate {path}", soft_wrap=True
    )


def _dataset_name(path: Path) -> str:
    return re.sub(r"\W+", "_", path.stem).strip("_").lower() or "dataset"


@dataset_app.command("diff")
def dataset_diff(
    old: Annotated[Path, typer.Argument(help="The description in use (YAML).")],
    new: Annotated[Path, typer.Argument(help="The description you would switch to (YAML).")],
) -> None:
    """What changes from OLD to NEW, and (with the stack up) what it does to the data on main and
    the champion; exit 1 when NEW would be refused."""
    try:
        before, after = load_spec(old), load_spec(new)
    except ValueError as error:
        console.print(f"[red]cannot compare:[/red] {error}")
        raise typer.Exit(2) from error
    change = evolution.compare(before, after)
    console.print(f"{before.label} -> {after.label}")
    for line in change.lines():
        console.print(f"  - {line}", highlight=False)
    refused = change.target_renamed
    settings = settings_or_exit()
    try:
        impact = _history_impact(settings, after)
    except lakefs_client.LakeFSError as error:
        console.print(
            f"[dim]lakeFS at {settings.lakefs_endpoint} not reachable ({error}): the "
            "data on main was not assessed[/dim]"
        )
        impact = None
    if impact is not None:
        refused = _print_impact(impact) or refused
        _print_champion(settings, after)
    if refused:
        raise typer.Exit(1)


def _print_champion(settings: Settings, spec: DatasetSpec) -> None:
    """Which description the champion was trained under, and what the API asks for while it
    serves it (the request schema follows the served model, not the configured description)."""
    from lakeloop import registry  # noqa: PLC0415 - MLflow costs every other command 1.5 s

    try:
        current = registry.champion(registry.connect(settings), settings)
        trained = registry.description_of(current) if current is not None else None
    except Exception:  # MLflow raises several types for a server it cannot reach
        return
    if current is None:
        return
    label = trained.label if trained else "an unrecorded description"
    console.print(
        f"champion v{current.version} was trained under {label}; a model trained under "
        f"{spec.label} replaces it only through the usual gate",
        highlight=False,
    )
    if trained is None or trained.digest == spec.digest:
        return
    missing = [name for name in trained.feature_names if name not in spec.columns]
    added = [name for name in spec.feature_names if name not in trained.columns]
    asks = "".join(
        f"; it {verb} {', '.join(names)}"
        for verb, names in (("needs", missing), ("does not take", added))
        if names
    )
    console.print(
        f"the API keeps serving champion v{current.version} with the request schema of "
        f"{label}{asks}, until a model trained under {spec.label} is champion: then the schema "
        "swaps with the model",
        highlight=False,
        soft_wrap=True,  # one line per fact: scripts and people grep it
    )


data_app = typer.Typer(help="Browse the versioned data in lakeFS.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _lakefs_call(settings: Settings, call: Any) -> Any:
    try:
        return call(lakefs_client.connect(settings))
    except (lakefs_client.LakeFSError, lakefs_client.UnreadableTableError) as error:
        console.print(f"[red]lakeFS at {settings.lakefs_endpoint}:[/red] {error}")
        raise typer.Exit(1) from error


@data_app.command("log")
def data_log(
    ref: Annotated[str, typer.Argument(help="Branch, tag or commit.")] = "main",
    limit: Annotated[int, typer.Option("-n", min=1, help="How many commits.")] = 20,
) -> None:
    """Commits reachable from REF, newest first, with their lineage metadata."""
    settings = settings_or_exit()
    commits = _lakefs_call(
        settings, lambda client: lakefs_client.commit_log(client, settings, ref=ref, limit=limit)
    )
    table = Table(title=f"{settings.lakefs.repository}@{ref}")
    for column in ("commit", "when", "message", "metadata"):
        table.add_column(column)
    for commit in commits:
        when = datetime.fromtimestamp(commit.creation_date, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(commit.id[:12], when, commit.message, _lineage(commit.metadata or {}))
    console.print(table)


def _lineage(metadata: dict[str, str]) -> str:
    """Commit metadata for a table cell: the long column list left out, digests shortened."""
    shown = {
        key: value[:12] if key.startswith("sha256") else value
        for key, value in sorted(metadata.items())
        if key != "columns"
    }
    return ", ".join(f"{key}={value}" for key, value in shown.items())


@data_app.command("diff")
def data_diff(
    left: Annotated[str, typer.Argument(help="Base ref.")],
    right: Annotated[str, typer.Argument(help="Ref whose changes to show.")],
) -> None:
    """Objects RIGHT adds, changes or removes relative to LEFT."""
    settings = settings_or_exit()
    changes = _lakefs_call(
        settings, lambda client: lakefs_client.diff_refs(client, settings, left=left, right=right)
    )
    if not changes:
        console.print(f"no differences between {left} and {right}")
    for change in changes:
        console.print(f"{change.type:>8}  {change.path}")


@data_app.command("remove")
def data_remove(
    paths: Annotated[list[str], typer.Argument(help="Stored tables, e.g. data/…/batch.csv.")],
) -> None:
    """Remove tables from main through the same checks (a commit that trains): the repair when
    main holds data the training gate refuses."""
    settings = settings_or_exit()
    try:
        published = _lakefs_call(
            settings, lambda client: lakefs_client.remove_tables(client, settings, paths)
        )
    except ValueError as error:
        console.print(f"[red]cannot remove:[/red] {error}")
        raise typer.Exit(2) from error
    if not published.merged:
        console.print("[red]blocked by the pre-merge data checks[/red]")
        for line in _rejection_lines(published.rejection):
            console.print(line, highlight=False)
        raise typer.Exit(1)
    console.log(
        f"removed {', '.join(paths)} from {settings.lakefs.repository}/{settings.lakefs.branch}: "
        f"commit {published.commit_id:.12} (it trains like any merge)"
    )


@data_app.command("show")
def data_show(
    ref: Annotated[str, typer.Argument(help="Branch, tag or commit.")],
    path: Annotated[str, typer.Argument(help="Object path, e.g. data/…/batch.parquet.")],
    rows: Annotated[int, typer.Option(min=1, help="Rows to print.")] = 10,
) -> None:
    """The first rows of a stored table at REF."""
    settings = settings_or_exit()
    frame = _lakefs_call(
        settings, lambda client: lakefs_client.read_object(client, settings, ref=ref, path=path)
    )
    console.print(f"{path} at {ref}: {len(frame)} rows, {len(frame.columns)} columns")
    console.print(frame.head(rows).to_string(index=False))
