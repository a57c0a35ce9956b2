"""The stack on PostgreSQL: `lakeloop demo` with the Prefect server and the MLflow server on a
real PostgreSQL (fresh databases, dropped afterwards) instead of SQLite, through a training that
a lakeFS merge triggers. The database password must not leak into the state folder.

Runs when LAKELOOP_TEST_POSTGRES_URL names a server whose user may create databases, for example
postgresql://postgres@127.0.0.1:5432/postgres; skipped otherwise."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.e2e.test_loop import Workspace, workspace  # noqa: F401 - the e2e stack, reused

POSTGRES_URL = os.environ.get("LAKELOOP_TEST_POSTGRES_URL")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not POSTGRES_URL,
        reason="LAKELOOP_TEST_POSTGRES_URL is not set "
        "(e.g. postgresql://postgres@127.0.0.1:5432/postgres)",
    ),
]


def _with_database(url: str, database: str, *, password: str, scheme: str) -> str:
    """``url`` pointing at ``database``, with a password (a throwaway one when the server trusts
    the user: it is then ignored, and still must not leak)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    secret = parts.password or password
    netloc = f"{user}:{secret}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit((scheme, netloc, f"/{database}", parts.query, ""))


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """Two fresh databases (Prefect's, MLflow's) and their URLs; dropped at the end."""
    assert POSTGRES_URL is not None
    run = secrets.token_hex(4)
    names = {"prefect": f"lakeloop_test_{run}_prefect", "mlflow": f"lakeloop_test_{run}_mlflow"}
    # CREATE/DROP DATABASE cannot run in a transaction.
    admin = psycopg.connect(POSTGRES_URL, autocommit=True)
    password = f"pg-{secrets.token_hex(12)}"
    try:
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'CREATE DATABASE "{name}"')
        yield {
            "password": urlsplit(POSTGRES_URL).password or password,
            "prefect": _with_database(
                POSTGRES_URL, names["prefect"], password=password, scheme="postgresql+asyncpg"
            ),
            "mlflow": _with_database(
                POSTGRES_URL, names["mlflow"], password=password, scheme="postgresql"
            ),
        }
    finally:
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


def test_a_triggered_training_runs_on_prefect_and_mlflow_backed_by_postgresql(
    workspace: Workspace,  # noqa: F811 - the imported fixture
    databases: dict[str, str],
) -> None:
    workspace.env["LAKELOOP_PREFECT__DATABASE_URL"] = databases["prefect"]
    workspace.env["LAKELOOP_MLFLOW__BACKEND_STORE_URI"] = databases["mlflow"]
    demo = workspace.run("demo", "--rows", "2000")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "predictions from housing-price v1" in demo.stdout

    # The run, the model and the trigger's flow run are in PostgreSQL ...
    mlflow_db = databases["mlflow"]
    prefect_db = databases["prefect"].replace("postgresql+asyncpg", "postgresql")
    runs = _query(
        prefect_db,
        "SELECT flow_run.name, flow_run.state_type, flow_run.parameters->>'reason' "
        "FROM flow_run WHERE flow_run.name LIKE 'train-%' ORDER BY flow_run.created",
    )
    versions = _query(
        mlflow_db,
        "SELECT v.version, t.value FROM model_versions v LEFT JOIN model_version_tags t "
        "ON t.name = v.name AND t.version = v.version AND t.key = 'lakefs.commit_id' "
        "ORDER BY v.version",
    )
    assert _query(mlflow_db, "SELECT name FROM registered_models") == [("housing-price",)]
    # Other runs may follow (a drift-triggered retrain, say): the merge's own run is the one.
    [(run_name, state)] = [
        (name, state) for name, state, reason in runs if reason == "lakefs.post-merge"
    ]
    assert state == "COMPLETED", runs
    first_version, trained_commit = versions[0]
    assert first_version == 1, versions
    assert str(trained_commit).startswith(run_name.removeprefix("train-")), (runs, versions)
    # ... and nothing in the SQLite files the state folder would otherwise hold.
    state = workspace.settings.state_dir
    assert not (state / "prefect" / "prefect.db").exists()
    assert not (state / "mlflow" / "mlflow.db").exists()

    # The password is in no log, record or other text file the stack wrote.
    password = databases["password"]
    for path in state.rglob("*"):
        if path.is_file() and path.suffix in {".log", ".json", ".txt", ".yaml", ""}:
            assert password not in path.read_text(errors="replace"), path
    assert password not in demo.stdout + demo.stderr
