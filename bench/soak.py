"""A bounded soak run: hundreds of clients chat in rooms, join and leave them, reconnect,
against a real `manage.py serve`, while the server's memory is sampled from /proc.

At the end every stored message must have reached every client that was in its room
at the time, once; and every message the server acknowledged must be stored once
(read back with `history`). Memory "stayed flat" when the server's RSS grew by less
than `--max-growth` over the second half of the run.

    .venv/bin/python bench/soak.py                      # 10 minutes, 300 clients, 10 rooms
    .venv/bin/python bench/soak.py --minutes 1 --clients 50
    .venv/bin/python bench/soak.py --database-url postgres://... --redis-url redis://...

Traffic goes to 127.0.0.1 only, to a server this script starts on a free port and stops.
Writes bench/results/soak-<date>.json (every figure and memory sample); exit status 0
only when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import platform
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
STARTUP_TIMEOUT = 30.0  # seconds: the server imports Django before it listens
REPLY_TIMEOUT = 10.0  # seconds for any one reply; more is a failure, not a slow run
# A message acknowledged to its sender this long before a member sent `leave` (or
# closed its socket) must have reached that member; later ones may or may not have,
# since the leave races with the message's fan-out. Under a modest load fan-out takes
# milliseconds, so a grace of seconds still catches any loss.
LEAVE_GRACE = 2.0
DRAIN_SECONDS = 3.0  # after the last send, for the last fan-out to arrive
MEMORY_INTERVAL = 2.0  # seconds between RSS samples
HISTORY_PAGE = 200  # the protocol's largest `limit`
ROOMS_PER_CLIENT = (1, 3)  # each client stays in at least one room and at most three


# Put on the server's PYTHONPATH (as bench/probes/ is by bench/run.py): on SIGUSR1 the
# server runs a full collection and appends what is still alive to SOAK_GC_PROBE_OUT.
# The server collects its oldest generation rarely (chat/runtime.py), so RSS alone
# cannot tell garbage that a full collection would free from memory that is held.
GC_PROBE = """
import collections, gc, json, os, signal, time

def _rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

def _kinds(objects):
    return collections.Counter(type(o).__name__ for o in objects).most_common(8)

def _probe(signum, frame):
    before, started = _rss(), time.perf_counter()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what the collection finds unreachable, to count it
    freed = gc.collect()
    pause = time.perf_counter() - started
    gc.set_debug(0)
    garbage = _kinds(gc.garbage)
    gc.garbage.clear()
    gc.collect()  # now free it
    alive = gc.get_objects()
    report = {"rss_before_kib": before, "freed": freed, "freed_most_common": garbage,
              "pause_ms": round(1000 * pause, 1), "rss_after_kib": _rss(), "objects": len(alive),
              "most_common": _kinds(alive)}
    del alive
    with open(os.environ["SOAK_GC_PROBE_OUT"], "a") as out:
        out.write(json.dumps(report) + "\\n")

