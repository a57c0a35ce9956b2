"""The loop itself, hop by hop: commit → served and drift → served on the laptop stack
(``python -m benchmarks.loop``), with the fit alone beside them as the floor.

For each size, a fresh stack (``python -m tooling up`` in a scratch state folder, on free ports,
with the built-in lakeFS-compatible server) takes a first batch (its training makes the champion,
and is shown but not counted), then ``--commits`` more batches of the same size, each ingested as
``lakeloop ingest --no-wait`` does (write-audit-publish through the pre-merge checks). Each merge
is timed to the API answering with the model trained on it. Then, as many times, a batch of
shifted traffic goes to the API with its sale prices, and a drift event is sent to Prefect as the
monitor sends it (``monitoring.events.drift_event``), timed to the API answering with the retrained
champion. The gate's tolerance towards the champion is opened (``champion_tolerance=1``) so every
training ends in a swap: the gate still runs in full, it just does not refuse a model that is a
hair worse on new data.

Where the time goes is read from the servers, not from the flow's own code:

- the event: when Prefect received it (``/events/filter``; the gateway logs its relay only after
  Prefect accepted it, so lakeFS's webhook and the relay are one hop);
- the trigger: the flow run's ``created``; the runner: its Pending state; the process start and
  imports: Pending to Running;
- each step: its Prefect task run's start and end (a subflow's steps too); time between them is
  the flow's own code and Prefect's task bookkeeping;
- the swap: polling ``GET /v1/model`` every 0.1 s from the merge (or the event) until it names the
  new model; it lands inside ``verify_deployment``, the step that asks the API to swap.

Each measure starts on a quiet loop: after the previous flow run's process has exited (a run is
COMPLETED before its process is gone, and the runner starts one at a time). The process start
and imports hop is also measured apart, in a fresh interpreter after the stacks stopped.

Batches accumulate on main as they would in use: the k-th counted commit trains on (k + 1)
batches. The floor is ``lakeloop.model.train`` (split, fit, evaluate), fastest of three in a
fresh process, on exactly the rows the median run trained on (read back from lakeFS by the flow's
own steps before the stack stops). Prints a table per size, each run's seconds beside the median;
asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.stack import lakeloop, scratch_env, stop_stack

SIZES = (5_000, 100_000)
COMMITS = 3
TRAFFIC_ROWS = 1_000
POLL_SECONDS = 0.1
RUN_TIMEOUT = 1_800.0

BETWEEN_STEPS = "between steps (flow code, task bookkeeping)"
TO_SERVED = "last step → API serves it"

# Each step's Prefect task name, by the label it is printed under.
STEP_LABELS = {
    "already_trained": "step: already trained?",
    "read_commit": "step: read the commit",
    "ingested_under": "step: descriptions",
    "validate": "step: validate (GX)",
    "report_validation": "step: report validation",
    "record_refused_data": "step: record refused data",
    "record_blocked": "step: record blocked",
    "clear_blocked": "step: clear blocked",
    "training_frame": "step: training frame",
    "tuning_due": "step: tuning due?",
    "champion_hyperparameters": "step: champion's hyperparameters",
    "fit": "step: fit",
    "log_and_register": "step: log and register",
    "score_champion": "step: score the champion",
    "gate_and_promote": "step: gate and promote",
    "verify_deployment": "step: API swap (verify_deployment, until served)",
    "report_training": "step: report training",
    "holdout_bias": "step: champion's holdout bias",
    "fold_feedback": "step: fold reported prices into lakeFS",
    "newest_commit": "step: newest commit",
}


@dataclass(frozen=True)
class Span:
    """One step as Prefect recorded it."""

    name: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Timeline:
    """What the servers recorded for one event, from ``start`` (the merge returned, the drift
    event was sent) to ``served`` (the API first answered with the new model)."""

    start: datetime
    served: datetime
    marks: list[tuple[str, datetime]] = field(default_factory=list)
    """The hops before the first step, in order: each ends at its time."""
    steps: list[Span] = field(default_factory=list)


def hops(timeline: Timeline) -> dict[str, float]:
    """Seconds per hop, in order, summing to ``served - start``: each mark ends a hop; then each
    step (by start) is a hop, time between steps goes to :data:`BETWEEN_STEPS`, and what is left
    after the last step to :data:`TO_SERVED`. Steps that started after the API served are not
    part of the wait; one still running then counts until then. Clocks of different processes
    may disagree by a little: a time earlier than the hop before it counts as no time, and
    nothing counts past ``served``."""
    seconds: dict[str, float] = {}

    def add(name: str, since: datetime, until: datetime) -> None:
        seconds[name] = seconds.get(name, 0.0) + (until - since).total_seconds()

    def clamp(when: datetime, since: datetime) -> datetime:
        return min(max(when, since), timeline.served)

    clock = timeline.start
    for name, when in timeline.marks:
        reached = clamp(when, clock)
        add(name, clock, reached)
        clock = reached
    for span in sorted(timeline.steps, key=lambda span: span.start):
        if span.start >= timeline.served:
            break
        began = clamp(span.start, clock)
        if began > clock:
            add(BETWEEN_STEPS, clock, began)
        ended = clamp(span.end, began)
        add(span.name, began, ended)
        clock = ended
    if timeline.served > clock:
        add(TO_SERVED, clock, timeline.served)
    return seconds


def summarize(runs: list[dict[str, float]]) -> list[tuple[str, float]]:
    """Median seconds per hop over ``runs`` (a hop missing from a run took 0 s there), in the
    order hops first appear."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run))
    return [(name, statistics.median(run.get(name, 0.0) for run in runs)) for name in names]


