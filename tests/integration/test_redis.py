"""Several processes, one chat: daphne workers and the emitter joined by a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from tests.conftest import skip_or_fail

from .servers import (
    PYTHON,
    ROOT,
    Server,
    daphne_server,
    fresh_database,
    hello,
    receive,
    server_env,
    session_cookie,
)

pytestmark = pytest.mark.needs_redis

REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/9")
EMITTER_TIMEOUT = 30  # seconds; the command imports Django before its first tick


@pytest.fixture(scope="module")
def redis_env() -> Iterator[dict[str, str]]:
    """REDIS_URL and a key prefix of this run's own; its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        client.close()
        skip_or_fail(f"Redis is not running at {REDIS_URL} ({error}); start it or set REDIS_TEST_URL")
    prefix = f"chat-test-{uuid.uuid4().hex[:12]}"
    try:
        yield {"REDIS_URL": REDIS_URL, "CHAT_CHANNEL_PREFIX": prefix}
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


@pytest.fixture(scope="module")
def workers(
    tmp_path_factory, migrated_database, redis_env
) -> Iterator[tuple[Server, Server, dict[str, str]]]:
    """Two `manage.py serve` processes sharing one database and one Redis, as two workers."""
    workdir = tmp_path_factory.mktemp("redis")
    database = fresh_database(migrated_database, workdir)
    with (
        daphne_server(workdir, database, launcher="serve", **redis_env) as first,
        daphne_server(workdir, database, launcher="serve", **redis_env) as second,
    ):
        yield first, second, server_env(database, **redis_env)


def test_health_check_sees_redis(workers):
    first, _second, _env = workers
    status, _headers, body = first.get("/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok", "database": "ok", "channel_layer": "ok"})


async def test_emitter_process_reaches_clients_of_every_worker(workers):
    """`manage.py emit_server_events` publishes through Redis to the sockets of every worker."""
    first, second, env = workers
    async with connect(first.ws_url) as alice, connect(second.ws_url) as bob:
        await hello(alice)
        await hello(bob)
        emitter = await asyncio.create_subprocess_exec(
            PYTHON,
            str(ROOT / "manage.py"),
            "emit_server_events",
            "--interval",
            "0.2",
            "--count",
            "3",
            "--message",
            "hello",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            for socket in (alice, bob):
                events = [await receive(socket, EMITTER_TIMEOUT) for _ in range(3)]
                assert [(e["type"], e["kind"], e["data"]) for e in events] == [
                    ("message", "server", "hello")
                ] * 3
                assert [e["count"] for e in events] == [1, 2, 3]
            out, err = await asyncio.wait_for(emitter.communicate(), EMITTER_TIMEOUT)
        finally:
            if emitter.returncode is None:
                emitter.kill()
                await emitter.wait()
    assert emitter.returncode == 0, err.decode()
    assert "Sent 3 server event(s)." in out.decode()


async def test_broadcast_crosses_workers(workers):
    """A broadcast sent to one worker reaches a client of the other, once."""
    first, second, _env = workers
    async with connect(first.ws_url) as alice, connect(second.ws_url) as bob:
        await hello(alice)
        await hello(bob)
        await alice.send(json.dumps({"type": "broadcast", "data": "across", "ref": 1}))
        own, other = await receive(alice), await receive(bob)
        assert own["ref"] == 1 and "ref" not in other and own["id"] == other["id"]
        assert other["kind"] == "broadcast" and other["data"] == "across"
        await bob.send(json.dumps({"type": "ping", "id": "after"}))
        assert await receive(bob) == {"type": "pong", "id": "after"}  # nothing arrived twice


async def test_room_spans_workers(workers):
    """Members of one room on two workers see each other's presence and messages."""
    first, second, _env = workers
    room = f"salle {uuid.uuid4().hex[:6]} café 🚀"
    async with connect(first.ws_url) as alice, connect(second.ws_url) as bob:
        await hello(alice)
        bob_name = (await hello(bob))["user"]
        await alice.send(json.dumps({"type": "join", "room": room}))
        assert (await receive(alice))["type"] == "joined"
        assert (await receive(alice))["members"] == 1
        await bob.send(json.dumps({"type": "join", "room": room}))
        assert (await receive(bob))["type"] == "joined"
        for socket in (alice, bob):
            presence = await receive(socket)
            assert presence["type"] == "presence" and presence["user"] == bob_name
            assert presence["members"] == 2
        await bob.send(json.dumps({"type": "room_message", "room": room, "data": "bonjour"}))
        own, other = await receive(bob), await receive(alice)
        assert other["kind"] == "room" and other["room"] == room and other["id"] == own["id"]


async def test_guest_keeps_its_name_on_another_worker(workers):
    """A session cookie from one worker's page names the same guest on the other worker."""
    first, second, _env = workers
    _status, headers, body = first.get("/")
    cookie = session_cookie(headers)
    async with connect(second.ws_url, additional_headers={"Cookie": cookie}) as socket:
        name = (await hello(socket))["user"]
    assert f'<strong id="display-name">{name}</strong>' in body.decode()
