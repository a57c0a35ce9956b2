"""lakeFS I/O through the official SDK into the local server, against plain file I/O.

``python -m benchmarks.lakefs_io``: writes Parquet batches of 1,000,000 and 5,000,000 rows (the
larger one so per-request costs do not dominate), starts the local server as a subprocess on the
same disk, and for each batch prints (best of ``REPEAT``):

* plain copy + fsync — ``shutil.copyfile`` then ``fsync``: what the server's write path must beat
  (it also fsyncs the blob before the metadata row that names it);
* ingest ``_upload_file`` — the product's upload path (``lakeloop.lakefs_client._upload_file``,
  the file streamed as the request body);
* SDK ``upload(data=bytes)`` — the SDK's one-call upload of bytes already in memory;
* plain read — ``open().read()`` of the fsync'd copy, and SDK ``reader().read()`` of the
  uploaded object at a commit id; both files were just written, so both are served from the page
  cache ("warm") — then again with both dropped from the page cache first
  (``posix_fadvise(DONTNEED)``, "cold"), so each pair compares like with like;
* ratio — plain seconds / SDK seconds (1.0 = as fast as plain file I/O; the goal is >= 0.5).

Peak memory: the client's ``ru_maxrss`` right after the ingest uploads (before the benchmark
itself loads any batch into memory for ``upload(data=bytes)``) and at the end; the server's VmHWM.
Set ``LAKEFS_LOCAL_TIMING=1`` to have the server log each upload's phases (receive, hash+write,
fsync+rename, staging row) to ``lakefs-server.log`` in the working directory, and
``LAKEFS_LOCAL_PROFILE=path.prof`` to cProfile the server (see ``lakefs_local``).
"""

from __future__ import annotations

import hashlib
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

from lakefs_local.testing import LocalServerProcess
from lakeloop.ingest import SourceTable
from lakeloop.lakefs_client import _upload_file

ROW_COUNTS = (1_000_000, 5_000_000)
REPEAT = 3
Row = tuple[str, float, float | None]  # label, MB/s, plain/SDK ratio


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _best(action: Callable[[], object], before: Callable[[], object] | None = None) -> float:
    """Fastest of ``REPEAT`` runs; ``before`` (untimed) runs ahead of each."""
    times = []
    for _ in range(REPEAT):
        if before is not None:
            before()
        times.append(_timed(action))
    return min(times)


def _copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with target.open("rb+") as handle:
        os.fsync(handle.fileno())


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read()


def _drop_cache(*paths: Path) -> None:
    """Evict files (clean after their fsync) from the page cache, so the next read hits disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _write_batch(directory: Path, rows: int) -> Path:
    """Generate a batch in a child process, so the client's peak RSS measures the upload only."""
    target = directory / f"batch-{rows}.parquet"
    code = (
        "import sys; from tooling.market import generate_batch; "
        f"generate_batch(rows={rows}, seed=1).to_parquet(sys.argv[1], index=False)"
    )
    subprocess.run([sys.executable, "-c", code, str(target)], check=True)
    return target


def _table(path: Path) -> SourceTable:
    return SourceTable(path=path, rows=0, columns=(), size=path.stat().st_size, sha256="")


