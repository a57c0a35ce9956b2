"""Run the lakeFS-compatible local server.

``python -m lakefs_local --host 127.0.0.1 --port 8001 --data-dir PATH``; the access key
pair comes from ``LAKEFS_LOCAL_ACCESS_KEY_ID`` and ``LAKEFS_LOCAL_SECRET_ACCESS_KEY``.

``s3://`` repositories keep their bytes in S3 (and clients get presigned URLs) when
``LAKEFS_BLOCKSTORE_TYPE=s3`` or ``LAKEFS_BLOCKSTORE_S3_ENDPOINT`` is set; the variables are the
ones real lakeFS reads: ``LAKEFS_BLOCKSTORE_S3_ENDPOINT`` (MinIO, moto; unset: AWS),
``LAKEFS_BLOCKSTORE_S3_REGION``, ``LAKEFS_BLOCKSTORE_S3_FORCE_PATH_STYLE`` (default true here) and
``LAKEFS_BLOCKSTORE_S3_CREDENTIALS_ACCESS_KEY_ID`` / ``..._SECRET_ACCESS_KEY`` (unset: boto3's
own chain, ``AWS_ACCESS_KEY_ID`` and the rest).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from lakefs_local.actions import DEFAULT_ENV_PREFIX
from lakefs_local.blockstore import S3Settings
from lakefs_local.server import TIMING_ENV, create_app
from lakeloop.serving import configure_logging, serve

KEY_ID_ENV = "LAKEFS_LOCAL_ACCESS_KEY_ID"
SECRET_ENV = "LAKEFS_LOCAL_SECRET_ACCESS_KEY"  # noqa: S105 (a variable name, not a secret)
# Same variable real lakeFS reads for actions.env.prefix.
ACTIONS_PREFIX_ENV = "LAKEFS_ACTIONS_ENV_PREFIX"
# lakeFS's blockstore.* settings, under the names lakeFS reads them from its environment.
BLOCKSTORE_TYPE_ENV = "LAKEFS_BLOCKSTORE_TYPE"
S3_ENV_PREFIX = "LAKEFS_BLOCKSTORE_S3_"
# Benchmarks only: cProfile the whole server (main thread) and write the stats here on exit.
PROFILE_ENV = "LAKEFS_LOCAL_PROFILE"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m lakefs_local", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding all data")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def s3_settings(environ: Mapping[str, str]) -> S3Settings | None:
    """The S3 block store the environment asks for, or None for local storage only; raise
    ValueError for a block store type this server does not have."""
    kind = environ.get(BLOCKSTORE_TYPE_ENV, "").strip().lower()
    endpoint = environ.get(f"{S3_ENV_PREFIX}ENDPOINT") or None
    if kind not in {"", "local", "s3"}:
        raise ValueError(f"{BLOCKSTORE_TYPE_ENV}={kind!r}: this server has local and s3 only")
    if kind != "s3" and not (kind == "" and endpoint):
        return None
    path_style = environ.get(f"{S3_ENV_PREFIX}FORCE_PATH_STYLE", "true").strip().lower()
    return S3Settings(
        endpoint=endpoint,
        region=environ.get(f"{S3_ENV_PREFIX}REGION") or S3Settings.region,
        force_path_style=path_style not in {"false", "0", "no"},
        access_key_id=environ.get(f"{S3_ENV_PREFIX}CREDENTIALS_ACCESS_KEY_ID") or None,
        secret_access_key=environ.get(f"{S3_ENV_PREFIX}CREDENTIALS_SECRET_ACCESS_KEY") or None,
    )


def main(argv: list[str] | None = None) -> int:
    """Start the server; refuse without credentials."""
    args = parse_args(argv)
    configure_logging(args.log_level)
    key_id, secret = os.environ.get(KEY_ID_ENV, ""), os.environ.get(SECRET_ENV, "")
    if not key_id or not secret:
        print(
            f"lakefs_local: set {KEY_ID_ENV} and {SECRET_ENV} to start the server", file=sys.stderr
        )
        return 2
    try:
        blockstore_s3 = s3_settings(os.environ)
    except ValueError as exc:
        print(f"lakefs_local: {exc}", file=sys.stderr)
        return 2
    app = create_app(
        data_dir=args.data_dir,
        access_key_id=key_id,
        secret_access_key=secret,
        actions_env_prefix=os.environ.get(ACTIONS_PREFIX_ENV, DEFAULT_ENV_PREFIX),
        upload_timing=bool(os.environ.get(TIMING_ENV)),
        blockstore_s3=blockstore_s3,
    )
    profile_path = os.environ.get(PROFILE_ENV)
    profiler = cProfile.Profile() if profile_path else None
    if profiler:
        # uvicorn re-raises SIGTERM after its shutdown; turn it into SystemExit so the stats
        # below are written instead of the process dying on the default handler.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        profiler.enable()
    try:
        # Our middleware logs each request without credentials; uvicorn's would duplicate it.
        serve(app, host=args.host, port=args.port, level=args.log_level, access_log=False)
    finally:
        if profiler and profile_path:
            profiler.disable()
            profiler.dump_stats(profile_path)  # read with: python -m pstats PATH
    return 0


if __name__ == "__main__":
    sys.exit(main())
