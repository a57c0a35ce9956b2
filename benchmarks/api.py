"""lakeloop's prediction API against ``mlflow models serve`` (``python -m benchmarks.api``).

One registered model (default training settings), served side by side on loopback by
``mlflow models serve --env-manager local`` and by ``python -m api`` (the same build twice, with
``LAKELOOP_API__LOG_PREDICTIONS`` true and false), hit by the same load generator: a raw asyncio
HTTP/1.1 keep-alive client, cheap enough not to become the bottleneck on a small machine.

Ratios are taken round by round: in each round the two lakeloop servers and the booster called in
this process (``inplace_predict`` on the same 1,000 rows, already encoded) are measured one after
the other, and the ratio printed is the median of the rounds' ratios. Other work on a shared
machine then weighs on both sides of a ratio alike; it still moves the absolute figures by tens
of percent. Prints figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

SINGLE_CONNECTIONS = (1, 16)
BATCH_ROWS = 1000
BATCH_FORMS = ("records", "columns")
LOG_ON = "lakeloop (log on)"
LOG_OFF = "lakeloop (log off)"
BOOSTER = "booster in process"


@dataclasses.dataclass(frozen=True)
class Target:
    """One HTTP endpoint with a fixed request body."""

    port: int
    path: str
    body: bytes

    def request(self) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n\r\n"
        )
        return head.encode() + self.body


@dataclasses.dataclass(frozen=True)
class Measured:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms: float | None = None
    """CPU time per request of the server's process, every thread counted (for a call in this
    process, of this process); ``None`` where it was not read."""


def process_cpu(pid: int) -> float | None:
    """Seconds of CPU (user and system, every thread) process ``pid`` has used; ``None`` where
    ``/proc`` cannot say (not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Subject (a server, or the booster in process) -> figure -> one measurement per round.
Rounds = dict[str, dict[str, list[Measured]]]


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length or chunked); returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _connection(target: Target, deadline: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    request = target.request()
    errors = 0
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            errors += status >= 300
    finally:
        writer.close()
    return errors


async def _load(target: Target, *, connections: int, seconds: float, pid: int | None) -> Measured:
    warm_until = time.perf_counter() + min(1.0, seconds / 4)
    await asyncio.gather(*(_connection(target, warm_until, []) for _ in range(connections)))
    latencies: list[float] = []
    cpu_before = process_cpu(pid) if pid else None
    started = time.perf_counter()
    errors = await asyncio.gather(
        *(_connection(target, started + seconds, latencies) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    cpu_after = process_cpu(pid) if pid else None
    ordered = sorted(latencies)
    cpu_ms = None
    if cpu_before is not None and cpu_after is not None:
        cpu_ms = (cpu_after - cpu_before) / len(ordered) * 1000
    return Measured(
        requests_per_s=len(ordered) / elapsed,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[int(0.99 * (len(ordered) - 1))] * 1000,
        errors=sum(errors),
        cpu_ms=cpu_ms,
    )


def measure(
    target: Target, *, connections: int, seconds: float, pid: int | None = None
) -> Measured:
    """Requests per second and latency percentiles of ``connections`` busy connections (and,
    given the server's ``pid``, its CPU time per request)."""
    return asyncio.run(_load(target, connections=connections, seconds=seconds, pid=pid))


# The model and the servers ---------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes], *, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


@contextmanager
def server_process(
    argv: list[str], *, env: dict[str, str], log: Path, ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A server started from ``argv`` (output appended to ``log``) once ``ready_url`` answers
    200; stopped on exit."""
    from tooling.stack import stop_processes  # noqa: PLC0415

    with log.open("ab") as output:
        process = subprocess.Popen(
            argv, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait(ready_url, process)
        yield process
    finally:
        stop_processes([(argv[0], process.pid)])


def register_model(
    settings: Any, *, rows: int, seed: int = 3, promote: bool = True
) -> tuple[str, Any, Any]:
    """Train with the default settings, register, make champion (unless not ``promote``);
    (version, pipeline, frame)."""
    from lakeloop import registry  # noqa: PLC0415
    from lakeloop.dataset import load_spec  # noqa: PLC0415
    from lakeloop.model import train  # noqa: PLC0415
    from tooling import market  # noqa: PLC0415

    spec = load_spec()
    frame = market.generate_batch(rows=rows, seed=seed)
    trained = train(frame, spec, settings.training)
    client = registry.connect(settings)
    lineage = registry.Lineage(
        repository="housing",
        commit_id="b" * 64,
        validation="passed",
        trigger="manual",
        dataset=f"{spec.name}@v{spec.version}",
    )
    logged = registry.log_trained(
        settings, trained, spec=spec, training_data=frame, lineage=lineage
    )
    if promote:
        registry.record_decision(client, settings, logged=logged, reasons=[], champion=None)
    return logged.version, trained.pipeline, frame[spec.feature_names]


def records_of(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame's rows as JSON-ready dicts (missing values as ``None``)."""
    rows: list[dict[str, Any]] = (
        frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    )
    return rows


def encoded_batch(pipeline: Any, batch: list[dict[str, Any]]) -> tuple[Any, Any]:
    """The served model's kernel and the batch as the float32 matrix its booster takes."""
    from api.predictor import MatrixKernel  # noqa: PLC0415

    kernel = MatrixKernel.of(pipeline)
    assert kernel is not None
    return kernel, kernel.matrix_from_columns({name: [r[name] for r in batch] for name in batch[0]})


def measure_call(call: Callable[[], Any], *, seconds: float) -> Measured:
    """The same figures for a function called in this process, back to back."""
    call()
    latencies = []
    cpu_before = time.process_time()
    started = time.perf_counter()
    while (now := time.perf_counter()) < started + seconds:
        call()
        latencies.append(time.perf_counter() - now)
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return Measured(
        requests_per_s=len(ordered) / elapsed,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[int(0.99 * (len(ordered) - 1))] * 1000,
        errors=0,
        cpu_ms=(time.process_time() - cpu_before) / len(ordered) * 1000,
    )


def pipeline_rows_per_s(pipeline: Any, frame: Any, *, seconds: float) -> float:
    """Rows per second of the sklearn pipeline on a 1,000-row DataFrame (what a pandas-based
    server pays for the model alone)."""
    rows = frame.head(BATCH_ROWS)
    return measure_call(lambda: pipeline.predict(rows), seconds=seconds).requests_per_s * len(rows)


# Where a batch request's time goes ---------------------------------------------------------------

DECODE = "decode and check the JSON body"
MATRIX = "the float32 matrix from the values"
BOOSTER_CALL = "the booster (inplace_predict)"
ANSWER = "prediction ids, the answer as JSON"
LOG_ROWS = "log rows to Parquet (writer thread)"


def cpu_ms(call: Callable[[], Any], *, repeats: int) -> float:
    """Median CPU time of ``call`` in this process (every thread: the booster's too), in ms."""
    call()
    spent = []
    for _ in range(repeats):
        before = time.process_time()
        call()
        spent.append(time.process_time() - before)
    return statistics.median(spent) * 1000


def stage_costs(
    settings: Any, pipeline: Any, batch: list[dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """CPU ms of each stage of a 1,000-record request, run in this process with the API's own
    code (form -> stage -> ms); the log's per request, from whole segments as the writer
    writes them (``log_flush_rows`` rows each)."""
    import msgspec  # noqa: PLC0415

    from api.ids import prediction_ids  # noqa: PLC0415
    from api.schemas import ModelRef, PredictionResponse  # noqa: PLC0415
    from api.service import RequestSchema  # noqa: PLC0415
    from lakeloop.dataset import load_spec  # noqa: PLC0415
    from lakeloop.stores.prediction_log import Entry, SegmentWriter, prediction_table  # noqa: PLC0415

    spec = load_spec()
    schema = RequestSchema(spec, max_batch=settings.api.max_batch)
    kernel, _ = encoded_batch(pipeline, batch)
    model = ModelRef(name=settings.mlflow.model_name, version="1")
    per_segment = max(1, settings.api.log_flush_rows // len(batch))
    writer = SegmentWriter(
        settings.object_store.child("stage-costs"),
        prediction_table(spec),
        max_rows=2 * per_segment * len(batch),
        flush_rows=settings.api.log_flush_rows,
        flush_seconds=settings.api.log_flush_seconds,
    )
    bodies = {
        "records": json.dumps({"records": batch}).encode(),
        "columns": json.dumps({"columns": {n: [r[n] for r in batch] for n in batch[0]}}).encode(),
    }
    costs = {}
    for form, body in bodies.items():
        records, columns = schema.decode_batch(body)

        def matrix_of(records: Any = records, columns: Any = columns) -> Any:
            if records is not None:
                return kernel.matrix_from_records(records)
            return kernel.matrix_from_columns(columns)

        matrix = matrix_of()
        values = kernel.predict(matrix)

        def answer(values: Any = values) -> bytes:
            ids = prediction_ids(len(values))
            response = PredictionResponse(values.tolist(), prediction_ids=ids, model=model)
            return msgspec.json.encode(response)

        entry = Entry(
            at=datetime.now(UTC),
            model_name=model.name,
            model_version=model.version,
            prediction_ids=prediction_ids(len(values)),
            predictions=values,
            records=records or (),
            columns=columns,
            matrix=matrix,
            matrix_names=kernel.names,
            spec=spec,
        )

        def segment(entry: Any = entry) -> None:
            for _ in range(per_segment):
                writer.put(entry)
            writer.flush()

        costs[form] = {
            DECODE: cpu_ms(lambda body=body: schema.decode_batch(body), repeats=200),
            MATRIX: cpu_ms(matrix_of, repeats=200),
            BOOSTER_CALL: cpu_ms(lambda matrix=matrix: kernel.predict(matrix), repeats=200),
            ANSWER: cpu_ms(answer, repeats=200),
            LOG_ROWS: cpu_ms(segment, repeats=5) / per_segment,
        }
    return costs


# Running and printing --------------------------------------------------------------------------


def _row(label: str, measured: Measured, *, baseline: Measured | None, rows: int = 1) -> str:
    ratio = f"{measured.requests_per_s / baseline.requests_per_s:>7.1f}x" if baseline else " " * 8
    p99 = f"{baseline.p99_ms / measured.p99_ms:>6.1f}x" if baseline else " " * 7
    return (
        f"  {label:<34} {measured.requests_per_s * rows:>10,.0f} {measured.p50_ms:>8.2f} "
        f"{measured.p99_ms:>8.2f} {measured.errors:>5}  {ratio} {p99}"
    )


def _header(unit: str) -> str:
    return (
        f"  {'server':<34} {unit:>10} {'p50 ms':>8} {'p99 ms':>8} {'errs':>5}  "
        f"{'vs mlflow':>8} {'p99 gain':>7}"
    )


def run(*, seconds: float, rows: int, rounds: int) -> None:
    """Start everything, measure, print."""
    from lakeloop.settings import load_settings  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-api-") as scratch:
        settings = load_settings(state_dir=Path(scratch) / "state", mlflow={"port": free_port()})
        _run_in(settings, seconds=seconds, rows=rows, rounds=rounds)


def _run_in(settings: Any, *, seconds: float, rows: int, rounds: int) -> None:
    from tooling.stack import Stack, child_env, services  # noqa: PLC0415

    stack = Stack(settings)
    [mlflow_service] = [s for s in services(settings) if s.name == "mlflow"]
    try:
        stack.wait(stack.start(mlflow_service))
        print(f"training and registering a model on {rows:,} rows ...", flush=True)
        version, pipeline, frame = register_model(settings, rows=rows)
        # `mlflow models serve` runs `uvicorn` from PATH: the one next to this interpreter.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = child_env(settings) | {
            "LAKELOOP_MLFLOW__PORT": str(settings.mlflow.port),
            "PATH": path,
        }
        record = records_of(frame.head(1))[0]
        batch = records_of(frame.head(BATCH_ROWS))
        measure_all(
            settings,
            env,
            version=version,
            pipeline=pipeline,
            record=record,
            batch=batch,
            seconds=seconds,
            rounds=rounds,
        )
        print(
            f"\nin process, the sklearn pipeline on a {BATCH_ROWS:,}-row DataFrame: "
            f"{pipeline_rows_per_s(pipeline, frame, seconds=seconds):,.0f} rows/s"
        )
    finally:
        stack.down()


def measure_all(
    settings: Any,
    env: dict[str, str],
    *,
    version: str,
    pipeline: Any,
    record: dict[str, Any],
    batch: list[dict[str, Any]],
    seconds: float,
    rounds: int,
) -> None:
    """Measure MLflow, then lakeloop with logging on and off and the booster in process, in
    rounds."""
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    mlflow_port = free_port()
    mlflow_argv = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m",
        f"models:/{settings.mlflow.model_name}/{version}", "--env-manager", "local",
        "-h", "127.0.0.1", "-p", str(mlflow_port),
    ]  # fmt: skip
    print("measuring mlflow models serve ...", flush=True)
    with server_process(
        mlflow_argv,
        env=env,
        log=logs / "mlflow-serve.log",
        ready_url=f"http://127.0.0.1:{mlflow_port}/ping",
    ):
        single = json.dumps({"dataframe_records": [record]}).encode()
        many = json.dumps({"dataframe_records": batch}).encode()
        mlflow = _figures(mlflow_port, "/invocations", single, many, seconds=seconds)
    kernel, matrix = encoded_batch(pipeline, batch)
    with contextlib.ExitStack() as running:
        ports = {LOG_ON: _start_api(running, env, logs, logging=True)}
        ports[LOG_OFF] = _start_api(running, env, logs, logging=False)
        print(f"measuring {', '.join(ports)} and {BOOSTER} in {rounds} rounds ...", flush=True)
        seen = _rounds(
            ports,
            booster=lambda: kernel.predict(matrix),
            record=record,
            batch=batch,
            seconds=seconds,
            rounds=rounds,
        )
    _print(mlflow, seen)
    _print_costs(stage_costs(settings, pipeline, batch), seen)


def _start_api(
    running: contextlib.ExitStack, env: dict[str, str], logs: Path, *, logging: bool
) -> tuple[int, int]:
    """The port and the process id of a started API server."""
    port = free_port()
    api_env = env | {
        "LAKELOOP_API__PORT": str(port),
        "LAKELOOP_API__LOG_PREDICTIONS": str(logging).lower(),
        "LAKELOOP_API__ADMIN_TOKEN": "bench-" + "k" * 26,
    }
    process = running.enter_context(
        server_process(
            [sys.executable, "-m", "api"],
            env=api_env,
            log=logs / f"api-{port}.log",
            ready_url=f"http://127.0.0.1:{port}/readyz",
        )
    )
    return port, process.pid


def _rounds(
    ports: dict[str, tuple[int, int]],
    *,
    booster: Callable[[], Any],
    record: dict[str, Any],
    batch: list[dict[str, Any]],
    seconds: float,
    rounds: int,
) -> Rounds:
    """Every figure measured once per round for each lakeloop server (and, for batches, for the
    booster in process), the subjects taking turns in an order that alternates between rounds,
    so neither always runs first."""
    bodies = {
        "single": ("/v1/predict", json.dumps(record).encode()),
        "records": ("/v1/predict/batch", json.dumps({"records": batch}).encode()),
        "columns": (
            "/v1/predict/batch",
            json.dumps({"columns": {name: [r[name] for r in batch] for name in record}}).encode(),
        ),
    }
    figures = [(f"single c{c}", "single", c) for c in SINGLE_CONNECTIONS]
    figures += [(form, form, 1) for form in BATCH_FORMS]
    seen: Rounds = {name: {key: [] for key, _, _ in figures} for name in ports}
    seen[BOOSTER] = {form: [] for form in BATCH_FORMS}
    for turn in range(rounds):
        for key, body, connections in figures:
            path, payload = bodies[body]
            order: list[str] = list(ports) + ([BOOSTER] if key in BATCH_FORMS else [])
            for name in order[::-1] if turn % 2 else order:
                if name == BOOSTER:
                    measured = measure_call(booster, seconds=seconds)
                else:
                    port, pid = ports[name]
                    target = Target(port, path, payload)
                    measured = measure(target, connections=connections, seconds=seconds, pid=pid)
                seen[name][key].append(measured)
    return seen


def _figures(
    port: int,
    path: str,
    single: bytes,
    many: bytes,
    *,
    seconds: float,
    path_many: str | None = None,
) -> dict[str, Measured]:
    figures = {
        f"single c{connections}": measure(
            Target(port, path, single), connections=connections, seconds=seconds
        )
        for connections in SINGLE_CONNECTIONS
    }
    figures["records"] = measure(
        Target(port, path_many or path, many), connections=1, seconds=seconds
    )
    return figures


def _median(seen: list[Measured]) -> Measured:
    """The round with the median throughput."""
    return sorted(seen, key=lambda m: m.requests_per_s)[len(seen) // 2]


def paired_ratio(
    top: list[Measured], bottom: list[Measured], *, by_p50: bool = False
) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-round ratios ``top / bottom`` of throughput, or with
    ``by_p50`` of the speed of a typical request (``bottom.p50 / top.p50``), which bursts of other
    work on the machine move less."""
    ratios = sorted(
        b.p50_ms / t.p50_ms if by_p50 else t.requests_per_s / b.requests_per_s
        for t, b in zip(top, bottom, strict=True)
    )
    return statistics.median(ratios), ratios[0], ratios[-1]


def _ratio(top: list[Measured], bottom: list[Measured], *, by_p50: bool = False) -> str:
    middle, low, high = paired_ratio(top, bottom, by_p50=by_p50)
    return f"{middle:>5.2f}x (rounds {low:.2f}-{high:.2f})"


def _print(mlflow: dict[str, Measured], seen: Rounds) -> None:
    results = {"mlflow": mlflow} | {
        name: {key: _median(rounds) for key, rounds in figures.items()}
        for name, figures in seen.items()
        if name != BOOSTER
    }
    for connections in SINGLE_CONNECTIONS:
        key = f"single c{connections}"
        print(f"\nsingle records, {connections} connection(s)")
        print(_header("req/s"))
        for name, figures in results.items():
            print(_row(name, figures[key], baseline=None if name == "mlflow" else mlflow[key]))
    print(f"\n{BATCH_ROWS:,}-record batches, 1 connection")
    print(_header("rows/s"))
    for name, figures in results.items():
        baseline = None if name == "mlflow" else mlflow["records"]
        print(_row(f"{name} records", figures["records"], baseline=baseline, rows=BATCH_ROWS))
        if "columns" in figures:
            print(_row(f"{name} columns", figures["columns"], baseline=baseline, rows=BATCH_ROWS))
    for form in BATCH_FORMS:
        print(
            _row(
                f"{BOOSTER} ({form})", _median(seen[BOOSTER][form]), baseline=None, rows=BATCH_ROWS
            )
        )
    print(
        f"\n{BATCH_ROWS:,}-record batches against {BOOSTER} on the same rows, median of the "
        "rounds' ratios (goal >= 0.5x)"
    )
    print(f"  {'server, form':<34} {'rows/s':<27} p50 latency")
    for name in (LOG_ON, LOG_OFF):
        for form in BATCH_FORMS:
            mine, booster = seen[name][form], seen[BOOSTER][form]
            print(
                f"  {name + ' ' + form:<34} {_ratio(mine, booster):<27} "
                f"{_ratio(mine, booster, by_p50=True)}"
            )
    print(
        "\nprediction logging: the same server with the log on / off, median of the rounds' "
        "ratios (goal >= 0.90x: a cost under 10 %)"
    )
    print(f"  {'load':<34} {'throughput':<27} p50 latency")
    loads = {f"single c{c}": f"single records, {c} connection(s)" for c in SINGLE_CONNECTIONS}
    loads |= {form: f"{BATCH_ROWS:,}-record batches, {form}" for form in BATCH_FORMS}
    for key, label in loads.items():
        on, off = seen[LOG_ON][key], seen[LOG_OFF][key]
        print(f"  {label:<34} {_ratio(on, off):<27} {_ratio(on, off, by_p50=True)}")


def _print_costs(costs: dict[str, dict[str, float]], seen: Rounds) -> None:
    forms = list(costs)

    def line(label: str, figures: dict[str, float]) -> None:
        print(f"  {label:<44}" + "".join(f"{figures[form]:>10.2f}" for form in forms))

    print(
        f"\nwhere the CPU time of a {BATCH_ROWS:,}-record request goes, ms: each stage run in this "
        "process with the API's code;\nthe servers' whole process (every thread) per request, "
        "median of the rounds"
    )
    print(f"  {'stage':<44}" + "".join(f"{form:>10}" for form in forms))
    for stage in costs[forms[0]]:
        line(stage, {form: costs[form][stage] for form in forms})
    for name, logged in ((LOG_ON, True), (LOG_OFF, False)):
        stages = {
            form: sum(ms for stage, ms in costs[form].items() if logged or stage != LOG_ROWS)
            for form in forms
        }
        line(f"sum of the stages, {name}", stages)
        server = {form: _median_cpu(seen[name][form]) for form in forms}
        measured = {form: ms for form, ms in server.items() if ms is not None}
        if len(measured) == len(forms):
            line(f"server process, {name}", measured)
            line("the rest: HTTP, Litestar, threads", {f: measured[f] - stages[f] for f in forms})


def _median_cpu(seen: list[Measured]) -> float | None:
    spent = [m.cpu_ms for m in seen if m.cpu_ms is not None]
    return statistics.median(spent) if spent else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="measured seconds per figure (and per round)"
    )
    parser.add_argument("--rows", type=int, default=20_000, help="rows the model is trained on")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds for the lakeloop figures and their ratios"
    )
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    # Every lakeloop process runs XGBoost's OpenMP threads with passive waits (the stack's
    # children, the Docker image): the booster called here must too, or the ratio compares two
    # thread policies rather than serving against the booster. On a busy 2-core machine a team
    # that spins took 42 ms a call against 8-12 ms passive (the ratio read 2.8x instead of 0.3x).
    # Set before XGBoost is loaded (libgomp reads it once); the servers inherit the same value.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    print(f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} here and in the servers", flush=True)
    # Other work on the machine moves every figure here by tens of percent: say how much there was.
    print(f"load average at the start: {_load_average()}", flush=True)
    run(seconds=args.seconds, rows=args.rows, rounds=args.rounds)
    print(f"\nload average at the end: {_load_average()} ({os.cpu_count()} cores)")


def _load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


if __name__ == "__main__":
    main()
