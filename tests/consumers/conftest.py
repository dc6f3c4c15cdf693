"""Fixtures for consumer tests."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.conftest import connect


@pytest.fixture
async def open_socket():
    """Open sockets through the real routing; each is disconnected at teardown, pass or fail."""
    opened = []

    async def open_(*, headers=None):
        communicator, hello = await connect(headers=headers)
        opened.append(communicator)
        return communicator, hello

    yield open_
    for communicator in opened:
        # A socket a failed receive already cancelled has nothing left to close.
        with contextlib.suppress(asyncio.CancelledError):
            await communicator.disconnect()
