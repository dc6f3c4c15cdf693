"""Scale-out: several server processes sharing Redis and PostgreSQL are one chat.

Every server here is `manage.py serve` (uvicorn, as production runs it) in its own
process, on its own port, with a private redis-server started by the test on a free
port (so that restarting it disturbs no other test) and a PostgreSQL database of its
own, dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chat.protocol import CloseCode
from tests.conftest import skip_or_fail
from tests.unit.test_deploy import local_nginx_conf

from .servers import (
    PYTHON,
    ROOT,
    Server,
    daphne_server,
    free_port,
    hello,
    receive,
    run_manage,
    server_env,
    session_cookie,
    spawn,
    stop,
    wait_until_healthy,
)

pytestmark = [pytest.mark.needs_redis, pytest.mark.needs_postgres]

# A role that may create databases; trust auth ignores the password, md5/scram use it.
POSTGRES_URL = os.environ.get("POSTGRES_TEST_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres")
EMITTER_TIMEOUT = 30  # seconds; the command imports Django before its first tick
# Short heartbeats for the tests that kill a process; production keeps 15 s and 60 s.
FAST_PRESENCE = {"CHAT_HEARTBEAT_SECONDS": "0.5", "CHAT_WORKER_TIMEOUT": "3"}
HEALING_BOUND = 3 + 0.5 + 3  # timeout + one beat + slack for a loaded machine


# --- services ---------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of the test's own on a free port, which a test may kill and restart."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            skip_or_fail("redis-server is not installed (apt-get install redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir)]
        self.process = spawn(args, env=dict(os.environ), log=self.workdir / f"redis-{self.port}.log")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        pytest.fail(f"redis-server did not start on port {self.port}", pytrace=False)

    def kill(self) -> None:
        """Gone at once, as in a crash: no client gets a goodbye."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL database of this module's own, dropped afterwards."""
    import psycopg

    name = f"chat_scaleout_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as error:
        skip_or_fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({error}); start it or set POSTGRES_TEST_URL"
        )
    base, _, _ = POSTGRES_URL.rpartition("/")
    url = f"{base}/{name}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            result = run_manage(
                "migrate", "--noinput", "--skip-checks", env=env_for(url, "redis://127.0.0.1:9/0")
            )
            assert result.returncode == 0, result.stdout + result.stderr
            yield url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def env_for(database_url: str, redis_url: str, **overrides: str) -> dict[str, str]:
    """A production-like server environment on PostgreSQL and the given Redis."""
    return server_env(
        Path("unused.sqlite3"),
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CHAT_CHANNEL_PREFIX=f"chat-test-{uuid.uuid4().hex[:8]}",
        **overrides,
    )


@contextlib.contextmanager
def two_servers(
    workdir: Path, database_url: str, redis_url: str, **overrides: str
) -> Iterator[tuple[Server, Server]]:
    """Two `manage.py serve` processes on two ports, one deployment (one prefix, one database)."""
    env = env_for(database_url, redis_url, **overrides)
    shared = {name: env[name] for name in ("DATABASE_URL", "REDIS_URL", "CHAT_CHANNEL_PREFIX")} | overrides
    with (
        daphne_server(workdir, Path("unused.sqlite3"), launcher="serve", **shared) as first,
        daphne_server(workdir, Path("unused.sqlite3"), launcher="serve", **shared) as second,
    ):
        yield first, second


@pytest.fixture(scope="module")
def redis(tmp_path_factory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, postgres_url, redis) -> Iterator[tuple[Server, Server]]:
    """Two workers that stay up for the module's tests that kill nothing."""
    with two_servers(tmp_path_factory.mktemp("pair"), postgres_url, redis.url) as servers:
        yield servers


# --- a client's view ----------------------------------------------------------------


async def until(
    ws: ClientConnection, match: Callable[[dict], bool], wait: float = 10
) -> tuple[dict, list[dict]]:
    """The first frame that matches, and the frames that came before it."""
    before: list[dict] = []
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching frame within {wait} s; got {before}")
        try:
            frame = await receive(ws, left)
        except TimeoutError:
            continue
        if match(frame):
            return frame, before
        before.append(frame)


