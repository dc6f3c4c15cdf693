"""The chat as a browser or a script meets it: a real daphne, real sockets, real HTTP."""

from __future__ import annotations

import json
import re

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .servers import Server, hello, receive, session_cookie


def guest_page(server: Server) -> tuple[str, str]:
    """GET / as a new visitor: the session cookie it sets and the guest name it shows."""
    status, headers, body = server.get("/")
    assert status == 200
    match = re.search(r'<strong id="display-name">([^<]+)</strong>', body.decode())
    assert match, body.decode()
    return session_cookie(headers), match.group(1)


def test_health_check_reports_database_and_channel_layer(chat_server):
    """/healthz is 200 JSON with every dependency "ok"."""
    status, headers, body = chat_server.get("/healthz")
    assert status == 200
    assert headers["content-type"] == ["application/json"]
    assert json.loads(body) == {"status": "ok", "database": "ok", "channel_layer": "ok"}


def test_page_serves_the_websocket_client(chat_server):
    """GET / is the chat page, whose script (served by the project itself) opens the socket."""
    status, headers, body = chat_server.get("/")
    page = body.decode()
    assert status == 200 and headers["content-type"][0].startswith("text/html")
    script = re.search(r'<script src="([^"]+/chat\.js)"></script>', page)
    assert script, page
    status, _headers, body = chat_server.get(script.group(1))
    assert status == 200
    assert b"new WebSocket(" in body and b"/ws/chat/" in body


async def test_guest_name_follows_the_session_cookie(chat_server):
    """The socket's user is the guest name the page showed, on every connection of that session."""
    cookie, name = guest_page(chat_server)
    assert re.fullmatch(r"guest-[0-9a-f]{4,}", name), name
    for _ in range(2):
        async with connect(chat_server.ws_url, additional_headers={"Cookie": cookie}) as socket:
            assert (await hello(socket))["user"] == name


async def test_socket_without_cookie_is_a_guest_of_its_own(chat_server):
    """A client with no cookie at all still gets a guest name."""
    async with connect(chat_server.ws_url) as socket:
        assert re.fullmatch(r"guest-[0-9a-f]{4,}", (await hello(socket))["user"])


async def test_echo_reaches_only_the_sender(chat_server):
    async with connect(chat_server.ws_url) as alice, connect(chat_server.ws_url) as bob:
        await hello(alice)
        await hello(bob)
        await alice.send(json.dumps({"type": "echo", "data": "héllo 🚀", "ref": 7}))
        echo = await receive(alice)
        assert echo == {"type": "message", "kind": "echo", "data": "héllo 🚀", "count": 1, "ref": 7}
        await bob.send(json.dumps({"type": "ping", "id": "after-echo"}))
        assert await receive(bob) == {"type": "pong", "id": "after-echo"}


async def test_broadcast_reaches_every_client(chat_server):
    async with connect(chat_server.ws_url) as alice, connect(chat_server.ws_url) as bob:
        await hello(alice)
        bob_name = (await hello(bob))["user"]
        await bob.send(json.dumps({"type": "broadcast", "data": "to all", "ref": "b1"}))
        own, other = await receive(bob), await receive(alice)
        assert own["ref"] == "b1" and "ref" not in other
        for message in (own, other):
            assert message["kind"] == "broadcast" and message["data"] == "to all"
            assert message["sender"] == bob_name and message["count"] == 1
        assert own["id"] == other["id"] > 0


@pytest.mark.parametrize("origin", [None, "http://localhost:{port}", "http://127.0.0.1"])
async def test_allowed_origins_connect(chat_server, origin):
    """No Origin (a script) or an Origin on an allowed host, whatever its port, opens the socket."""
    origin = origin and origin.format(port=chat_server.port)
    async with connect(chat_server.ws_url, origin=origin) as socket:
        await hello(socket)


@pytest.mark.parametrize("origin", ["http://evil.example", "http://localhost.evil.example"])
async def test_foreign_origin_is_refused_at_the_handshake(chat_server, origin):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(chat_server.ws_url, origin=origin):
            pass
    assert refused.value.response.status_code == 403


async def test_bad_frames_get_errors_and_the_socket_stays_open(chat_server):
    """Binary, empty and non-JSON frames, as a real client sends them, are errors, not crashes."""
    async with connect(chat_server.ws_url) as socket:
        await hello(socket)
        for frame in (b"\x00\x01binary", "", "{not json", "[1, 2]"):
            await socket.send(frame)
            error = await receive(socket)
            assert (error["type"], error["code"]) == ("error", "bad_json"), (frame, error)
        await socket.send('{"type": "echo", "data": "\\ud800"}')  # a lone surrogate, escaped
        assert (await receive(socket))["code"] == "invalid"
        await socket.send(json.dumps({"type": "ping", "id": 1}))
        assert await receive(socket) == {"type": "pong", "id": 1}


async def test_disconnect_says_goodbye_and_closes_with_1000(chat_server):
    async with connect(chat_server.ws_url) as socket:
        await hello(socket)
        await socket.send(json.dumps({"type": "echo", "data": "one"}))
        await receive(socket)
        await socket.send(json.dumps({"type": "disconnect", "ref": "bye"}))
        goodbye = await receive(socket)
        assert goodbye == {
            "type": "message",
            "kind": "system",
            "data": "Disconnected",
            "count": 1,
            "ref": "bye",
        }
        with pytest.raises(ConnectionClosed) as closed:
            await receive(socket)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
