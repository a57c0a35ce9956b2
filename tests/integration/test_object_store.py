"""The stores on an object store, switched by one setting (``LAKELOOP_STORE__URL=s3://...``),
against a real S3-compatible server on loopback (moto's server): the real API process logs
predictions and feedback to the bucket, the monitor's window reads them back, and the monitor
history one pod wrote starts the cooldown of the next pod, whose own folder starts empty."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import s3fs

from lakeloop import loop
from lakeloop.dataset import DatasetSpec, load_spec
from lakeloop.model import TrainedModel
from lakeloop.settings import DriftPolicy, Settings, load_settings
from monitoring.reference import cached_reference
from monitoring.store import read_history
from monitoring.window import champion_window
from tests.utils.api_server import start_api_with_champion
from tests.utils.monitor import check
from tests.utils.net import free_port
from tests.utils.s3 import CREDENTIALS, create_bucket, moto_server, object_keys
from tests.utils.store_listing import check_ranges_and_columns
from tests.utils.workspace import Workspace
from tooling import market
from tooling.stack import Stack

pytestmark = pytest.mark.integration

BUCKET = "lakeloop-stores"
PREFIX = "loop"
ADMIN_TOKEN = "object-store-" + "t" * 24


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's server with an empty bucket; the AWS credentials in the environment, as a pod's
    secret would put them there (the API process inherits them)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("LAKELOOP_")]:
            patch.delenv(name)
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        with moto_server(tmp_path_factory.mktemp("moto")) as url:
            create_bucket(url, BUCKET)
            yield url


def pod_settings(folder: Path, endpoint: str, **overrides: object) -> Settings:
    """The settings of one pod: its own (empty) state folder, the stores in the bucket."""
    return load_settings(
        state_dir=folder / "state",
        store={"url": f"s3://{BUCKET}/{PREFIX}", "endpoint_url": endpoint},
        **overrides,
    )


def test_the_store_speaks_s3(endpoint: str, tmp_path: Path) -> None:
    settings = pod_settings(tmp_path, endpoint)
    store = settings.object_store.child("scratch")
    assert not store.local
    assert store.list_keys() == []
    assert store.put("b/2.txt", b"two") == f"s3://{BUCKET}/{PREFIX}/scratch/b/2.txt"
    store.put("b/1.txt", b"one")
    store.put("a.txt", b"first")
    store.put("a.txt", b"replaced")
    assert store.list_keys() == ["a.txt", "b/1.txt", "b/2.txt"]
    assert store.list_keys("b") == ["b/1.txt", "b/2.txt"]
    assert store.get("a.txt") == b"replaced"
    with store.local_copy("b/2.txt") as copy:
        assert copy.read_bytes() == b"two"
    assert not copy.exists()  # a temporary copy, gone afterwards
    store.delete("a.txt")
    store.delete("a.txt")  # deleting twice is no error
    assert not store.exists("a.txt")
    with pytest.raises(FileNotFoundError):
        store.get("a.txt")
    assert object_keys(endpoint, BUCKET, f"{PREFIX}/scratch/") == [
        f"{PREFIX}/scratch/b/1.txt",
        f"{PREFIX}/scratch/b/2.txt",
    ]
    assert not settings.state_dir.exists()  # nothing went to the local folder


def test_s3_lists_a_range_of_names_and_reads_columns_as_a_folder_does(
    endpoint: str, tmp_path: Path
) -> None:
    """A range is asked of the server (``StartAfter``), not filtered from the whole listing;
    the answer is the local folder's (tests/unit/test_stores.py)."""
    check_ranges_and_columns(pod_settings(tmp_path, endpoint).object_store.child("ranges"))