async def nothing(ws: ClientConnection, wait: float = 0.5) -> None:
    """Prove that no frame arrives within `wait` seconds."""
    with contextlib.suppress(TimeoutError):
        frame = await receive(ws, wait)
        raise AssertionError(f"unexpected frame {frame}")


async def send(ws: ClientConnection, **message) -> None:
    await ws.send(json.dumps(message))


async def join(ws: ClientConnection, room: str) -> dict:
    await send(ws, type="join", room=room, ref="j")
    joined, _ = await until(ws, lambda f: f["type"] == "joined" and f.get("ref") == "j")
    return joined


async def closed_with(ws: ClientConnection, wait: float) -> int | None:
    """The close code the server sends within `wait` seconds (frames before it are skipped)."""
    deadline = time.monotonic() + wait
    with contextlib.suppress(ConnectionClosed):
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.recv(), left)
        raise AssertionError(f"the server did not close the socket within {wait} s")
    return ws.close_code


def presence(room: str, event: str, members: int) -> Callable[[dict], bool]:
    return lambda f: (
        (f["type"], f.get("room"), f.get("event"), f.get("members")) == ("presence", room, event, members)
    )


async def post(ws: ClientConnection, room: str, data: str) -> dict:
    """Send a room message and return the sender's own confirmed copy (with its id)."""
    await send(ws, type="room_message", room=room, data=data, ref=data)
    own, _ = await until(ws, lambda f: f.get("ref") == data)
    assert own["type"] == "message" and own["kind"] == "room" and own["id"] > 0, own
    return own


async def history_since(ws: ClientConnection, room: str, since: int) -> list[dict]:
    """Every stored message after `since`, paging until `more` is false."""
    messages: list[dict] = []
    while True:
        await send(ws, type="history", room=room, since=since, limit=200, ref="h")
        page, _ = await until(ws, lambda f: f["type"] == "history" and f.get("ref") == "h")
        messages += page["messages"]
        if not page["more"]:
            return messages
        since = page["messages"][-1]["id"]


def room_name() -> str:
    return f"scale {uuid.uuid4().hex[:6]} ✨"


# --- everything in the protocol crosses processes -----------------------------------