signal.signal(signal.SIGUSR1, _probe)
"""
GC_PROBE_WAIT = 3.0  # seconds for the probe's report to appear


# --- The server ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills it when this script goes (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


def server_env(database_url: str, redis_url: str | None) -> dict[str, str]:
    """A production-like environment (DEBUG off), as bench/run.py gives the chat stack."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CHAT_", "DJANGO_", "DAPHNE_"))
        and name not in {"DEBUG", "SECRET_KEY", "REDIS_URL", "DATABASE_URL", "ALLOWED_HOSTS"}
    }
    env |= {
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DATABASE_URL": database_url,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CHAT_SERVER_EVENTS_INTERVAL": "0",  # server events carry no id: nothing to check
        "PYTHONUNBUFFERED": "1",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
        env["CHAT_CHANNEL_PREFIX"] = f"soak-{uuid.uuid4().hex[:12]}"
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    async def full_collection(self) -> dict[str, Any] | None:
        """Ask the server's probe for a full garbage collection; what it found alive."""
        reports = self.log.parent / "gc-probe.jsonl"
        seen = len(reports.read_text().splitlines()) if reports.exists() else 0
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + GC_PROBE_WAIT
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            lines = reports.read_text().splitlines() if reports.exists() else []
            if len(lines) > seen:
                return json.loads(lines[seen])
        return None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def rss_kib(self) -> int | None:
        """Resident memory of the server process, from /proc (Linux)."""
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def cpu_seconds(self) -> float | None:
        try:
            with open(f"/proc/{self.process.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start_server(
    workdir: Path, *, database_url: str | None, redis_url: str | None, gc_probe: bool = True
) -> Server:
    """Migrate the database, then `manage.py serve` on a free port, healthy or an error."""
    database_url = database_url or f"sqlite:///{workdir / 'soak.sqlite3'}"
    env = server_env(database_url, redis_url)
    if gc_probe:
        probe = workdir / "probe"
        probe.mkdir()
        (probe / "sitecustomize.py").write_text(GC_PROBE)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(probe), env.get("PYTHONPATH")]))
        env["SOAK_GC_PROBE_OUT"] = str(workdir / "gc-probe.jsonl")
    # Without Redis, chat.E001 refuses the in-memory layer for production: one process
    # is exactly what this run wants.
    skip = [] if redis_url else ["--skip-checks"]
    migrate = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", *skip],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if migrate.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{migrate.stdout}{migrate.stderr}")
    port = free_port()
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *skip,
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = Server(process, port, log)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the server was not healthy after {STARTUP_TIMEOUT:g} s:\n{log.read_text()}")


# --- One client -----------------------------------------------------------------------


@dataclass
class Interval:
    """One stay of one socket in one room, from its `joined` to its `leave` (or close)."""

    room: str
    floor: int  # the newest id `joined` carried (0 if none): later ones must arrive live
    end: float | None = None  # monotonic time the client sent `leave` or closed the socket
    received: list[int] = field(default_factory=list)  # ids in arrival order, the own ones too
    own: set[int] = field(default_factory=set)  # the ids this socket sent (their acknowledgements)


class Failure(Exception):
    """The server broke the protocol or did not answer: the run fails."""


