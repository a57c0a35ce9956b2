from __future__ import annotations

import base64
import stat
from pathlib import Path

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
