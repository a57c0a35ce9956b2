from __future__ import annotations

import base64
import json
import multiprocessing
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lakeloop.settings import Settings, load_settings


def test_nested_groups_read_from_prefixed_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKELOOP_LAKEFS__ENDPOINT", "http://lakefs.internal:8000")
    monkeypatch.setenv("LAKELOOP_API__PORT", "9123")
    loaded = load_settings()
    assert loaded.lakefs_endpoint == "http://lakefs.internal:8000"
    assert loaded.api.port == 9123
    assert loaded.api_url == "http://127.0.0.1:9123"


def test_services_bind_loopback_by_default(settings: Settings) -> None:
    assert settings.api.host == "127.0.0.1"
    assert settings.gateway.host == "127.0.0.1"
    assert settings.prefect_api_url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize(
    "variable", ["LAKELOOP_GATEWAY__WEBHOOK_SECRET", "LAKELOOP_LAKEFS__SECRET_ACCESS_KEY"]
)
def test_placeholder_secret_is_refused_naming_the_variable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "changeme")
    with pytest.raises(ValidationError, match=variable):
        load_settings()


def test_generated_secret_is_stable_private_and_not_in_repr(settings: Settings) -> None:
    secret = settings.webhook_secret()
    # 32 random bytes (256 bits), URL-safe base64 without padding: 43 characters.
    assert len(secret) == 43
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert load_settings(state_dir=settings.state_dir).webhook_secret() == secret
    path: Path = settings.state_dir / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret not in repr(settings)


def _create_secret(state_dir: Path, name: str, start: Any) -> None:
    start.wait()
    load_settings(state_dir=state_dir).stored_secret(name)


def test_secrets_created_at_once_by_the_stacks_processes_are_all_kept(
    settings: Settings,
) -> None:
    """`lakeloop up` starts its processes together and each may create a secret: none is lost
    to another's write (a lost one would be generated again, different, and a token the API
    checks would no longer be the one the command line sends)."""
    context = multiprocessing.get_context("spawn")
    names = [f"secret-{number}" for number in range(12)]
    start = context.Barrier(len(names))
    workers = [
        context.Process(target=_create_secret, args=(settings.state_dir, name, start))
        for name in names
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * len(names)
    stored = json.loads((settings.state_dir / "secrets.json").read_text())
    assert sorted(stored) == sorted(names)


def test_configured_secret_wins_and_is_masked(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKELOOP_GATEWAY__WEBHOOK_SECRET", "a-real-secret-value-0123456789")
    loaded = load_settings()
    assert loaded.webhook_secret() == "a-real-secret-value-0123456789"
    assert "a-real-secret-value" not in repr(loaded)


def test_invalid_port_is_rejected(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKELOOP_API__PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        load_settings()
