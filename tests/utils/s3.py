"""A real S3-compatible server on loopback: moto's standalone server (``python -m moto.server``),
spoken to over HTTP by s3fs and boto3 exactly as they speak to AWS or MinIO."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.utils.net import free_port
from tests.utils.waiting import DEADLINE_SECONDS, eventually_value

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "lakeloop-test-key",
    "AWS_SECRET_ACCESS_KEY": "lakeloop-test-secret-" + "s" * 16,
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""What the clients sign with; moto accepts any key."""


@contextmanager
def moto_server(log_folder: Path, *, timeout: float = DEADLINE_SECONDS) -> Iterator[str]:
    """Run moto's server on a free loopback port until the block ends; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_folder.mkdir(parents=True, exist_ok=True)
    with (log_folder / "moto.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_up(endpoint, process, timeout=timeout)
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(endpoint: str, process: subprocess.Popen[bytes], *, timeout: float) -> None:
    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode} while starting")
        return httpx.get(f"{endpoint}/moto-api/", timeout=2).status_code < 500

    eventually_value(
        answers,
        what=f"moto_server answering on {endpoint}",
        timeout=timeout,
        tolerate=(httpx.HTTPError,),
    )


def create_bucket(endpoint: str, name: str) -> None:
    """Create a bucket on the server (as an operator would, before any pod writes to it)."""
    import boto3  # noqa: PLC0415 - only the tests that run an S3 server need it

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)


def object_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix`` in ``bucket``, listed by the server itself (not through s3fs)."""
    import boto3  # noqa: PLC0415

    pages = boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2")
    return [
        item["Key"]
        for page in pages.paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]
