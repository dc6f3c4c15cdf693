"""A client that stops reading is closed with 4408 once its backlog passes the limit.

Under `manage.py serve` (uvicorn); the others in its room notice nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from chat.protocol import CloseCode

from .servers import Server, daphne_server, fresh_database, hello, receive

LIMIT = 64 * 1024
MESSAGES = 1500
BODY = "x" * 3000  # 1,500 of these are 4.5 MB: far past the kernel's buffers and the limit


@pytest.fixture(scope="module")
def small_buffer_server(tmp_path_factory, migrated_database) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("slow-reader")
    database = fresh_database(migrated_database, workdir)
    with daphne_server(
        workdir, database, launcher="serve", CHAT_MAX_SEND_BUFFER_BYTES=str(LIMIT), CHAT_RATE_LIMIT="0"
    ) as server:
        yield server


def client_frame(payload: dict) -> bytes:
    """A masked text frame (a client's frames must be masked; a zero mask is valid)."""
    data = json.dumps(payload).encode()
    assert len(data) < 126
    return bytes((0x81, 0x80 | len(data))) + b"\0\0\0\0" + data


def open_raw_socket(server: Server) -> socket.socket:
    """A WebSocket on a plain socket with a tiny receive buffer, so it fills at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def read_frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each server frame until the connection ends."""
    buffer = b""

    def need(size: int) -> bool:
        nonlocal buffer
        while len(buffer) < size:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            buffer += chunk
        return True

    while need(2):
        opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
        header = 2
        if length == 126:
            if not need(4):
                return
            (length,), header = struct.unpack("!H", buffer[2:4]), 4
        elif length == 127:
            if not need(10):
                return
            (length,), header = struct.unpack("!Q", buffer[2:10]), 10
        if not need(header + length):
            return
        yield opcode, buffer[header : header + length]
        buffer = buffer[header + length :]


async def test_a_client_that_stops_reading_is_closed_and_the_others_notice_nothing(small_buffer_server):
    server = small_buffer_server
    slow = await asyncio.to_thread(open_raw_socket, server)
    slow.sendall(client_frame({"type": "join", "room": "busy"}))
    async with connect(server.ws_url) as talker, connect(server.ws_url) as listener:
        for socket_ in (talker, listener):
            await hello(socket_)
            await socket_.send(json.dumps({"type": "join", "room": "busy"}))
            while (await receive(socket_))["type"] != "joined":
                pass

        async def talk() -> None:
            """Send at the pace the server confirms, as a real client does."""
            for n in range(MESSAGES):
                await talker.send(
                    json.dumps({"type": "room_message", "room": "busy", "data": f"{n} {BODY}", "ref": n})
                )
                while (await receive(talker)).get("ref") != n:
                    pass

        async def listen() -> list[int]:
            seen = []
            while len(seen) < MESSAGES:
                message = await receive(listener, wait=30)
                if message["type"] == "message" and message["kind"] == "room":
                    seen.append(int(message["data"].split()[0]))
            return seen

        sending = asyncio.create_task(talk())
        seen = await listen()
        await sending
        assert seen == list(range(MESSAGES)), "the listener lost or reordered messages"

        started = time.monotonic()
        await listener.send(json.dumps({"type": "echo", "data": "still here"}))
        while (reply := await receive(listener))["kind"] != "echo":
            pass
        assert reply["data"] == "still here" and time.monotonic() - started < 2

    frames = await asyncio.to_thread(lambda: list(read_frames(slow)))
    slow.close()
    room_messages = sum(1 for opcode, data in frames if opcode == 1 and b'"kind":"room"' in data)
    closes = [data for opcode, data in frames if opcode == 8]
    assert closes, f"the slow reader was never closed ({room_messages} messages reached it)"
    code = struct.unpack("!H", closes[0][:2])[0]
    assert code == CloseCode.TOO_SLOW, closes[0]
    assert b"too slow" in closes[0]
    assert room_messages < MESSAGES, "the slow reader was closed only after it had everything"
    assert "stopped reading" in server.output()