class Client:
    """One simulated person: a socket at a time, its rooms, what it sent and what it got."""

    def __init__(self, number: int, run: Run) -> None:
        self.number = number
        self.run = run
        self.socket: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.open: dict[str, Interval] = {}  # room -> the current stay
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.refs = itertools.count(1)

    async def connect(self) -> None:
        self.socket = await connect(self.run.url, open_timeout=REPLY_TIMEOUT, max_queue=None)
        hello = json.loads(await asyncio.wait_for(self.socket.recv(), REPLY_TIMEOUT))
        if hello.get("data") != "Connected":
            raise Failure(f"client {self.number}: first frame {hello}")
        self.run.stats["connects"] += 1
        self.reader = asyncio.create_task(self.read(self.socket))

    async def close(self) -> None:
        """Close the socket: every stay ends now (the server leaves the rooms for it)."""
        now = time.monotonic()
        for interval in self.open.values():
            interval.end = now  # what arrives until the close completes still counts
        if self.socket is not None:
            await self.socket.close()
        if self.reader is not None:
            await self.reader
        self.open.clear()
        self.socket = self.reader = None
        self.run.stats["disconnects"] += 1

    async def request(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send a command with a fresh ref; its direct reply (applied by the reader first)."""
        ref = next(self.refs)
        future = asyncio.get_running_loop().create_future()
        self.pending[ref] = future
        try:
            await self.socket.send(json.dumps(command | {"ref": ref}))
            return await asyncio.wait_for(future, REPLY_TIMEOUT)
        except TimeoutError:
            raise Failure(f"client {self.number}: no reply to {command} in {REPLY_TIMEOUT:g} s") from None
        except ConnectionClosed as closed:
            raise Failure(f"client {self.number}: the server closed the socket ({closed})") from None
        finally:
            self.pending.pop(ref, None)

    async def read(self, sock: ClientConnection) -> None:
        """Apply every frame in arrival order: the order is what makes the bookkeeping exact."""
        with contextlib.suppress(ConnectionClosed):
            async for frame in sock:
                self.on_frame(json.loads(frame))

    def on_frame(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        ref = event.get("ref")
        if kind == "message" and event.get("kind") == "room":
            self.on_room_message(event, own=ref is not None)
        elif kind == "joined":
            history = event["history"]
            self.open[event["room"]] = interval = Interval(event["room"], history[-1]["id"] if history else 0)
            self.run.intervals.append(interval)
        elif kind == "left":
            self.open.pop(event["room"], None)  # ended when `leave` was sent
        elif kind == "error":
            self.run.stats[f"error_{event.get('code')}"] += 1
        elif kind == "presence":
            self.run.stats["presence"] += 1
        elif kind not in {"pong", "history"}:
            self.run.unexpected.append(event)
        future = self.pending.get(ref) if ref is not None else None
        if future is not None and not future.done():
            future.set_result(event)

    def on_room_message(self, event: dict[str, Any], *, own: bool) -> None:
        message_id, room = event["id"], event["room"]
        now = time.monotonic()
        if own:
            self.run.acked[message_id] = (room, now)
        interval = self.open.get(room)
        if interval is None:
            self.run.outside.append({"client": self.number, "room": room, "id": message_id})
        else:
            interval.received.append(message_id)
            if own:
                interval.own.add(message_id)
        self.run.stats["received"] += 1

    async def act(self) -> None:
        """One random step: mostly talk, sometimes join, leave or reconnect."""
        choice = self.run.rng.random()
        rooms = sorted(self.open)
        if choice < self.run.args.reconnect_share:
            await self.close()
            await self.connect()
            for room in self.run.rng.sample(self.run.rooms, ROOMS_PER_CLIENT[0]):
                await self.join(room)
        elif choice < 0.25 and len(rooms) < ROOMS_PER_CLIENT[1]:
            await self.join(self.run.rng.choice([r for r in self.run.rooms if r not in self.open]))
        elif choice < 0.45 and len(rooms) > ROOMS_PER_CLIENT[0]:
            await self.leave(self.run.rng.choice(rooms))
        elif rooms:
            await self.say(self.run.rng.choice(rooms))

    async def join(self, room: str) -> None:
        reply = await self.request({"type": "join", "room": room})
        if reply.get("type") != "joined":
            raise Failure(f"client {self.number}: join {room!r} answered {reply}")
        self.run.stats["joins"] += 1

    async def leave(self, room: str) -> None:
        self.open[room].end = time.monotonic()
        reply = await self.request({"type": "leave", "room": room})
        if reply.get("type") != "left":
            raise Failure(f"client {self.number}: leave {room!r} answered {reply}")
        self.run.stats["leaves"] += 1

    async def say(self, room: str) -> None:
        sent = time.monotonic()
        reply = await self.request(
            {"type": "room_message", "room": room, "data": f"c{self.number} {sent:.6f}"}
        )
        if reply.get("type") != "message" or "id" not in reply:
            self.run.stats["sends_refused"] += 1
            return
        self.run.latencies.append(time.monotonic() - sent)
        self.run.stats["sent"] += 1


# --- The run -----------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.rng = random.Random(args.seed)
        self.rooms = [f"soak {n} ✓" for n in range(args.rooms)]
        self.intervals: list[Interval] = []
        self.acked: dict[int, tuple[str, float]] = {}  # id -> (room, time its sender had the ack)
        self.outside: list[dict[str, Any]] = []  # room messages that arrived outside any stay
        self.unexpected: list[dict[str, Any]] = []
        self.latencies: list[float] = []
        self.stats = Counter(
            dict.fromkeys(
                [
                    "connects",
                    "disconnects",
                    "joins",
                    "leaves",
                    "sent",
                    "sends_refused",
                    "received",
                    "presence",
                ],
                0,
            )
        )


async def client_loop(client: Client, run: Run, stop_at: float) -> None:
    """Act at random intervals (mean `--think` seconds) until the end of the run."""
    think = run.args.think
    while True:
        delay = run.rng.expovariate(1 / think)
        if time.monotonic() + delay >= stop_at:
            return
        await asyncio.sleep(delay)
        await client.act()


async def sample_memory(
    server: Server, samples: list[dict[str, float]], start: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        rss = server.rss_kib()
        if rss is not None:
            samples.append({"t": round(time.monotonic() - start, 1), "rss_kib": rss})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), MEMORY_INTERVAL)


async def read_history(url: str, room: str) -> list[int]:
    """Every stored id of a room, through the protocol's `history` paging."""
    ids: list[int] = []
    async with connect(url, open_timeout=REPLY_TIMEOUT, max_queue=None) as sock:
        await asyncio.wait_for(sock.recv(), REPLY_TIMEOUT)  # Connected
        since = 0
        while True:
            await sock.send(
                json.dumps({"type": "history", "room": room, "since": since, "limit": HISTORY_PAGE})
            )
            while True:
                reply = json.loads(await asyncio.wait_for(sock.recv(), REPLY_TIMEOUT))
                if reply.get("type") == "error" and reply.get("code") == "rate_limited":
                    await asyncio.sleep(0.5)
                    break  # send the same page again
                if reply.get("type") == "history":
                    ids += [message["id"] for message in reply["messages"]]
                    if not reply["more"]:
                        return ids
                    since = ids[-1]
                    break
    return ids


def check(run: Run, stored: dict[str, list[int]]) -> dict[str, Any]:
    """Compare what each client received with what the database holds."""
    stored_ids = {i: room for room, ids in stored.items() for i in ids}
    duplicates_stored = sum(len(ids) - len(set(ids)) for ids in stored.values())
    acked_missing = sorted(i for i, (room, _t) in run.acked.items() if stored_ids.get(i) != room)
    unacked_stored = sorted(set(stored_ids) - set(run.acked))
    missing = duplicated = phantom = out_of_order = required_total = ack_first = 0
    examples: list[dict[str, Any]] = []
    for interval in run.intervals:
        got = interval.received
        seen = set(got)
        duplicated += len(got) - len(seen)
        relayed = [i for i in got if i not in interval.own]
        out_of_order += sum(1 for a, b in itertools.pairwise(relayed) if b <= a)
        newest_own = 0
        for i in got:
            if i in interval.own:
                newest_own = max(newest_own, i)
            elif i < newest_own:
                ack_first += 1
        room_ids = stored.get(interval.room, [])
        phantom += sum(1 for i in seen if stored_ids.get(i) != interval.room or i <= interval.floor)
        for i in room_ids:
            if i <= interval.floor:
                continue
            acked_at = run.acked.get(i, (None, None))[1]
            if interval.end is not None and (acked_at is None or acked_at > interval.end - LEAVE_GRACE):
                continue  # the leave raced with this message: either outcome is right
            required_total += 1
            if i not in seen:
                missing += 1
                if len(examples) < 10:
                    examples.append({"room": interval.room, "id": i, "floor": interval.floor})
    return {
        "stored_messages": len(stored_ids),
        "stored_twice": duplicates_stored,
        "acknowledged": len(run.acked),
        "acknowledged_not_stored": len(acked_missing),
        "stored_not_acknowledged": len(unacked_stored),
        "stays": len(run.intervals),
        "deliveries_required": required_total,
        "missing": missing,
        "missing_examples": examples,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
        # A sender's acknowledgement comes straight back, while other messages stored in
        # the same batch with lower ids reach it through the fan-out a moment later.
        "after_a_newer_own_ack": ack_first,
        "not_stored_or_before_join": phantom,
        "outside_any_stay": len(run.outside),
        "unexpected_frames": len(run.unexpected),
    }


def memory_verdict(samples: list[dict[str, float]], max_growth: float) -> dict[str, Any]:
    """Flat = the median RSS of the last tenth is within `max_growth` of the median around the middle."""
    if len(samples) < 10:
        return {"flat": None, "reason": "too few samples"}
    end = samples[-1]["t"]
    middle = [s["rss_kib"] for s in samples if 0.45 * end <= s["t"] <= 0.55 * end]
    last = [s["rss_kib"] for s in samples if s["t"] >= 0.9 * end]
    mid_rss, end_rss = statistics.median(middle), statistics.median(last)
    growth = (end_rss - mid_rss) / mid_rss
    return {
        "flat": growth < max_growth,
        "criterion": f"median RSS of the last 10% < median of 45-55% x (1 + {max_growth:g})",
        "start_kib": samples[0]["rss_kib"],
        "middle_kib": mid_rss,
        "end_kib": end_rss,
        "peak_kib": max(s["rss_kib"] for s in samples),
        "second_half_growth_pct": round(100 * growth, 2),
    }


async def soak(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    run = Run(args, server.url)
    clients = [Client(n, run) for n in range(args.clients)]
    gate = asyncio.Semaphore(20)  # open sockets 20 at a time, not all at once

    async def start(client: Client) -> None:
        async with gate:
            await client.connect()
            for room in run.rng.sample(run.rooms, run.rng.randint(*ROOMS_PER_CLIENT)):
                await client.join(room)

    t0 = time.monotonic()
    cpu0 = server.cpu_seconds()
    samples: list[dict[str, float]] = []
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(server, samples, t0, stop_sampling))
    await asyncio.gather(*(start(c) for c in clients))
    connected_after = time.monotonic() - t0
    stop_at = t0 + args.minutes * 60
    failure = None
    collections: dict[str, Any] = {}

    async def collect_at_the_middle() -> None:
        await asyncio.sleep(max(0.0, t0 + args.minutes * 30 - time.monotonic()))
        if args.gc_probe:
            collections["middle"] = await server.full_collection()

    middle = asyncio.create_task(collect_at_the_middle())
    try:
        await asyncio.gather(*(client_loop(c, run, stop_at) for c in clients))
    except Failure as error:
        failure = str(error)
    await middle
    await asyncio.sleep(DRAIN_SECONDS)
    if args.gc_probe:
        collections["end"] = await server.full_collection()
    elapsed = time.monotonic() - t0
    cpu1 = server.cpu_seconds()
    stop_sampling.set()
    await sampler
    stored = {room: await read_history(server.url, room) for room in run.rooms}
    for client in clients:
        if client.socket is not None:
            await client.close()
    verdicts = check(run, stored)
    memory = memory_verdict(samples, args.max_growth)
    latencies = sorted(run.latencies)

    def pct(q: float) -> float | None:
        return (
            round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)
            if latencies
            else None
        )

    delivered_ok = failure is None and all(
        verdicts[key] == 0
        for key in (
            "stored_twice",
            "acknowledged_not_stored",
            "stored_not_acknowledged",
            "missing",
            "duplicated",
            "out_of_order",
            "not_stored_or_before_join",
            "outside_any_stay",
            "unexpected_frames",
        )
    )
    return {
        "ok": delivered_ok and memory["flat"] is not False and server.process.poll() is None,
        "failure": failure,
        "server_alive": server.process.poll() is None,
        "elapsed_s": round(elapsed, 1),
        "connect_s": round(connected_after, 1),
        "stats": dict(run.stats),
        "send_rate_per_s": round(run.stats["sent"] / elapsed, 1),
        "delivery_rate_per_s": round(run.stats["received"] / elapsed, 1),
        "ack_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 1) if cpu0 is not None and cpu1 else None,
        "delivery": verdicts,
        "memory": memory,
        # Full collections at the middle and at the end of the run (GC_PROBE).
        "full_collections": collections,
        "memory_samples": samples,
        "examples": {"outside": run.outside[:5], "unexpected": run.unexpected[:5]},
    }


