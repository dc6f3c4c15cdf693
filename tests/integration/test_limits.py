"""Abuse limits: rooms per connection, connections per user or session, floods, slow handshakes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from channels.testing import WebsocketCommunicator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chat.consumers import FLOOD_CLOSE_MIN, FLOOD_CLOSE_SECONDS
from chat.ratelimit import ConnectionCounter, SharedConnectionCounter
from chatproject.asgi import application
from tests.conftest import connect as open_communicator
from tests.conftest import skip_or_fail
from tests.consumers.helpers import (
    cookie_header,
    expect_error,
    frame,
    join,
    logged_in_session,
    login_session,
    new_session,
    request,
)

from .servers import (
    TIMEOUT,
    Server,
    cookie_value,
    daphne_server,
    free_port,
    fresh_database,
    hello,
    receive,
    run_manage,
    server_env,
    session_cookie,
)

PASSWORD = "correct-horse-battery-staple"

# --- rooms per connection (in-process, through the real routing) ----------------


@pytest.mark.django_db(transaction=True)
async def test_a_join_beyond_the_room_limit_is_too_many_rooms(settings):
    """The join over CHAT_MAX_ROOMS_PER_CONNECTION is refused; rooms already joined still answer."""
    settings.CHAT_MAX_ROOMS_PER_CONNECTION = 3
    alice, _ = await open_communicator()
    try:
        for room in ("one", "two", "three"):
            await join(alice, room)
        error = await expect_error(alice, frame("join", room="four", ref="r4"), "too_many_rooms")
        assert error["ref"] == "r4" and "leave one" in error["detail"]
        again = await request(alice, frame("join", room="two"))
        assert again["type"] == "joined" and again["rooms"] == ["one", "three", "two"]
        left = await request(alice, frame("leave", room="one"))
        assert left["type"] == "left"
        await join(alice, "four")
        assert await alice.receive_nothing()
    finally:
        await alice.disconnect()


# --- connections per user or session --------------------------------------------


async def refused_with_4429(headers) -> None:
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected  # accepted, so that a browser sees the close code
    closed = await communicator.receive_output()
    assert closed == {"type": "websocket.close", "code": 4429}, closed
    await communicator.wait()


@pytest.mark.django_db(transaction=True)
async def test_a_session_over_its_connection_limit_is_closed_with_4429(settings):
    """The socket over CHAT_MAX_CONNECTIONS_PER_USER is closed at once; closing one frees a place."""
    settings.CHAT_MAX_CONNECTIONS_PER_USER = 2
    headers = cookie_header(await new_session())
    first, _ = await open_communicator(headers=headers)
    second, _ = await open_communicator(headers=headers)
    try:
        await refused_with_4429(headers)
        other, _ = await open_communicator(headers=cookie_header(await new_session()))
        await other.disconnect()
        await first.disconnect()
        third, _ = await open_communicator(headers=headers)
        await third.disconnect()
    finally:
        await second.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_users_sessions_share_one_connection_limit(settings):
    """A logged-in user's sockets count together, whichever session opened them."""
    settings.CHAT_MAX_CONNECTIONS_PER_USER = 2
    first_session = await logged_in_session("alice")
    second_session = await login_session("alice")
    a, _ = await open_communicator(headers=cookie_header(first_session))
    b, _ = await open_communicator(headers=cookie_header(second_session))
    try:
        await refused_with_4429(cookie_header(first_session))
    finally:
        await a.disconnect()
        await b.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_clients_without_a_session_are_not_counted(settings):
    """A client without a cookie is an identity of its own (a per-address limit belongs in the proxy)."""
    settings.CHAT_MAX_CONNECTIONS_PER_USER = 1
    sockets = [(await open_communicator())[0] for _ in range(3)]
    for communicator in sockets:
        await communicator.disconnect()


def test_the_connection_counter_forgets_identities_with_no_sockets():
    counter = ConnectionCounter()
    assert counter.acquire("user:1", 2) and counter.acquire("user:1", 2)
    assert not counter.acquire("user:1", 2)
    counter.release("user:1")
    assert counter.acquire("user:1", 2)
    counter.release("user:1")
    counter.release("user:1")
    assert counter.counts == {}


# --- a flooder next to a normal client, on the production server -----------------


async def drain(socket_, seconds: float) -> list[dict]:
    """Every frame that arrives within `seconds`."""
    frames = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frames.append(await receive(socket_, wait=left))
        except TimeoutError:
            break
    return frames