# --- reading the servers -------------------------------------------------------------------


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _prefect(settings: Any, method: str, path: str, **kwargs: Any) -> Any:
    from lakeloop import loop  # noqa: PLC0415

    response = loop.prefect_request(
        method, f"{settings.prefect_api_url}{path}", timeout=30.0, **kwargs
    )
    response.raise_for_status()
    return response.json()


def event_received(settings: Any, event_id: str) -> datetime | None:
    """When Prefect received the event with this id (``None`` when it has none)."""
    found = _prefect(
        settings, "POST", "/events/filter", json={"filter": {"id": {"id": [event_id]}}, "limit": 1}
    )
    events = found.get("events") or []
    return _when(events[0]["received"]) if events else None


def run_timeline(
    settings: Any, run_id: str, *, start: datetime, served: datetime, received: datetime | None
) -> Timeline:
    """The hops of flow run ``run_id`` (and of its subflow runs' steps) from ``start``."""
    run = _prefect(settings, "GET", f"/flow_runs/{run_id}")
    states = _prefect(settings, "GET", "/flow_run_states/", params={"flow_run_id": run_id})
    first: dict[str, datetime] = {}
    for state in sorted(states, key=lambda state: state["timestamp"]):
        first.setdefault(state["type"], _when(state["timestamp"]))
    marks = []
    if received is not None:
        marks.append(("event: → Prefect received it (webhook, gateway)", received))
    marks.append(("trigger: event → flow run created", _when(run["created"])))
    if "PENDING" in first:
        marks.append(("runner: created → picked up (Pending)", first["PENDING"]))
    marks.append(
        ("process start + imports: → Running", first.get("RUNNING", _when(run["start_time"])))
    )
    return Timeline(start=start, served=served, marks=marks, steps=_steps(settings, run_id))