def _mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def main() -> int:
    """Run the benchmark and print its tables."""
    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        sources = [_write_batch(root, rows) for rows in ROW_COUNTS]
        log = Path("lakefs-server.log") if os.environ.get("LAKEFS_LOCAL_TIMING") else None
        server = LocalServerProcess(root / "lakefs", extra_env=_server_env(), log_path=log)
        server.start()
        try:
            client = lakefs.Client(host=server.url, username=server.key_id, password=server.secret)
            repo = lakefs.Repository("bench", client=client).create(storage_namespace="local://b")
            branch = repo.branch("main")
            # The product path first, for every size, before anything loads a whole batch here.
            ingest = {source: _measure_ingest(branch, source) for source in sources}
            client_after_ingest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
            server_after_ingest = server.peak_rss_kib()
            for source, (ingest_s, copy_s) in ingest.items():
                rows = _measure_rest(repo, root / "lakefs", source, ingest_s, copy_s)
                _print_table(source, rows)
            server_peak = server.peak_rss_kib()
        finally:
            server.stop()
    client_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"\nclient peak RSS (ru_maxrss): {client_after_ingest / 1024:.0f} MiB after the ingest "
        f"uploads of every size, {client_peak / 1024:.0f} MiB at the end (the benchmark then "
        "holds a whole batch in memory for upload(data=bytes) and reader().read())"
    )
    print(
        f"server peak RSS (VmHWM): {_mib(server_after_ingest)} MiB after the ingest uploads, "
        f"{_mib(server_peak)} MiB at the end"
    )
    return 0


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.0f}" if kib else "?"


def _server_env() -> dict[str, str]:
    names = ("LAKEFS_LOCAL_PROFILE", "LAKEFS_LOCAL_TIMING")
    return {name: os.environ[name] for name in names if os.environ.get(name)}


def _measure_ingest(branch: lakefs.Branch, source: Path) -> tuple[float, float]:
    """(seconds of the product's upload, seconds of a plain copy + fsync), each best of N."""
    copy_target = source.with_suffix(".copy")
    copy_s = _best(lambda: _copy(source, copy_target))
    table = _table(source)
    ingest_s = _best(lambda: _upload_file(branch.object(f"ingest/{source.name}"), table, None))
    return ingest_s, copy_s


def _measure_rest(
    repo: lakefs.Repository, data_dir: Path, source: Path, ingest_s: float, copy_s: float
) -> list[Row]:
    branch = repo.branch("main")
    data = source.read_bytes()
    size = len(data)
    path = f"bytes/{source.name}"
    bytes_s = _best(lambda: branch.object(path).upload(data=data, mode="wb"))
    commit_id = branch.commit(message=f"bench {source.name}").get_commit().id
    reader = repo.ref(commit_id).object(path)
    assert reader.reader(mode="rb").read() == data, "read-back differs from the source"
    blob = data_dir / "objects" / (digest := hashlib.sha256(data).hexdigest())[:2] / digest[2:]
    copy = source.with_suffix(".copy")
    plain_warm = _best(lambda: _read(copy))
    sdk_warm = _best(lambda: reader.reader(mode="rb").read())
    plain_cold = _best(lambda: _read(copy), before=lambda: _drop_cache(copy))
    cold_sdk = _best(lambda: reader.reader(mode="rb").read(), before=lambda: _drop_cache(blob))
    return [
        ("plain copy + fsync", _mbps(size, copy_s), None),
        ("ingest _upload_file (product path)", _mbps(size, ingest_s), copy_s / ingest_s),
        ("SDK upload(data=bytes)", _mbps(size, bytes_s), copy_s / bytes_s),
        ("plain open().read(), warm page cache", _mbps(size, plain_warm), None),
        ("SDK reader().read() at commit, warm", _mbps(size, sdk_warm), plain_warm / sdk_warm),
        ("plain open().read(), cold (fadvise)", _mbps(size, plain_cold), None),
        ("SDK reader().read() at commit, cold", _mbps(size, cold_sdk), plain_cold / cold_sdk),
    ]


def _print_table(source: Path, rows: list[Row]) -> None:
    size = source.stat().st_size
    print(f"\n{source.stem}: {size / 1e6:.1f} MB (best of {REPEAT} per figure)")
    print(f"{'operation':<42}{'MB/s':>10}{'ratio':>8}  (ratio = plain time / SDK time)")
    for name, value, ratio in rows:
        shown = "" if ratio is None else f"{ratio:.2f}"
        print(f"{name:<42}{value:>10.1f}{shown:>8}")


if __name__ == "__main__":
    sys.exit(main())