async def test_a_flooder_is_refused_then_closed_and_the_others_do_not_notice(chat_server):
    """400 room messages at once: the flooder gets `rate_limited`, then a close with 1008; a
    neighbour's echo answers promptly throughout, and the neighbour receives only the flooder's
    messages that were let through and its departure."""
    flood = 400
    async with connect(chat_server.ws_url) as flooder, connect(chat_server.ws_url) as neighbour:
        flooder_name = (await hello(flooder))["user"]
        await hello(neighbour)
        for member in (neighbour, flooder):
            await member.send(json.dumps(frame("join", room="flooded")))
            assert (await receive(member))["type"] == "joined"
        presences = [await receive(neighbour), await receive(neighbour), await receive(flooder)]
        assert {p["type"] for p in presences} == {"presence"}

        started = time.monotonic()
        for n in range(flood):
            await flooder.send(json.dumps(frame("room_message", room="flooded", data=f"spam {n}", ref=n)))

        round_trips, relayed = [], []
        for n in range(10):
            sent = time.monotonic()
            await neighbour.send(json.dumps(frame("echo", data=f"still here {n}", ref=f"e{n}")))
            while True:
                message = await receive(neighbour)
                if message.get("ref") == f"e{n}":
                    break
                relayed.append(message)
            round_trips.append(time.monotonic() - sent)
            await asyncio.sleep(0.05)
        relayed += await drain(neighbour, 0.5)
        elapsed = time.monotonic() - started

        replies = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                replies.append(await receive(flooder))
        assert closed.value.rcvd.code == 1008
        limited = [r for r in replies if r.get("code") == "rate_limited"]
        accepted = [r for r in replies if r.get("type") == "message"]
        assert len(limited) + len(accepted) == len(replies) < flood
        assert len(limited) >= FLOOD_CLOSE_SECONDS * 20  # the default rate
        assert len(accepted) <= 40 + 20 * elapsed + 1
        print(
            f"\nflood: {len(accepted)} accepted, {len(limited)} refused, then 1008; neighbour's echo "
            f"round trips max {max(round_trips) * 1000:.0f} ms"
        )
        # The neighbour: prompt echoes, and nothing but what the limiter let through.
        assert max(round_trips) < 1.0, round_trips
        messages = [m for m in relayed if m["type"] == "message"]
        assert all(m["kind"] == "room" and m["sender"] == flooder_name and "ref" not in m for m in messages)
        assert len(messages) == len(accepted)
        others = [m for m in relayed if m["type"] != "message"]
        assert [(m["type"], m["event"], m["user"]) for m in others] == [("presence", "leave", flooder_name)]


@pytest.mark.django_db(transaction=True)
async def test_a_flood_that_ignores_its_errors_is_closed_with_1008(settings):
    """After FLOOD_CLOSE_MIN refused frames in a row the connection closes, and the rest get no answer."""
    settings.CHAT_RATE_LIMIT = 1  # a burst of two
    alice, _ = await open_communicator()
    for n in range(2 + FLOOD_CLOSE_MIN + 10):
        await alice.send_json_to(frame("ping", id=n))
    answers = [await alice.receive_json_from() for _ in range(2 + FLOOD_CLOSE_MIN)]
    assert [a["type"] for a in answers[:2]] == ["pong", "pong"]
    assert {a.get("code") for a in answers[2:]} == {"rate_limited"}
    assert await alice.receive_output() == {"type": "websocket.close", "code": 1008}
    assert await alice.receive_nothing()
    await alice.disconnect()


# --- slow handshakes and logging out, on a server of their own ----------------------

HANDSHAKE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory, migrated_database) -> Iterator[Server]:
    """`manage.py serve` with a one-second handshake deadline."""
    workdir = tmp_path_factory.mktemp("strict")
    database = fresh_database(migrated_database, workdir)
    with daphne_server(workdir, database, CHAT_HANDSHAKE_TIMEOUT=str(HANDSHAKE_TIMEOUT)) as server:
        yield server