def _steps(settings: Any, run_id: str) -> list[Span]:
    """The task runs of a flow run and of its subflow runs, without the task runs that stand for
    the subflows in their parent (their steps are counted instead)."""
    subflows = _prefect(
        settings,
        "POST",
        "/flow_runs/filter",
        json={"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}},
    )
    stand_ins = {subflow["parent_task_run_id"] for subflow in subflows}
    task_runs = _prefect(
        settings,
        "POST",
        "/task_runs/filter",
        json={"task_runs": {"flow_run_id": {"any_": [run_id, *(s["id"] for s in subflows)]}}},
    )
    spans = []
    for task_run in task_runs:
        if task_run["id"] in stand_ins or not task_run.get("start_time"):
            continue
        name = task_run["name"].rsplit("-", 1)[0]
        spans.append(
            Span(
                name=STEP_LABELS.get(name, f"step: {name}"),
                start=_when(task_run["start_time"]),
                end=_when(task_run["end_time"] or task_run["start_time"]),
            )
        )
    return spans


class ServedWatch:
    """Polls ``GET /v1/model`` in a thread until ``wanted`` says yes; records when."""

    def __init__(self, settings: Any, wanted: Callable[[dict[str, Any]], bool]) -> None:
        self.at: datetime | None = None
        self.model: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(settings, wanted), daemon=True)
        self._thread.start()

    def _watch(self, settings: Any, wanted: Callable[[dict[str, Any]], bool]) -> None:
        import httpx  # noqa: PLC0415

        from lakeloop import loop  # noqa: PLC0415

        while not self._stop.is_set():
            try:
                model = loop.served_model(settings)
            except httpx.HTTPError:
                model = None
            if model and wanted(model):
                self.at, self.model = datetime.now(UTC), model
                return
            time.sleep(POLL_SECONDS)

    def wait(self, timeout: float) -> datetime:
        self._thread.join(timeout)
        self._stop.set()
        if self.at is None:
            raise RuntimeError(f"the API did not serve the new model within {timeout:.0f} s")
        return self.at


# --- driving the stack ---------------------------------------------------------------------


def stack_env(state_dir: Path) -> dict[str, str]:
    """The stack benchmark's scratch environment, with the gate opened so that every training
    ends in a swap (see the module docstring)."""
    env = scratch_env(state_dir)
    env["LAKELOOP_TRAINING__CHAMPION_TOLERANCE"] = "1"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the stack's children run
    return env


def flow_processes(state_dir: Path) -> list[int]:
    """Pids of flow run processes of the stack whose state folder is ``state_dir`` (read from
    each process's environment): ``python -m prefect.engine`` where runs are spawned, a child of
    the forkserver (same command line, the forkserver its parent) where they are forked."""
    found = []
    marker = f"LAKELOOP_STATE_DIR={state_dir}".encode()
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
            forked = FORKSERVER in command and FORKSERVER in _parent_command(proc)
            if b"prefect.engine" not in command and not forked:
                continue
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # not a process, gone, or not ours
            continue
    return found


FORKSERVER = b"multiprocessing.forkserver"


def _parent_command(proc: Path) -> bytes:
    parent = (proc / "stat").read_text().rpartition(")")[2].split()[1]
    return Path(f"/proc/{parent}/cmdline").read_bytes()


def wait_quiet(state_dir: Path, *, timeout: float = 120.0) -> None:
    """Wait until the last flow run's process has exited: the runner starts one run at a time,
    and a run is COMPLETED before its process is gone; a measure starts on a quiet loop."""
    deadline = time.monotonic() + timeout
    while flow_processes(state_dir) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)