def test_the_api_logs_to_the_bucket_and_the_window_reads_it_back(
    endpoint: str, tmp_path: Path
) -> None:
    spec = load_spec()
    settings = pod_settings(
        tmp_path,
        endpoint,
        mlflow={"port": free_port()},
        api={"port": free_port(), "admin_token": ADMIN_TOKEN, "log_flush_seconds": 1.0},
    )
    env = {  # what differs from the defaults; the stack passes the store and the state folder
        "LAKELOOP_API__PORT": str(settings.api.port),
        "LAKELOOP_MLFLOW__PORT": str(settings.mlflow.port),
        "LAKELOOP_API__ADMIN_TOKEN": ADMIN_TOKEN,
        "LAKELOOP_API__LOG_FLUSH_SECONDS": "1",
    }
    stack = Stack(settings)
    try:
        start_api_with_champion(stack, spec, env=env)
        sales = market.generate_batch(rows=40, seed=12)
        since = datetime.now(UTC) - timedelta(seconds=1)
        _, ids, version = loop.send_traffic(
            settings, loop.json_records(sales[spec.feature_names]), batch=15
        )
        prices = sales[spec.target.name].tolist()[:25]
        loop.report_prices(settings, ids[:25], prices)
        loop.wait_for_logged(
            settings, model_version=version, since=since, rows=40, feedback_rows=25
        )
    finally:
        stack.down()

    # A fresh reader (the monitor's pod) finds both logs in the bucket ...
    s3fs.S3FileSystem.clear_instance_cache()
    monitor = pod_settings(tmp_path / "monitor", endpoint)
    frame, window = champion_window(monitor.object_store, spec, model_version=version, rows=100)
    assert window.rows == 40
    assert sorted(frame["prediction_id"]) == sorted(ids)
    priced = frame.set_index("prediction_id")[spec.target.name]
    assert priced.loc[ids[:25]].tolist() == pytest.approx(prices)
    assert priced.loc[ids[25:]].isna().all()
    # ... as Parquet segments the server itself lists, and none in the API's local folder.
    assert object_keys(endpoint, BUCKET, f"{PREFIX}/predictions/")
    assert object_keys(endpoint, BUCKET, f"{PREFIX}/feedback/")
    assert not (settings.state_dir / "predictions").exists()
    assert not (settings.state_dir / "feedback").exists()


def test_the_cooldown_survives_a_new_pod(
    endpoint: str,
    tmp_path: Path,
    spec: DatasetSpec,
    market_batch: pd.DataFrame,
    tiny_model: TrainedModel,
) -> None:
    def predicted(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(prediction=tiny_model.pipeline.predict(frame[spec.feature_names]))

    scenario = market.Scenario(income_multiplier=1.5, new_region_share=0.5)
    shifted = predicted(market.generate_batch(rows=2000, seed=104, scenario=scenario))
    policy = DriftPolicy(cooldown=timedelta(hours=1))
    now = datetime.now(UTC)

    def monitor_run(settings: Settings, *, window_id: str, at: datetime) -> str:
        store = settings.monitoring_store
        reference = cached_reference(
            store, model_version="1", build=lambda: predicted(market_batch)
        )
        result = check(
            shifted, reference, spec=spec, store=store, window_id=window_id, now=at, policy=policy
        )
        assert result.report_path.startswith(f"s3://{BUCKET}/{PREFIX}/monitoring/reports/")
        return result.entry.decision.reason

    first_pod = pod_settings(tmp_path / "first", endpoint)
    assert "in cooldown" not in monitor_run(first_pod, window_id="w1", at=now)
    (first,) = read_history(first_pod.monitoring_store)
    assert first.decision.retrain

    # The pod is gone with its folder; the next one starts with an empty one and a new client.
    s3fs.S3FileSystem.clear_instance_cache()
    next_pod = pod_settings(tmp_path / "next", endpoint)
    reason = monitor_run(next_pod, window_id="w2", at=now + timedelta(minutes=10))
    assert "in cooldown" in reason
    assert [entry.window.id for entry in read_history(next_pod.monitoring_store)] == ["w1", "w2"]
    assert not (next_pod.state_dir / "monitoring").exists()

    # A process started from nothing but the environment reads the same history.
    cli = pod_settings(tmp_path / "cli", endpoint)
    cli.state_dir.mkdir(parents=True)
    env = {
        **os.environ,
        "LAKELOOP_STATE_DIR": str(cli.state_dir),
        "LAKELOOP_STORE__URL": f"s3://{BUCKET}/{PREFIX}",
        "LAKELOOP_STORE__ENDPOINT_URL": endpoint,
    }
    reported = Workspace(cli, env, ports={}).run("report", timeout=120)
    assert reported.returncode == 0, reported.stderr
    printed = reported.stdout
    assert "window=w1" in printed
    assert "RETRAIN" in printed
    assert "in cooldown" in " ".join(printed.split())
    assert f"s3://{BUCKET}/{PREFIX}/monitoring/reports/" in printed
