"""Fixtures for tests against a real daphne subprocess (see servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import Server, daphne_server, fresh_database, run_manage, server_env


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory) -> Path:
    """An SQLite file with every migration applied, to be copied by each server."""
    database = tmp_path_factory.mktemp("template") / "db.sqlite3"
    # --skip-checks: chat.E001 (no REDIS_URL with DEBUG off) is exactly this single-process setup.
    result = run_manage("migrate", "--noinput", "--skip-checks", env=server_env(database))
    assert result.returncode == 0, result.stdout + result.stderr
    return database


@pytest.fixture(scope="session")
def chat_server(tmp_path_factory, migrated_database) -> Iterator[Server]:
    """The server as production starts it (`manage.py serve`, see the Dockerfile): DEBUG off,
    in-memory layer, SQLite."""
    workdir = tmp_path_factory.mktemp("serve")
    with daphne_server(workdir, fresh_database(migrated_database, workdir), launcher="serve") as server:
        yield server


@pytest.fixture(scope="session")
def runserver_server(tmp_path_factory, migrated_database) -> Iterator[Server]:
    """The server as `make run` starts it: `manage.py runserver` with DEBUG on."""
    workdir = tmp_path_factory.mktemp("runserver")
    database = fresh_database(migrated_database, workdir)
    with daphne_server(workdir, database, launcher="runserver", DEBUG="true") as server:
        yield server


@pytest.fixture(params=["serve", "runserver"])
def any_server(request) -> Server:
    """Each way of starting the server, for behaviour that depends on it."""
    request.node.launcher = request.param
    return request.getfixturevalue("chat_server" if request.param == "serve" else "runserver_server")