@dataclass
class Measured:
    """One size's figures."""

    rows: int
    first_commit: float = 0.0
    commits: list[dict[str, float]] = field(default_factory=list)
    drifts: list[dict[str, float]] = field(default_factory=list)
    ingest: list[float] = field(default_factory=list)
    trained_on: dict[str, list[str]] = field(default_factory=dict)
    """The commit each counted run trained on, per kind (``commit``, ``drift``)."""
    floor: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Per kind: the floor's seconds on the training rows of the run whose total is the median,
    and how many rows that is."""

    def runs(self, kind: str) -> list[dict[str, float]]:
        return self.commits if kind == "commit" else self.drifts


def middle(runs: list[dict[str, float]]) -> int:
    """Index of the run whose total is the median (the upper one of two)."""
    return sorted(range(len(runs)), key=lambda index: sum(runs[index].values()))[len(runs) // 2]


def commit_to_served(
    settings: Any, folder: Path, *, rows: int, seed: int
) -> tuple[float, Timeline, str]:
    """Ingest one batch of ``rows`` sales; the seconds the ingest took (upload, commit, the
    pre-merge checks, merge), the timeline from the merge to the API serving its model, and the
    commit."""
    from lakeloop import events, lakefs_client, loop  # noqa: PLC0415
    from lakeloop.dataset import load_spec  # noqa: PLC0415
    from lakeloop.ingest import inspect_source, write_parquet  # noqa: PLC0415
    from tooling import market  # noqa: PLC0415

    spec = load_spec(settings.dataset)
    path = write_parquet(market.generate_batch(rows=rows, seed=seed), folder / f"b{seed}.parquet")
    began = time.perf_counter()
    published = lakefs_client.publish(
        lakefs_client.connect(settings),
        settings,
        [inspect_source(path)],
        name=f"bench-{seed}",
        source=str(path),
        dataset_version=spec.version,
        description=spec.to_yaml(),
    )
    merged = datetime.now(UTC)
    took = time.perf_counter() - began
    commit_id = published.commit_id
    if commit_id is None:
        raise SystemExit(f"the pre-merge checks refused a benchmark batch: {published.rejection}")
    watch = ServedWatch(settings, lambda model: model.get("lakefs_commit_id") == commit_id)
    run = loop.wait_for_training(settings, commit_id=commit_id, timeout=RUN_TIMEOUT)
    served = watch.wait(timeout=120)
    event_id = events.event_id(
        "lakefs.post-merge", settings.lakefs.repository, settings.lakefs.branch, commit_id
    )
    received = event_received(settings, event_id)
    timeline = run_timeline(settings, run.id, start=merged, served=served, received=received)
    return took, timeline, commit_id


def drift_to_served(settings: Any, *, seed: int) -> tuple[Timeline, str]:
    """Shifted traffic with its sale prices, then the drift event the monitor would send; the
    timeline from the event to the API serving the retrained champion, and the commit it
    trained on."""
    from lakeloop import events, loop  # noqa: PLC0415
    from lakeloop.dataset import load_spec  # noqa: PLC0415
    from monitoring.events import drift_event  # noqa: PLC0415
    from monitoring.history import Window  # noqa: PLC0415
    from monitoring.parse import DriftSummary  # noqa: PLC0415
    from tooling import market  # noqa: PLC0415
    from tooling.demo import SHIFTED_MARKET  # noqa: PLC0415

    spec = load_spec(settings.dataset)
    champion = (loop.served_model(settings) or {}).get("version")
    if champion is None:
        raise SystemExit("no champion is served: nothing to retrain")
    sales = market.generate_batch(rows=TRAFFIC_ROWS, seed=seed, scenario=SHIFTED_MARKET)
    sent = datetime.now(UTC)
    _, ids, _ = loop.send_traffic(settings, loop.json_records(sales[spec.feature_names]))
    loop.report_prices(settings, ids, sales[spec.target.name].tolist())
    loop.wait_for_logged(
        settings, model_version=champion, since=sent, rows=len(ids), feedback_rows=len(ids)
    )
    window = Window(id=f"bench-{uuid.uuid4().hex[:12]}", start=sent, end=datetime.now(UTC))
    summary = DriftSummary(
        drift_share=1.0,
        drifted_features=list(spec.feature_names),
        per_feature={},
        prediction=None,
        dataset_drift=True,
        rows_current=len(ids),
        rows_reference=len(ids),
    )
    event = drift_event(
        champion_version=champion,
        window=window,
        summary=summary,
        report_path=None,
        model_name=settings.mlflow.model_name,
        reason="benchmarks.loop",
    )
    emitted = datetime.now(UTC)
    events.emit(settings.prefect_api_url, event)
    watch = ServedWatch(settings, lambda model: model.get("version") != champion)
    run = loop.wait_for_flow_run(
        settings, loop.RETRAIN_FLOW, parameters={"window_id": window.id}, timeout=RUN_TIMEOUT
    )
    served = watch.wait(timeout=120)
    received = event_received(settings, event["id"])
    timeline = run_timeline(settings, run.id, start=emitted, served=served, received=received)
    return timeline, str(watch.model["lakefs_commit_id"])


def measure(rows: int, *, commits: int) -> Measured:
    """One size on a fresh stack (stopped and removed whatever happens)."""
    measured = Measured(rows=rows)
    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-loop-") as scratch:
        root = Path(scratch)
        env = stack_env(root / "state")
        saved = dict(os.environ)
        try:
            lakeloop(env, root, "up")
            os.environ.clear()
            os.environ.update(env)  # this process is a client of that stack from here on
            from lakeloop.settings import load_settings  # noqa: PLC0415

            settings = load_settings()
            _, first, _ = commit_to_served(settings, root, rows=rows, seed=rows)
            measured.first_commit = (first.served - first.start).total_seconds()
            print(
                f"  {rows:,} rows: first commit (no champion yet) → served "
                f"{measured.first_commit:.1f} s",
                flush=True,
            )
            for index in range(1, commits + 1):
                wait_quiet(settings.state_dir)
                took, timeline, commit_id = commit_to_served(
                    settings, root, rows=rows, seed=rows + index
                )
                measured.ingest.append(took)
                measured.commits.append(hops(timeline))
                measured.trained_on.setdefault("commit", []).append(commit_id)
                print(
                    f"  commit {index}: → served {sum(measured.commits[-1].values()):.1f} s "
                    f"(ingest {took:.1f} s)",
                    flush=True,
                )
            for index in range(1, commits + 1):
                wait_quiet(settings.state_dir)
                timeline, commit_id = drift_to_served(settings, seed=rows * 10 + index)
                measured.drifts.append(hops(timeline))
                measured.trained_on.setdefault("drift", []).append(commit_id)
                print(
                    f"  drift {index}: → served {sum(measured.drifts[-1].values()):.1f} s",
                    flush=True,
                )
            frames = {
                kind: export_training_frame(
                    settings,
                    trained[middle(measured.runs(kind))],
                    root / f"floor-{kind}.parquet",
                )
                for kind, trained in measured.trained_on.items()
            }
        finally:
            os.environ.clear()
            os.environ.update(saved)
            stop_stack(env, root)
        measured.floor = dict(zip(frames, _run_floor(list(frames.values()), env=env), strict=True))
    return measured


# --- the floor -----------------------------------------------------------------------------


def export_training_frame(settings: Any, commit_id: str, path: Path) -> Path:
    """The rows the flow trained on at ``commit_id`` (its own read and training-frame steps, in
    this process), written to ``path``, with the feedback mask beside it."""
    import numpy as np  # noqa: PLC0415

    from lakeloop.dataset import load_spec  # noqa: PLC0415
    from pipelines import train as pipeline  # noqa: PLC0415

    spec = load_spec(settings.dataset)
    repository = settings.lakefs.repository
    tables = pipeline.read_commit(settings, repository, commit_id)
    ingested = pipeline.ingested_under(settings, spec, repository, commit_id, list(tables))
    data = pipeline.training_frame(settings, spec, tables, ingested)
    data.frame.to_parquet(path)
    np.save(path.with_suffix(".npy"), data.feedback)
    return path


def floors(paths: list[Path]) -> list[tuple[float, int]]:
    """For each exported training frame: the fastest of three ``lakeloop.model.train`` (split,
    fit, evaluate) on it, in this process, and its rows."""
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    from benchmarks.timing import best_of  # noqa: PLC0415
    from lakeloop.dataset import load_spec  # noqa: PLC0415
    from lakeloop.model import train  # noqa: PLC0415
    from lakeloop.settings import load_settings  # noqa: PLC0415

    spec = load_spec()
    training = load_settings().training
    found = []
    for path in paths:
        frame = pd.read_parquet(path)
        feedback = np.load(path.with_suffix(".npy"))
        fit = functools.partial(train, frame, spec, training, feedback=feedback)
        found.append((best_of(fit), len(frame)))
    return found


def _run_floor(paths: list[Path], *, env: dict[str, str]) -> list[tuple[float, int]]:
    """:func:`floors` in a fresh interpreter with the stack's environment (its OpenMP policy)."""
    env = {name: value for name, value in env.items() if name != "LAKELOOP_STATE_DIR"}
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.loop", "--floor", *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [(seconds, rows) for seconds, rows in json.loads(child.stdout.strip().splitlines()[-1])]