def test_every_worker_is_healthy(pair):
    for server in pair:
        status, _headers, body = server.get("/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "database": "ok", "channel_layer": "ok"})


async def test_health_checks_leave_nothing_behind_in_redis(pair, redis):
    """/healthz reuses one probe channel per process: probing adds no Redis subscription,
    and it answers quickly while the hub holds sockets."""
    import redis as redis_client

    first, _second = pair
    client = redis_client.Redis.from_url(redis.url)
    async with connect(first.ws_url) as ws:  # the hub is running, with its own channel
        await hello(ws)
        first.get("/healthz")
        before = client.execute_command("PUBSUB", "NUMPAT"), len(client.pubsub_channels())
        for _ in range(5):
            started = time.monotonic()
            status, _headers, _body = first.get("/healthz")
            assert status == 200 and time.monotonic() - started < 1
        assert (client.execute_command("PUBSUB", "NUMPAT"), len(client.pubsub_channels())) == before
    client.close()


async def test_broadcast_crosses_workers(pair):
    """A broadcast sent to one worker reaches a client of the other, once, with the same id."""
    first, second = pair
    async with connect(first.ws_url) as alice, connect(second.ws_url) as bob:
        await hello(alice)
        await hello(bob)
        await send(bob, type="broadcast", data="over there", ref=7)
        own, _ = await until(bob, lambda f: f.get("ref") == 7)
        other, skipped = await until(alice, lambda f: f.get("data") == "over there")
        assert (other["kind"], other["id"], "ref" in other) == ("broadcast", own["id"], False)
        assert skipped == []
        await nothing(alice)


async def test_guest_keeps_its_name_on_another_worker(pair):
    """A session cookie from one worker's page names the same guest on the other worker."""
    first, second = pair
    _status, headers, body = first.get("/")
    cookie = session_cookie(headers)
    async with connect(second.ws_url, additional_headers={"Cookie": cookie}) as ws:
        name = (await hello(ws))["user"]
    assert f'<strong id="display-name">{name}</strong>' in body.decode()


async def test_room_messages_presence_and_close_cross_workers(pair):
    """Presence counts, room messages and close_room reach members on the other worker."""
    first, second = pair
    room = room_name()
    async with connect(first.ws_url) as alice, connect(second.ws_url) as bob, connect(second.ws_url) as carol:
        alice_name = (await hello(alice))["user"]
        await hello(bob)
        await hello(carol)
        await join(alice, room)
        await until(alice, presence(room, "join", 1))
        await join(bob, room)
        await join(carol, room)
        for ws in (alice, bob, carol):
            await until(ws, presence(room, "join", 3))

        sent = await post(alice, room, "from the first worker")
        for ws in (bob, carol):
            got, _ = await until(ws, lambda f: f.get("data") == "from the first worker")
            assert got["id"] == sent["id"] and got["sender"] == alice_name and "ref" not in got
        sent = await post(bob, room, "from the second worker")
        got, _ = await until(alice, lambda f: f.get("data") == "from the second worker")
        assert got["id"] == sent["id"]

        await send(carol, type="leave", room=room)
        for ws in (alice, bob):
            await until(ws, presence(room, "leave", 2))

        await send(alice, type="close_room", room=room, ref="c")
        closed, _ = await until(alice, lambda f: f["type"] == "room_closed")
        assert closed == {"type": "room_closed", "room": room, "by": alice_name, "ref": "c"}
        closed, _ = await until(bob, lambda f: f["type"] == "room_closed")
        assert closed == {"type": "room_closed", "room": room, "by": alice_name}
        await send(bob, type="room_message", room=room, data="still here?", ref="x")
        error, _ = await until(bob, lambda f: f.get("ref") == "x")
        assert (error["type"], error["code"]) == ("error", "not_in_room")

        # The other worker's member is gone from the stored count too: a new join counts 1.
        await join(carol, room)
        await until(carol, presence(room, "join", 1))
        await nothing(alice)


async def test_emitter_process_reaches_clients_of_both_workers(pair, postgres_url, redis):
    """`manage.py emit_server_events`, a third process, reaches the sockets of both workers."""
    first, second = pair
    env = env_for(postgres_url, redis.url)
    env["CHAT_CHANNEL_PREFIX"] = server_prefix(first)
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
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            for ws in (alice, bob):
                events = [await receive(ws, EMITTER_TIMEOUT) for _ in range(3)]
                assert [(e["kind"], e["data"], e["count"]) for e in events] == [
                    ("server", "Server generated event", n) for n in (1, 2, 3)
                ]
            _out, err = await asyncio.wait_for(emitter.communicate(), EMITTER_TIMEOUT)
        finally:
            if emitter.returncode is None:
                emitter.kill()
                await emitter.wait()
    assert emitter.returncode == 0, err.decode()


def server_prefix(server: Server) -> str:
    """The channel-layer prefix a server runs with (one per deployment)."""
    environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    for item in environ:
        if item.startswith(b"CHAT_CHANNEL_PREFIX="):
            return item.split(b"=", 1)[1].decode()
    raise AssertionError("the server has no CHAT_CHANNEL_PREFIX")


async def test_nginx_config_spreads_one_chat_over_both_workers(tmp_path, pair):
    """deploy/nginx.conf, run by a real nginx in front of both workers, upgrades WebSockets,
    forwards the Host that ALLOWED_HOSTS checks, and serves the page and its static files."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        skip_or_fail("nginx is not installed (apt-get install nginx-core)")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(local_nginx_conf(port=port, upstreams=[s.port for s in pair], cache=tmp_path / "cache"))
    # As root, nginx's workers would otherwise be `nobody`, locked out of pytest's private tmp.
    user = "user root; " if os.geteuid() == 0 else ""
    args = [nginx, "-p", str(tmp_path), "-c", str(conf), "-g", f"{user}daemon off; pid {tmp_path}/nginx.pid;"]
    process = spawn(args, env=dict(os.environ), log=tmp_path / "nginx.log")
    proxy = Server(port=port, process=process, log=tmp_path / "nginx.log")
    try:
        wait_until_healthy(proxy)
        status, _headers, page = proxy.get("/")
        assert status == 200 and b"chat.js" in page
        status, headers, _body = proxy.get("/static/chat/chat.js")
        assert status == 200 and headers["x-cache-status"] == ["MISS"]
        # nginx files the response just after sending it: the next request may still miss.
        deadline = time.monotonic() + 5
        while proxy.get("/static/chat/chat.js")[1]["x-cache-status"] != ["HIT"]:
            assert time.monotonic() < deadline, "nginx never served chat.js from its cache"
            await asyncio.sleep(0.1)

        origin = {"Origin": f"http://localhost:{port}"}  # as a browser on the proxy's address
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(connect(proxy.ws_url, additional_headers=origin))
                for _ in range(4)
            ]
            for ws in clients:
                await hello(ws)
            await send(clients[0], type="broadcast", data="through nginx", ref=1)
            for ws in clients:
                await until(ws, lambda f: f.get("data") == "through nginx")
    finally:
        stop(process)


def worker_processes(pid: int) -> set[int]:
    """The uvicorn workers a supervisor started (multiprocessing's resource tracker aside)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                command = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"resource_tracker" not in command:
                    found.add(int(child))
    return found


async def test_serve_workers_option_runs_one_chat(tmp_path, postgres_url, redis):
    """`serve --workers 2`: two chat processes on one port under a supervisor that
    replaces one killed with -9; clients of both are one chat."""
    port = free_port()
    log = tmp_path / "workers.log"
    command = [PYTHON, str(ROOT / "manage.py"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = spawn([*command, "--workers", "2"], env=env_for(postgres_url, redis.url), log=log)
    server = Server(port=port, process=process, log=log)
    try:
        wait_until_healthy(server)
        workers = worker_processes(process.pid)
        assert len(workers) == 2, server.output()
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (len(worker_processes(process.pid)) == 2 and victim not in worker_processes(process.pid)):
            assert time.monotonic() < deadline, f"no replacement for {victim}:\n{server.output()}"
            await asyncio.sleep(0.2)
        wait_until_healthy(server)

        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(server.ws_url)) for _ in range(6)]
            for ws in clients:
                await hello(ws)
            await send(clients[0], type="broadcast", data="to every worker", ref=1)
            for ws in clients:
                got, _ = await until(ws, lambda f: f.get("data") == "to every worker")
                assert got["kind"] == "broadcast"
    finally:
        stop(process)


# --- a process dies ---------------------------------------------------------------


async def test_killed_worker_heals(tmp_path, postgres_url, redis):
    """kill -9 of one worker: the other chats on, presence drops the dead one's members within
    the timeout, and a client that moves to the survivor recovers what it missed exactly once."""
    with two_servers(tmp_path, postgres_url, redis.url, **FAST_PRESENCE) as (doomed, survivor):
        room = room_name()
        async with connect(survivor.ws_url) as bob:
            await hello(bob)
            alice = await connect(doomed.ws_url)
            alice_name = (await hello(alice))["user"]
            await join(alice, room)
            await join(bob, room)
            await until(alice, presence(room, "join", 2))
            await until(bob, presence(room, "join", 2))
            last_seen = (await post(bob, room, "before the crash"))["id"]
            got, _ = await until(alice, lambda f: f.get("data") == "before the crash")
            assert got["id"] == last_seen

            killed_at = time.monotonic()
            os.kill(doomed.process.pid, signal.SIGKILL)  # no disconnect handler runs
            missed = [(await post(bob, room, f"while alice is away {n}"))["id"] for n in range(3)]
            gone, _ = await until(bob, lambda f: f["type"] == "presence", wait=HEALING_BOUND + 5)
            healed_after = time.monotonic() - killed_at
            assert gone == {
                "type": "presence",
                "room": room,
                "event": "leave",
                "user": alice_name,
                "members": 1,
            }
            assert healed_after <= HEALING_BOUND, f"presence healed after {healed_after:.1f} s"
            with contextlib.suppress(Exception):
                await alice.close()

            await send(bob, type="broadcast", data="the survivor still broadcasts", ref="b")
            await until(bob, lambda f: f.get("ref") == "b")

            async with connect(survivor.ws_url) as alice_again:
                await hello(alice_again)
                recovered = await history_since(alice_again, room, last_seen)
                assert [m["id"] for m in recovered] == missed
                assert [m["data"] for m in recovered] == [f"while alice is away {n}" for n in range(3)]
                joined = await join(alice_again, room)
                assert [m["id"] for m in joined["history"]][-3:] == missed
                for ws in (alice_again, bob):
                    # bob and alice's new socket; the dead process's member is not counted.
                    await until(ws, presence(room, "join", 2))
                await nothing(bob)


# --- Redis goes away and comes back -------------------------------------------------


@pytest.mark.parametrize("layer", ["pubsub", "core"])
async def test_redis_restart_under_live_clients(tmp_path, postgres_url, layer):
    """Redis killed and restarted (empty) under live clients: the servers recover by themselves.

    Meanwhile a client keeps its socket; echo, ping and history work; its own room
    messages are stored and confirmed; other members miss them live. Once Redis is back,
    every socket is closed with 1012, so that its client reconnects and finds what it
    missed with `history since`; live delivery works again, both ways.
    """
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        with two_servers(tmp_path, postgres_url, redis.url, CHAT_REDIS_LAYER=layer, **FAST_PRESENCE) as (
            first,
            second,
        ):
            room = room_name()
            async with connect(first.ws_url) as alice, connect(second.ws_url) as bob:
                await hello(alice)
                await hello(bob)
                await join(alice, room)
                await join(bob, room)
                await until(bob, presence(room, "join", 2))
                last_seen = (await post(alice, room, "before"))["id"]
                await until(bob, lambda f: f.get("id") == last_seen)

                redis.kill()
                during = await post(alice, room, "while Redis is down")  # stored and confirmed
                await send(bob, type="ping", id="still there")
                pong, skipped = await until(bob, lambda f: f["type"] == "pong")
                assert skipped == [] and pong["id"] == "still there"  # nothing live arrived
                status, _headers, body = second.get("/healthz")
                assert status == 503 and json.loads(body)["channel_layer"] == "unavailable"
                async with connect(second.ws_url) as newcomer:  # new sockets still open
                    await hello(newcomer)
                # Joining a room this process has no member in needs Redis: refused, to be retried.
                await send(bob, type="join", room=room_name(), ref="new")
                refused, _ = await until(bob, lambda f: f.get("ref") == "new")
                assert (refused["type"], refused["code"]) == ("error", "unavailable")

                redis.start()  # the same port, no data: every group is forgotten
                for client in (alice, bob):
                    assert await closed_with(client, wait=20) == CloseCode.SERVICE_RESTART

            # The clients reconnect, as the page does after a 1012, and catch up.
            async with connect(first.ws_url) as alice, connect(second.ws_url) as bob:
                await hello(alice)
                await hello(bob)
                await join(alice, room)
                await join(bob, room)
                recovered = await history_since(bob, room, last_seen)
                assert [m["id"] for m in recovered] == [during["id"]]
                # Live delivery both ways, broadcasts too.
                there = await post(alice, room, "after")
                await until(bob, lambda f: f.get("id") == there["id"])
                back = await post(bob, room, "and back")
                await until(alice, lambda f: f.get("id") == back["id"])
                await send(alice, type="broadcast", data="all of you", ref="b")
                await until(bob, lambda f: f.get("data") == "all of you")
                for server in (first, second):
                    status, _headers, body = server.get("/healthz")
                    assert status == 200, body
    finally:
        redis.stop()
