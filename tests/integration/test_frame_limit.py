"""CHAT_MAX_FRAME_BYTES, enforced by the ASGI server before the application sees a frame."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.conf import settings
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .servers import TIMEOUT, hello, receive

LIMIT = settings.CHAT_MAX_FRAME_BYTES  # 64 KiB by default


def frame_of(size: int, **fields) -> str:
    """A JSON frame of exactly `size` bytes, padded with a field the server ignores."""
    frame = json.dumps({**fields, "pad": ""})
    frame = json.dumps({**fields, "pad": "y" * (size - len(frame.encode()))})
    assert len(frame.encode()) == size
    return frame


async def test_frame_over_the_limit_closes_with_1009(any_server):
    """A frame larger than the limit closes the socket with 1009 (message too big)."""
    async with connect(any_server.ws_url) as socket:
        await hello(socket)
        await socket.send(frame_of(LIMIT + 4096, type="echo", data="too big"))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), TIMEOUT)
    assert closed.value.rcvd is not None, "the server closed the TCP connection without a close frame"
    assert closed.value.rcvd.code == 1009


async def test_frame_under_the_limit_is_served(any_server):
    """A frame just under the limit (60 KiB by default), mostly an ignored field, gets its reply."""
    async with connect(any_server.ws_url) as socket:
        await hello(socket)
        await socket.send(frame_of(LIMIT - 4096, type="echo", data="big", ref=1))
        assert await receive(socket) == {
            "type": "message",
            "kind": "echo",
            "data": "big",
            "count": 1,
            "ref": 1,
        }
        await socket.send(json.dumps({"type": "ping", "id": 2}))
        assert await receive(socket) == {"type": "pong", "id": 2}