# What the flow run process imports before its run is Running, each in a fresh interpreter.
IMPORTS = (
    ("python, then import prefect.engine", "import prefect.engine"),
    (
        "... and what the warm parent imports for every run",  # deployments.warm.PRELOADED
        "import importlib, prefect.engine; from deployments.warm import PRELOADED; "
        "[importlib.import_module(name) for name in PRELOADED]",
    ),
)


def import_times() -> list[tuple[str, float]]:
    """Seconds a fresh interpreter takes for each of :data:`IMPORTS` (fastest of three): the
    process start and imports hop measured apart, on an idle stack."""
    from benchmarks.timing import best_of  # noqa: PLC0415

    return [
        (
            label,
            best_of(functools.partial(subprocess.run, [sys.executable, "-c", code], check=True)),
        )
        for label, code in IMPORTS
    ]


# --- printing ------------------------------------------------------------------------------


def print_table(title: str, runs: list[dict[str, float]], *, floor: tuple[float, int]) -> None:
    """Median and share per hop, with each run's seconds beside them (an outlier shows where)."""
    totals = [sum(run.values()) for run in runs]
    total = statistics.median(totals)
    each = "".join(f"{f'#{index}':>7}" for index in range(1, len(runs) + 1))
    print(f"\n{title}, median of {len(runs)}:")
    print(f"  {'hop':<52} {'median s':>9} {'share':>6}  {each}")
    for name, seconds in summarize(runs):
        values = "".join(f"{run.get(name, 0.0):>7.2f}" for run in runs)
        print(f"  {name:<52} {seconds:>9.2f} {seconds / total:>6.0%}  {values}")
    values = "".join(f"{value:>7.2f}" for value in totals)
    print(f"  {'total (median of the totals)':<52} {total:>9.2f} {1:>6.0%}  {values}")
    seconds, rows = floor
    label = f"floor: fit + evaluate in process ({rows:,} rows)"
    print(f"  {label:<52} {seconds:>9.2f}")
    print(f"  {'total / floor':<52} {total / seconds:>8.1f}x", flush=True)


