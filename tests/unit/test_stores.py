"""The object store every store writes through, on a local folder (the default), and the one
setting that moves it to an object store (tests/integration/test_object_store.py runs S3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakeloop.settings import Settings, load_settings
from lakeloop.stores.objects import ObjectStore, write_atomically
from tests.utils.store_listing import check_ranges_and_columns


def test_the_default_store_is_the_state_folder(settings: Settings) -> None:
    store = settings.object_store
    assert store.local
    assert Path(store.root) == settings.state_dir
    assert Path(settings.monitoring_store.root) == settings.state_dir / "monitoring"
    assert store.put("predictions/a.parquet", b"x") == str(
        settings.state_dir / "predictions" / "a.parquet"
    )


def test_a_local_write_replaces_the_whole_object_and_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    store = ObjectStore.folder(tmp_path / "store")
    assert store.list_keys() == []  # no folder yet: nothing, not an error
    store.put("history/2.json", b"second")
    store.put("history/1.json", b"first")
    store.put("history/1.json", b"first, again")
    assert store.list_keys() == ["history/1.json", "history/2.json"]
    assert store.get("history/1.json") == b"first, again"
    assert sorted(path.name for path in (tmp_path / "store" / "history").iterdir()) == [
        "1.json",
        "2.json",
    ]
    store.delete("history/2.json")
    store.delete("history/2.json")
    assert store.list_keys("history") == ["history/1.json"]


def test_a_failed_local_write_keeps_the_old_object_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "r.html"
    target.mkdir(parents=True)  # a folder where the file should go: the rename fails
    (target / "keep").write_text("old")
    with pytest.raises(IsADirectoryError):
        write_atomically(target, b"new")
    assert (target / "keep").read_text() == "old"
    assert [path.name for path in target.parent.iterdir()] == ["r.html"]  # no partial file


def test_an_object_being_written_is_not_listed(tmp_path: Path) -> None:
    store = ObjectStore.folder(tmp_path)
    store.put("predictions/a.parquet", b"x")
    (tmp_path / "predictions" / ".b.parquet.1a2b3c4d.tmp").write_bytes(b"half")
    assert store.list_keys() == ["predictions/a.parquet"]


def test_a_local_folder_lists_a_range_of_names_and_reads_columns(tmp_path: Path) -> None:
    """As S3 does (tests/integration/test_object_store.py runs the same check on it)."""
    check_ranges_and_columns(ObjectStore.folder(tmp_path / "store"))


def test_a_store_url_it_cannot_use_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="not a gs:// URL"):
        load_settings(store={"url": "gs://bucket/prefix"})
    with pytest.raises(ValueError, match="names no bucket"):
        load_settings(store={"url": "s3:///prefix"})
    with pytest.raises(ValueError, match="holds credentials") as refused:
        load_settings(store={"url": "s3://AKIA:hunter2-secret@bucket/prefix"})
    assert "hunter2" not in str(refused.value)
    with pytest.raises(ValueError, match="ENDPOINT_URL must be an http"):
        load_settings(store={"url": "s3://bucket", "endpoint_url": "minio:9000"})


def test_an_s3_url_selects_the_object_store(settings: Settings) -> None:
    moved = settings.model_copy(
        update={"store": load_settings(store={"url": "s3://bucket/loop/"}).store}
    )
    store = moved.object_store
    assert not store.local
    assert store.url == "s3://bucket/loop"
    assert (
        moved.monitoring_store.url_of("history/x.json")
        == "s3://bucket/loop/monitoring/history/x.json"
    )


def test_a_folder_is_copied_into_the_store_unless_it_is_already_there(tmp_path: Path) -> None:
    built = tmp_path / "state" / "validation" / "c0ffee"
    (built / "data_docs").mkdir(parents=True)
    (built / "validation.json").write_text("{}")
    (built / "data_docs" / "index.html").write_text("<html></html>")
    ObjectStore.folder(built).put_folder(built)  # the local default: the report is in place
    assert sorted(path.name for path in built.rglob("*")) == [
        "data_docs",
        "index.html",
        "validation.json",
    ]
    elsewhere = ObjectStore.folder(tmp_path / "bucket").child("validation/c0ffee")
    elsewhere.put_folder(built)
    assert elsewhere.list_keys() == ["data_docs/index.html", "validation.json"]
    assert elsewhere.get("data_docs/index.html") == b"<html></html>"
