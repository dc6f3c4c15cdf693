"""Fixtures for tests against a real daphne subprocess (see servers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .servers import Server, daphne_server, fresh_database


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