def report(measured: Measured, *, commits: int) -> None:
    rows = measured.rows
    print(f"\nfirst commit (no champion yet) → served: {measured.first_commit:.1f} s")
    print_table(
        f"commit → served, batches of {rows:,} rows (main holds {2 * rows:,}-"
        f"{(commits + 1) * rows:,}; ingest {statistics.median(measured.ingest):.1f} s before it)",
        measured.commits,
        floor=measured.floor["commit"],
    )
    print_table(
        f"drift event → served, {TRAFFIC_ROWS:,} reported prices per retrain "
        f"(main holds {(commits + 1) * rows:,} rows + the folded prices)",
        measured.drifts,
        floor=measured.floor["drift"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="rows per batch")
    parser.add_argument(
        "--commits", type=int, default=COMMITS, help="commits (and drifts) per size"
    )
    parser.add_argument(
        "--floor", type=Path, nargs="+", help="(internal) time the floor on exported frames"
    )
    args = parser.parse_args()
    if args.floor:
        print(json.dumps(floors(args.floor)))
        return
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
    for rows in args.sizes:
        measured = measure(rows, commits=args.commits)
        report(measured, commits=args.commits)
    print("\nprocess start + imports, measured apart (fresh interpreter, fastest of 3):")
    for label, seconds in import_times():
        print(f"  {label:<52} {seconds:>9.2f}")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