def summary(result: dict[str, Any]) -> str:
    d, m, s = result["delivery"], result["memory"], result["stats"]
    lines = [
        f"soak: {'OK' if result['ok'] else 'FAILED'} in {result['elapsed_s']} s "
        f"({result['args']['clients']} clients, {result['args']['rooms']} rooms)",
        f"  traffic: {s['sent']} messages stored and acknowledged ({result['send_rate_per_s']}/s), "
        f"{s['received']} deliveries ({result['delivery_rate_per_s']}/s), {s['joins']} joins, "
        f"{s['leaves']} leaves, {s['connects']} connects; ack p50 {result['ack_latency_ms']['p50']} ms, "
        f"p99 {result['ack_latency_ms']['p99']} ms; server CPU {result['server_cpu_pct']}%",
        f"  delivery: {d['deliveries_required']} required deliveries over {d['stays']} stays: "
        f"{d['missing']} missing, {d['duplicated']} twice, {d['out_of_order']} out of order, "
        f"{d['not_stored_or_before_join'] + d['outside_any_stay']} not due; "
        f"{d['after_a_newer_own_ack']} arrived after the member's own newer acknowledgement",
        f"  storage: {d['stored_messages']} stored, {d['acknowledged']} acknowledged, "
        f"{d['acknowledged_not_stored']} acknowledged but not stored, {d['stored_twice']} stored twice, "
        f"{d['stored_not_acknowledged']} stored but not acknowledged",
    ]
    if m.get("flat") is not None:
        lines.append(
            f"  memory: RSS {m['start_kib'] / 1024:.1f} MiB at start, {m['middle_kib'] / 1024:.1f} at the middle, "
            f"{m['end_kib'] / 1024:.1f} at the end (peak {m['peak_kib'] / 1024:.1f}): "
            f"{m['second_half_growth_pct']:+.2f}% over the second half -> {'flat' if m['flat'] else 'GREW'}"
        )
    full = result.get("full_collections", {})
    if full.get("middle") and full.get("end"):
        mid, end = full["middle"], full["end"]
        lines.append(
            f"  after a full collection: {mid['objects']} objects, RSS {mid['rss_after_kib'] / 1024:.1f} MiB "
            f"at the middle; {end['objects']} objects, RSS {end['rss_after_kib'] / 1024:.1f} MiB at the end"
        )
    if result["failure"]:
        lines.append(f"  failure: {result['failure']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10, help="length of the chatting (default 10)")
    parser.add_argument("--clients", type=int, default=300, help="simulated people (default 300)")
    parser.add_argument("--rooms", type=int, default=10, help="rooms they chat in (default 10)")
    parser.add_argument(
        "--think", type=float, default=10, help="mean seconds between one client's actions (default 10)"
    )
    parser.add_argument(
        "--reconnect-share", type=float, default=0.02, help="share of actions that reconnect (default 0.02)"
    )
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temporary directory")
    parser.add_argument("--redis-url", help="default: none (the in-memory channel layer, one process)")
    parser.add_argument("--max-growth", type=float, default=0.05, help="flat memory bound (default 0.05)")
    parser.add_argument(
        "--no-gc-probe",
        dest="gc_probe",
        action="store_false",
        help="no full garbage collections at the middle and the end (see GC_PROBE)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="default: bench/results/soak-<date>.json")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rooms < ROOMS_PER_CLIENT[1] or args.minutes <= 0 or args.think <= 0:
        parser.error(f"need --clients >= 1, --rooms >= {ROOMS_PER_CLIENT[1]}, --minutes > 0, --think > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    out = args.out or RESULTS / f"soak-{started:%Y-%m-%d-%H%M%S}.json"
    with tempfile.TemporaryDirectory(prefix="chat-soak-") as tmp:
        server = start_server(
            Path(tmp), database_url=args.database_url, redis_url=args.redis_url, gc_probe=args.gc_probe
        )
        try:
            # The whole run is bounded: chatting, a drain, and reading the history back.
            limit = args.minutes * 60 + 120 + args.clients
            result = asyncio.run(asyncio.wait_for(soak(args, server), limit))
        finally:
            server.stop()
            server_log = (Path(tmp) / "server.log").read_text(errors="replace")
    result = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["bench/soak.py", *(argv if argv is not None else sys.argv[1:])]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "database": "postgresql" if (args.database_url or "").startswith("postgres") else "sqlite",
        "channel_layer": "redis" if args.redis_url else "in-memory",
        "machine": {
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
        },
        **result,
        "server_log_tail": server_log.splitlines()[-20:],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(summary(result))
    print(f"  written to {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
