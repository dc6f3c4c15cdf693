"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.db import connections

from chatproject.asgi import application

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip on a laptop that lacks a service; in CI a missing service is a failure."""
    if IN_CI or os.environ.get("CHAT_TESTS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (CI requires every service; see .ci/run)", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config, items):
    """Run the browser tests last.

    Sync Playwright's event loop counts as running in this thread while a browser is
    open; if a browser test fails before its module's browser closes, every async test
    after it errors as well, and the one real failure is hard to find among them.
    """
    browser = [item for item in items if "/tests/browser/" in str(item.path)]
    items[:] = [item for item in items if item not in browser] + browser


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory) -> Path:
    """An SQLite file with every migration applied, copied by each server a test starts."""
    from tests.integration.servers import run_manage, server_env

    database = tmp_path_factory.mktemp("template") / "db.sqlite3"
    # --skip-checks: chat.E001 (no REDIS_URL with DEBUG off) is exactly this single-process setup.
    result = run_manage("migrate", "--noinput", "--skip-checks", env=server_env(database))
    assert result.returncode == 0, result.stdout + result.stderr
    return database


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Many tests make users; the production hasher is slow on purpose."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
async def fresh_channel_layer():
    """Each test starts with an empty in-memory layer and closes its database threads."""
    layer = channel_layers["default"]
    if hasattr(layer, "flush"):
        await layer.flush()
    yield
    await sync_to_async(connections.close_all)()


async def connect(path: str = "/ws/chat/", *, headers=None) -> tuple[WebsocketCommunicator, dict]:
    """Open a socket through the real routing and return it with its `Connected` message."""
    communicator = WebsocketCommunicator(application, path, headers=headers or [])
    connected, _ = await communicator.connect()
    assert connected
    hello = await communicator.receive_json_from()
    return communicator, hello
