"""lakeloop's prediction API against ``mlflow models serve`` (``python -m benchmarks.api``).

One registered model (default training settings), served side by side on loopback by
``mlflow models serve --env-manager local`` and by ``python -m api`` (prediction logging on and
off, the two taking turns in rounds), hit by the same load generator: a raw asyncio HTTP/1.1
keep-alive client, cheap enough not to become the bottleneck on a small machine. Prints figures
and ratios; asserts nothing. Other work on the machine moves the figures by tens of percent.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

SINGLE_CONNECTIONS = (1, 16)
BATCH_ROWS = 1000


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


async def _read_response(reader: asyncio.StreamReader) -> int:
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
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - started)
            errors += status >= 300
    finally:
        writer.close()
    return errors


async def _load(target: Target, *, connections: int, seconds: float) -> Measured:
    warm_until = time.perf_counter() + min(1.0, seconds / 4)
    await asyncio.gather(*(_connection(target, warm_until, []) for _ in range(connections)))
    latencies: list[float] = []
    started = time.perf_counter()
    errors = await asyncio.gather(
        *(_connection(target, started + seconds, latencies) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return Measured(
        requests_per_s=len(ordered) / elapsed,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[int(0.99 * (len(ordered) - 1))] * 1000,
        errors=sum(errors),
    )


def measure(target: Target, *, connections: int, seconds: float) -> Measured:
    """Requests per second and latency percentiles of ``connections`` busy connections."""
    return asyncio.run(_load(target, connections=connections, seconds=seconds))


# The model and the servers ---------------------------------------------------------------------


def _free_port() -> int:
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
def _process(
    argv: list[str], *, env: dict[str, str], log: Path, ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    from lakeloop.stack import stop_processes  # noqa: PLC0415

    with log.open("ab") as output:
        process = subprocess.Popen(
            argv, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait(ready_url, process)
        yield process
    finally:
        stop_processes([(argv[0], process.pid)])


def register_model(settings: Any, *, rows: int) -> tuple[str, Any, Any]:
    """Train with the default settings, register, make champion; (version, pipeline, frame)."""
    from lakeloop import market, tracking  # noqa: PLC0415
    from lakeloop.dataset import load_spec  # noqa: PLC0415
    from lakeloop.model import train  # noqa: PLC0415

    spec = load_spec()
    frame = market.generate_batch(rows=rows, seed=3)
    trained = train(frame, spec, settings.training)
    client = tracking.connect(settings)
    lineage = tracking.Lineage(
        repository="housing",
        commit_id="b" * 64,
        validation="passed",
        trigger="manual",
        dataset=f"{spec.name}@v{spec.version}",
    )
    logged = tracking.log_trained(
        settings, trained, spec=spec, training_data=frame, lineage=lineage
    )
    tracking.record_decision(client, settings, logged=logged, reasons=[], champion=None)
    return logged.version, trained.pipeline, frame[spec.feature_names]


def _records(frame: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = (
        frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    )
    return rows


def in_process_rows_per_s(pipeline: Any, frame: Any, *, repeats: int = 200) -> dict[str, float]:
    """Rows per second of the booster alone on pre-encoded 1,000-row matrices, and of the
    sklearn pipeline on a DataFrame (what a pandas-based server pays)."""
    from api.predictor import BoosterKernel  # noqa: PLC0415

    kernel = BoosterKernel.of(pipeline)
    assert kernel is not None
    rows = frame.head(BATCH_ROWS)
    records = _records(rows)
    matrix = kernel.matrix_from_columns({name: [r[name] for r in records] for name in rows})
    figures = {}
    for name, call in (
        ("booster", lambda: kernel.predict(matrix)),
        ("pipeline", lambda: pipeline.predict(rows)),
    ):
        call()
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        figures[name] = BATCH_ROWS * repeats / (time.perf_counter() - started)
    return figures


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


def run(*, seconds: float, rows: int) -> None:
    """Start everything, measure, print."""
    from lakeloop.settings import load_settings  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-api-") as scratch:
        settings = load_settings(state_dir=Path(scratch) / "state", mlflow={"port": _free_port()})
        _run_in(settings, seconds=seconds, rows=rows)


def _run_in(settings: Any, *, seconds: float, rows: int) -> None:
    from lakeloop.stack import Stack, child_env, services  # noqa: PLC0415

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
        record = _records(frame.head(1))[0]
        batch = _records(frame.head(BATCH_ROWS))
        measure_all(settings, env, version=version, record=record, batch=batch, seconds=seconds)
        booster = in_process_rows_per_s(pipeline, frame)
        print(
            f"\nin process, {BATCH_ROWS:,}-row batches: booster.inplace_predict "
            f"{booster['booster']:,.0f} rows/s, sklearn pipeline on a DataFrame "
            f"{booster['pipeline']:,.0f} rows/s"
        )
    finally:
        stack.down()


def measure_all(
    settings: Any,
    env: dict[str, str],
    *,
    version: str,
    record: dict[str, Any],
    batch: list[dict[str, Any]],
    seconds: float,
) -> None:
    """Measure MLflow, then lakeloop with logging on and off (taking turns)."""
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Measured]] = {}
    mlflow_port = _free_port()
    mlflow_argv = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m",
        f"models:/{settings.mlflow.model_name}/{version}", "--env-manager", "local",
        "-h", "127.0.0.1", "-p", str(mlflow_port),
    ]  # fmt: skip
    print("measuring mlflow models serve ...", flush=True)
    with _process(
        mlflow_argv,
        env=env,
        log=logs / "mlflow-serve.log",
        ready_url=f"http://127.0.0.1:{mlflow_port}/ping",
    ):
        single = json.dumps({"dataframe_records": [record]}).encode()
        many = json.dumps({"dataframe_records": batch}).encode()
        results["mlflow"] = _figures(mlflow_port, "/invocations", single, many, seconds=seconds)
    with contextlib.ExitStack() as running:
        ports = {
            f"lakeloop (log {'on' if on else 'off'})": _start_api(running, env, logs, logging=on)
            for on in (True, False)
        }
        print(f"measuring {', '.join(ports)} in alternating rounds ...", flush=True)
        results |= _alternating(ports, record=record, batch=batch, seconds=seconds)
    _print(results)


def _start_api(
    running: contextlib.ExitStack, env: dict[str, str], logs: Path, *, logging: bool
) -> int:
    port = _free_port()
    api_env = env | {
        "LAKELOOP_API__PORT": str(port),
        "LAKELOOP_API__LOG_PREDICTIONS": str(logging).lower(),
        "LAKELOOP_API__ADMIN_TOKEN": "bench-" + "k" * 26,
    }
    running.enter_context(
        _process(
            [sys.executable, "-m", "api"],
            env=api_env,
            log=logs / f"api-{port}.log",
            ready_url=f"http://127.0.0.1:{port}/readyz",
        )
    )
    return port


def _alternating(
    ports: dict[str, int],
    *,
    record: dict[str, Any],
    batch: list[dict[str, Any]],
    seconds: float,
    rounds: int = 3,
) -> dict[str, dict[str, Measured]]:
    """Each figure measured ``rounds`` times per server, the servers taking turns, and the
    median round kept: other work on a shared machine then weighs on both sides alike."""
    bodies = {
        "single": ("/v1/predict", json.dumps(record).encode()),
        "records": ("/v1/predict/batch", json.dumps({"records": batch}).encode()),
        "columns": (
            "/v1/predict/batch",
            json.dumps({"columns": {name: [r[name] for r in batch] for name in record}}).encode(),
        ),
    }
    figures = [(f"single c{c}", "single", c) for c in SINGLE_CONNECTIONS]
    figures += [("records", "records", 1), ("columns", "columns", 1)]
    results: dict[str, dict[str, Measured]] = {name: {} for name in ports}
    for key, body, connections in figures:
        path, payload = bodies[body]
        rounds_seen: dict[str, list[Measured]] = {name: [] for name in ports}
        for _ in range(rounds):
            for name, port in ports.items():
                target = Target(port, path, payload)
                rounds_seen[name].append(measure(target, connections=connections, seconds=seconds))
        for name, seen in rounds_seen.items():
            results[name][key] = sorted(seen, key=lambda m: m.requests_per_s)[len(seen) // 2]
    return results


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


def _print(results: dict[str, dict[str, Measured]]) -> None:
    mlflow = results["mlflow"]
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
    on, off = results["lakeloop (log on)"], results["lakeloop (log off)"]
    cost = 1 - on["single c16"].requests_per_s / off["single c16"].requests_per_s
    print(f"\nprediction logging costs {cost:.1%} of single-record throughput at 16 connections")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="measured seconds per figure (and per round)"
    )
    parser.add_argument("--rows", type=int, default=20_000, help="rows the model is trained on")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    run(seconds=args.seconds, rows=args.rows)


if __name__ == "__main__":
    main()