def test_a_handshake_that_never_completes_is_cut_off(strict_server):
    """A client that sends half a request and waits is disconnected after CHAT_HANDSHAKE_TIMEOUT."""
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=TIMEOUT) as raw:
        raw.sendall(b"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        started = time.monotonic()
        assert raw.recv(1024) == b""  # closed by the server, without a response
        waited = time.monotonic() - started
    assert HANDSHAKE_TIMEOUT * 0.8 < waited < HANDSHAKE_TIMEOUT + 2, waited


async def test_the_handshake_deadline_does_not_touch_open_sockets(strict_server):
    """The deadline covers the request only: a socket open for longer goes on."""
    url = f"ws://127.0.0.1:{strict_server.port}/ws/chat/"
    async with connect(url) as client:
        await hello(client)
        await asyncio.sleep(HANDSHAKE_TIMEOUT * 1.5)
        await client.send(json.dumps(frame("echo", data="later")))
        assert (await receive(client))["data"] == "later"


# --- connections per user across processes, in Redis ---------------------------------

REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    """A key prefix of this run's own in the test Redis; its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        client.close()
        skip_or_fail(f"Redis is not running at {REDIS_URL} ({error}); start it or set REDIS_TEST_URL")
    prefix = f"chat-test-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


@pytest.mark.needs_redis
async def test_the_shared_count_holds_across_processes_and_forgets_dead_ones(redis_prefix):
    """Two counters (two processes) share one limit; a process that stops renewing stops counting."""
    # A 3 s expiry renewed every second: a renewal can run 2 s late on a busy machine.
    first = SharedConnectionCounter(REDIS_URL, redis_prefix, ttl=3)
    second = SharedConnectionCounter(REDIS_URL, redis_prefix, ttl=3)
    assert await first.acquire("user:1", "a", 2)
    assert await second.acquire("user:1", "b", 2)
    assert not await second.acquire("user:1", "c", 2)
    assert await second.acquire("user:2", "d", 2)  # another identity has its own count
    await second.release("user:1", "b")
    assert await second.acquire("user:1", "c", 2)
    # `first` dies: its renewer stops, and its socket stops counting once its entry expires.
    for state in first._per_loop.values():
        state.renewer.cancel()
    await asyncio.sleep(4.5)  # ttl 3 s, on Redis's clock of whole seconds
    assert await second.acquire("user:1", "e", 2)  # c (renewed) and e
    assert not await second.acquire("user:1", "f", 2)


@pytest.mark.needs_redis
async def test_renewal_keeps_open_sockets_counted(redis_prefix):
    counter = SharedConnectionCounter(REDIS_URL, redis_prefix + "-renew", ttl=3)
    assert await counter.acquire("user:1", "a", 1)
    await asyncio.sleep(4.5)  # past the expiry: only the renewals (every second) keep it
    assert not await counter.acquire("user:1", "b", 1)


async def test_without_redis_each_process_counts_for_itself():
    """Redis unreachable: the count falls back to this process, and the limit still holds."""
    counter = SharedConnectionCounter(f"redis://127.0.0.1:{free_port()}/0", "chat-down")
    assert await counter.acquire("user:1", "a", 1)
    assert not await counter.acquire("user:1", "b", 1)
    await counter.release("user:1", "a")
    assert await counter.acquire("user:1", "b", 1)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, migrated_database, redis_prefix) -> Iterator[tuple[Server, Server]]:
    """Two `manage.py serve` processes on one database and one Redis, two sockets per identity."""
    workdir = tmp_path_factory.mktemp("shared-limit")
    database = fresh_database(migrated_database, workdir)
    create = f"from django.contrib.auth.models import User; User.objects.create_user('alice', password={PASSWORD!r})"
    result = run_manage("shell", "-c", create, env=server_env(database))
    assert result.returncode == 0, result.stderr
    env = {"REDIS_URL": REDIS_URL, "CHAT_CHANNEL_PREFIX": redis_prefix, "CHAT_MAX_CONNECTIONS_PER_USER": "2"}
    with daphne_server(workdir, database, **env) as first, daphne_server(workdir, database, **env) as second:
        yield first, second


@pytest.mark.needs_redis
async def test_a_sessions_connection_limit_holds_across_workers(two_workers):
    """One socket on each worker is the limit of two: a third, on either, is closed with 4429."""
    first, second = two_workers
    _status, headers, _body = first.get("/")
    cookie = {"Cookie": session_cookie(headers)}
    async with (
        connect(first.ws_url, additional_headers=cookie) as a,
        connect(second.ws_url, additional_headers=cookie) as b,
    ):
        await hello(a)
        await hello(b)
        async with connect(first.ws_url, additional_headers=cookie) as refused:
            with pytest.raises(ConnectionClosed) as closed:
                await receive(refused)
            assert closed.value.rcvd.code == 4429
    async with connect(second.ws_url, additional_headers=cookie) as again:
        await hello(again)


def page_form_token(server: Server, cookie: str) -> tuple[str, str]:
    """The chat page's CSRF token and the cookies to post it with."""
    status, headers, body = server.get("/", cookie=cookie)
    assert status == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body.decode()).group(1)
    return token, f"{cookie}; csrftoken={cookie_value(headers, 'csrftoken')}"


def log_in(server: Server) -> str:
    """Log alice in through the real form; returns the session cookie."""
    status, headers, body = server.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body.decode()).group(1)
    form = urlencode({"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token})
    status, headers, _body = server.request(
        "POST",
        "/accounts/login/",
        body=form,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={cookie_value(headers, 'csrftoken')}",
        },
    )
    assert status == 302, status
    return session_cookie(headers)


@pytest.mark.needs_redis
async def test_logging_out_on_one_worker_closes_the_sessions_sockets_on_every_worker(two_workers):
    first, second = two_workers
    cookie = log_in(first)
    headers = {"Cookie": cookie}
    async with (
        connect(first.ws_url, additional_headers=headers) as a,
        connect(second.ws_url, additional_headers=headers) as b,
    ):
        assert (await hello(a))["user"] == "alice"
        assert (await hello(b))["user"] == "alice"
        token, cookies = page_form_token(first, cookie)
        form = urlencode({"csrfmiddlewaretoken": token})
        status, _headers, _body = first.request(
            "POST",
            "/accounts/logout/",
            body=form,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookies},
        )
        assert status == 302
        for socket_ in (a, b):
            with pytest.raises(ConnectionClosed) as closed:
                await receive(socket_)
            assert closed.value.rcvd.code == 4401
