"""lakeFS I/O through the official SDK into the local server, against a plain file copy.

``python -m benchmarks.lakefs_io``: writes a 1,000,000-row Parquet batch, then measures on one
disk (a) ``shutil.copyfile`` + fsync, (b) SDK uploads (bytes in one call, and the streaming
writer fed from the file in chunks) plus the commit, (c) SDK read-back at the commit id against
reading the file. Prints MB/s, the SDK/copy ratio and peak memory of server and client.
Set ``LAKEFS_LOCAL_PROFILE=path.prof`` to also cProfile the server (see ``__main__``).
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lakefs

from lakeloop.lakefs_local.testing import LocalServerProcess

ROWS = 1_000_000
CHUNK = 8 << 20  # what the streaming writer is fed per write()


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with target.open("rb+") as handle:
        os.fsync(handle.fileno())


def _read_file(source: Path) -> bytes:
    return source.read_bytes()


def _upload_bytes(obj: lakefs.WriteableObject, data: bytes) -> None:
    obj.upload(data=data, mode="wb")


def _upload_streaming(obj: lakefs.WriteableObject, source: Path) -> None:
    with obj.writer(mode="wb") as writer, source.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            writer.write(chunk)


def _write_batch(directory: Path) -> Path:
    """Generate the batch in a child process, so the client's peak RSS measures the SDK only."""
    target = directory / "batch.parquet"
    code = (
        "import sys; from lakeloop.market import generate_batch; "
        f"generate_batch(rows={ROWS}, seed=1).to_parquet(sys.argv[1], index=False)"
    )
    subprocess.run([sys.executable, "-c", code, str(target)], check=True)
    return target


def _mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def main() -> int:
    """Run the benchmark and print its table."""
    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        source = _write_batch(root)
        data = source.read_bytes()
        size = len(data)
        server = LocalServerProcess(root / "lakefs", extra_env=_profile_env()).start()
        try:
            rows = _measure(server, source, data)
            server_peak = server.peak_rss_kib()
        finally:
            server.stop()
    client_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    _print_table(size, rows, server_peak, client_peak)
    return 0


def _profile_env() -> dict[str, str]:
    profile = os.environ.get("LAKEFS_LOCAL_PROFILE")
    return {"LAKEFS_LOCAL_PROFILE": profile} if profile else {}


def _measure(
    server: LocalServerProcess, source: Path, data: bytes
) -> list[tuple[str, float, float]]:
    client = lakefs.Client(host=server.url, username=server.key_id, password=server.secret)
    repo = lakefs.Repository("bench", client=client).create(storage_namespace="local://bench")
    main = repo.branch("main")
    size = len(data)
    copy_target = source.with_suffix(".copy")
    copy_s = min(_timed(lambda: _copy(source, copy_target)) for _ in range(3))
    file_read_s = min(_timed(lambda: _read_file(source)) for _ in range(3))
    bytes_s = min(
        _timed(lambda: _upload_bytes(main.object("bytes.parquet"), data)) for _ in range(3)
    )
    stream_s = min(
        _timed(lambda: _upload_streaming(main.object("stream.parquet"), source)) for _ in range(3)
    )
    commit_s = _timed(lambda: main.commit(message="bench batch"))
    commit_id = main.get_commit().id
    reader = repo.ref(commit_id).object("stream.parquet")
    read_s = min(_timed(lambda: reader.reader(mode="rb").read()) for _ in range(3))
    assert reader.reader(mode="rb").read() == data, "read-back differs from the source"
    upload_best = (
        ("upload(data=bytes)", bytes_s) if bytes_s <= stream_s else ("writer() streaming", stream_s)
    )
    return [
        ("plain copy + fsync", _mbps(size, copy_s), 1.0),
        ("SDK upload(data=bytes)", _mbps(size, bytes_s), copy_s / bytes_s),
        ("SDK writer() streaming", _mbps(size, stream_s), copy_s / stream_s),
        (f"best upload: {upload_best[0]}", _mbps(size, upload_best[1]), copy_s / upload_best[1]),
        ("commit (seconds)", commit_s, float("nan")),
        ("plain file read", _mbps(size, file_read_s), 1.0),
        ("SDK reader().read() at commit", _mbps(size, read_s), file_read_s / read_s),
    ]


def _print_table(
    size: int, rows: list[tuple[str, float, float]], server_kib: int | None, client_kib: int
) -> None:
    print(f"Parquet batch: {ROWS:,} rows, {size / 1e6:.1f} MB (best of 3 per figure)")
    print(f"{'operation':<42}{'MB/s':>10}{'SDK/plain':>11}")
    for name, value, ratio in rows:
        shown_ratio = "" if math.isnan(ratio) else f"{ratio:.2f}"  # NaN: not a throughput row
        print(f"{name:<42}{value:>10.1f}{shown_ratio:>11}")
    print(f"server peak RSS (VmHWM): {server_kib / 1024 if server_kib else float('nan'):.0f} MiB")
    print(f"client peak RSS (ru_maxrss): {client_kib / 1024:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
