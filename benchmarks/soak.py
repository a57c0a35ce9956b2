"""A sustained run of the API with a hot swap in the middle (``python -m benchmarks.soak``).

A real MLflow server and a registered champion, ``python -m api`` (prediction log on) on loopback,
and for ``--seconds`` a steady mix of traffic from several keep-alive connections: single records
on ``--connections`` connections and batches of ``--batch-rows`` records on one more. Halfway, a
second registered version becomes the champion and the admin reload swaps it in (polling is
slowed right down, so the swap happens exactly then).

Prints requests, failed requests (the goal is zero), latency p50/p99/p99.9 before, during and after
the swap, and the server's resident memory (``VmRSS`` from ``/proc/<pid>/status``) sampled every
second: after the warm-up, at the end, and their ratio (goal: within 10 %). Measures and prints;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.api import (
    Target,
    free_port,
    read_response,
    records_of,
    register_model,
    server_process,
)

ADMIN_TOKEN = "soak-" + "k" * 27
DURING_SWAP_TAIL = 2.0
"""Seconds after the reload answered that still count as "during" the swap."""
RSS_WINDOW = 5.0
"""Seconds of samples averaged for the settled and the final resident memory."""


@dataclasses.dataclass
class Timeline:
    """Everything the run saw, as (seconds since start, value) pairs."""

    latencies: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    rss_kib: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    versions: dict[str, int] = dataclasses.field(default_factory=dict)
    swap_started: float = 0.0
    swap_ended: float = 0.0


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` in KiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS for process {pid}")


async def _connection(
    target: Target, kind: str, *, start: float, deadline: float, seen: Timeline
) -> None:
    """One keep-alive connection sending ``target`` back to back until ``deadline``; a dropped
    connection is a failure and is opened again."""
    request = target.request()
    latencies = seen.latencies.setdefault(kind, [])
    while time.perf_counter() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        except OSError as error:
            seen.failures.append(f"{kind}: connect: {error}")
            await asyncio.sleep(0.1)
            continue
        try:
            while (sent := time.perf_counter()) < deadline:
                writer.write(request)
                status = await read_response(reader)
                done = time.perf_counter()
                latencies.append((sent - start, done - sent))
                if status != 200:
                    seen.failures.append(f"{kind}: HTTP {status} at {sent - start:.1f} s")
        except (OSError, asyncio.IncompleteReadError) as error:
            seen.failures.append(f"{kind}: {type(error).__name__}: {error}")
        finally:
            writer.close()


async def _sample_rss(pid: int, *, start: float, deadline: float, seen: Timeline) -> None:
    while (now := time.perf_counter()) < deadline:
        seen.rss_kib.append((now - start, rss_kib(pid)))
        await asyncio.sleep(1.0)
    seen.rss_kib.append((time.perf_counter() - start, rss_kib(pid)))


def _swap(settings: Any, url: str, version: str) -> str:
    """Move the champion alias to ``version`` and have the API load it now; the new version."""
    from lakeloop import registry  # noqa: PLC0415

    client = registry.connect(settings)
    client.set_registered_model_alias(
        settings.mlflow.model_name, settings.mlflow.champion_alias, version
    )
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answer = httpx.post(f"{url}/v1/admin/reload", headers=headers, timeout=120)
    answer.raise_for_status()
    return str(answer.json()["version"])


async def _swap_midway(
    settings: Any, url: str, version: str, *, start: float, at: float, seen: Timeline
) -> None:
    await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
    seen.swap_started = time.perf_counter() - start
    served = await asyncio.to_thread(_swap, settings, url, version)
    seen.swap_ended = time.perf_counter() - start
    if served != version:
        seen.failures.append(f"swap: the API serves {served}, not {version}")


async def _soak(
    targets: dict[str, tuple[Target, int]],
    *,
    pid: int,
    seconds: float,
    swap: Any,
) -> Timeline:
    seen = Timeline()
    start = time.perf_counter()
    deadline = start + seconds
    tasks = [
        _connection(target, kind, start=start, deadline=deadline, seen=seen)
        for kind, (target, connections) in targets.items()
        for _ in range(connections)
    ]
    await asyncio.gather(
        *tasks,
        _sample_rss(pid, start=start, deadline=deadline, seen=seen),
        swap(start=start, seen=seen),
    )
    return seen


# Reporting --------------------------------------------------------------------------------------


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _phase_rows(seen: Timeline, *, warm_up: float) -> list[str]:
    after_swap = seen.swap_ended + DURING_SWAP_TAIL
    phases = {
        "before": (warm_up, seen.swap_started),
        "during": (seen.swap_started, after_swap),
        "after": (after_swap, float("inf")),
    }
    rows = [
        f"  {'traffic':<8} {'phase':<7} {'seconds':>7} {'requests':>9} {'req/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8}"
    ]
    for kind, latencies in seen.latencies.items():
        for phase, (low, high) in phases.items():
            ordered = sorted(took for at, took in latencies if low <= at < high)
            if not ordered:
                continue
            span = min(high, max(at for at, _ in latencies)) - low
            rows.append(
                f"  {kind:<8} {phase:<7} {span:>7.1f} {len(ordered):>9,} "
                f"{len(ordered) / span:>8,.0f} {statistics.median(ordered) * 1000:>8.2f} "
                f"{_percentile(ordered, 0.99) * 1000:>8.2f} "
                f"{_percentile(ordered, 0.999) * 1000:>9.2f} {ordered[-1] * 1000:>8.2f}"
            )
    return rows


def _mean_rss(samples: list[tuple[float, int]], low: float, high: float) -> float:
    window = [kib for at, kib in samples if low <= at <= high]
    return statistics.fmean(window) / 1024


def report(seen: Timeline, *, seconds: float, warm_up: float) -> None:
    """Print the run's figures."""
    requests = sum(len(latencies) for latencies in seen.latencies.values())
    print(f"\nrequests {requests:,}, failed {len(seen.failures)} (goal 0)")
    for failure in seen.failures[:10]:
        print(f"  {failure}")
    print(
        f"hot swap at {seen.swap_started:.1f} s, reload answered after "
        f"{(seen.swap_ended - seen.swap_started) * 1000:.0f} ms "
        f"('during' runs until {DURING_SWAP_TAIL:.0f} s after it)"
    )
    print(f"latency, after a {warm_up:.0f} s warm-up")
    print("\n".join(_phase_rows(seen, warm_up=warm_up)))
    settled = _mean_rss(seen.rss_kib, warm_up, warm_up + RSS_WINDOW)
    final = _mean_rss(seen.rss_kib, seconds - RSS_WINDOW, seconds + 1)
    peak = max(kib for _, kib in seen.rss_kib) / 1024
    print(
        f"server RSS (mean of {RSS_WINDOW:.0f} s of 1 s samples): {settled:,.1f} MiB after the "
        f"warm-up, {final:,.1f} MiB at the end, peak {peak:,.1f} MiB; end/settled "
        f"{final / settled:.3f} (goal within 10 %)"
    )
    marks = (warm_up, seconds / 4, seconds / 2, 3 * seconds / 4, seconds)
    trace = ", ".join(
        f"{at:.0f} s {min(seen.rss_kib, key=lambda s: abs(s[0] - at))[1] / 1024:,.0f}"
        for at in marks
    )
    print(f"  RSS over time (MiB): {trace}")


# Running ----------------------------------------------------------------------------------------


def run(*, seconds: float, rows: int, connections: int, batch_rows: int) -> None:
    """Start MLflow and the API, register two versions, soak, swap halfway, print."""
    from lakeloop.settings import load_settings  # noqa: PLC0415
    from tooling.stack import Stack, child_env, services  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-soak-") as scratch:
        settings = load_settings(state_dir=Path(scratch) / "state", mlflow={"port": free_port()})
        stack = Stack(settings)
        [mlflow_service] = [s for s in services(settings) if s.name == "mlflow"]
        try:
            stack.wait(stack.start(mlflow_service))
            print(f"training and registering two versions on {rows:,} rows ...", flush=True)
            _, _, frame = register_model(settings, rows=rows)
            second, _, _ = register_model(settings, rows=rows, seed=4, promote=False)
            port = free_port()
            env = child_env(settings) | {
                "LAKELOOP_MLFLOW__PORT": str(settings.mlflow.port),
                "LAKELOOP_API__PORT": str(port),
                "LAKELOOP_API__ADMIN_TOKEN": ADMIN_TOKEN,
                "LAKELOOP_API__CHAMPION_POLL_SECONDS": "3600",  # the swap is the reload call
            }
            logs = settings.state_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            url = f"http://127.0.0.1:{port}"
            with server_process(
                [sys.executable, "-m", "api"],
                env=env,
                log=logs / "api.log",
                ready_url=f"{url}/readyz",
            ) as api:
                record = records_of(frame.head(1))[0]
                batch = records_of(frame.head(batch_rows))
                targets = {
                    "single": (
                        Target(port, "/v1/predict", json.dumps(record).encode()),
                        connections,
                    ),
                    f"batch{batch_rows}": (
                        Target(port, "/v1/predict/batch", json.dumps({"records": batch}).encode()),
                        1,
                    ),
                }
                print(
                    f"soaking for {seconds:.0f} s: single records on {connections} connections, "
                    f"{batch_rows}-record batches on 1, a swap to version {second} halfway ...",
                    flush=True,
                )

                async def swap(*, start: float, seen: Timeline) -> None:
                    await _swap_midway(
                        settings, url, second, start=start, at=seconds / 2, seen=seen
                    )

                seen = asyncio.run(_soak(targets, pid=api.pid, seconds=seconds, swap=swap))
                with contextlib.suppress(httpx.HTTPError):
                    metrics = httpx.get(f"{url}/metrics", timeout=10).text
                    dropped = [
                        line
                        for line in metrics.splitlines()
                        if line.startswith(
                            (
                                "lakeloop_api_prediction_log_dropped_rows_total",
                                "lakeloop_api_prediction_log_lost_rows_total",
                            )
                        )
                    ]
                    print("prediction log: " + "; ".join(dropped or ["no rows dropped or lost"]))
            report(seen, seconds=seconds, warm_up=min(20.0, seconds / 6))
        finally:
            stack.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the soak")
    parser.add_argument("--rows", type=int, default=20_000, help="rows each model is trained on")
    parser.add_argument(
        "--connections", type=int, default=4, help="connections sending single records"
    )
    parser.add_argument("--batch-rows", type=int, default=250, help="records per batch request")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    run(
        seconds=args.seconds,
        rows=args.rows,
        connections=args.connections,
        batch_rows=args.batch_rows,
    )


if __name__ == "__main__":
    main()
