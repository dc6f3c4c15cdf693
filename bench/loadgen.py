#!/usr/bin/env python3
"""WebSocket load generator for the chat server and the two comparison apps.

Point it at any deployment (ws:// or wss://) and pick a scenario:

  echo    closed loop: --conns connections, each sends the next echo as soon as the
          previous one came back; round trips/s and latency percentiles.
  fanout  one room of --subscribers connections, --senders of them also sending
          room messages at each rate of a ladder (--rates, messages/s for the whole
          room). Every message carries its send time, sender and sequence number in
          its 64-character data, so each receiver measures latency, loss and
          duplicates. A rate passes when every message reached every member (the
          senders' own copies included) once, and p99 latency < --p99-limit-ms.
          Sustainable deliveries/s = highest passing rate x members.
  idle    --conns idle connections; with --server-pid, the server's RSS growth per
          connection (from /proc/PID/status), and how many were refused or dropped.

Every run reports the generator's own CPU use (process time over wall time) and its
event-loop lag (how late a 10 ms ticker wakes up): if either is high, the generator,
not the server, may be the limit, and the result says so (`generator_ok`).
With --server-pid it also reports the server's CPU use over the same windows.

--protocol picks the wire format:
  chat      this project's protocol (docs: /ws/chat/, JSON `type` frames)
  tutorial  the Channels tutorial consumer: {"message": ...} at /ws/chat/<room>/,
            echo at /ws/echo/ (bench/compare/tutorial)
  socketio  the Flask-SocketIO demo over a raw WebSocket (Engine.IO 4 / Socket.IO 5
            framing): my_event -> my_response, join, my_room_event -> my_response
            (bench/compare/flask_socketio_demo)

Examples:
  python bench/loadgen.py --url ws://127.0.0.1:8000 echo --conns 50 --duration 10
  python bench/loadgen.py --url ws://127.0.0.1:8000 --out r.json \\
      fanout --subscribers 100 --rates 10,100,500,1000 --step-seconds 10
  python bench/loadgen.py --url ws://127.0.0.1:8000 --server-pid 1234 idle --conns 10000

Needs `picows` (and uses `uvloop` when installed): see bench/requirements.txt.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import platform
import resource
import socket
import sys
import time
import uuid
from typing import Any
from urllib.parse import quote

import picows
from picows import WSListener, WSMsgType, WSTransport, ws_connect

try:
    import uvloop
except ImportError:  # plain asyncio works, a little slower
    uvloop = None

try:
    import numpy as np
except ImportError:
    np = None

TEXT = WSMsgType.TEXT
PONG = WSMsgType.PONG
CLOSE = WSMsgType.CLOSE
monotonic_ns = time.monotonic_ns

# --- the 64-character payload ---------------------------------------------------
#
# "@@" tag(1: E echo, F fanout) step(2) sender(4) seq(9) send-time(19, monotonic ns),
# then "-" up to 64 characters. Plain ASCII: no JSON escaping, so a receiver finds
# it with one bytes.find and reads it by fixed offsets, without decoding the frame.
MARK = b"@@"
DATA_CHARS = 64
HEAD_CHARS = 37
PAD = "-" * (DATA_CHARS - HEAD_CHARS)
TAG_ECHO, TAG_FANOUT = ord("E"), ord("F")


def make_data(tag: str, step: int, sender: int, seq: int, ts: int) -> str:
    return f"@@{tag}{step:02d}{sender:04d}{seq:09d}{ts:019d}{PAD}"


async def poll_until(condition: Any, limit: float, interval: float = 0.05) -> bool:
    """Wait until condition() holds (counters the frame callbacks bump), at most `limit` s."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


# --- measurements -----------------------------------------------------------------


def percentiles(values: Any, points: tuple[float, ...] = (50, 90, 99)) -> dict[str, float | None]:
    """Percentiles and max of latencies given in ns, returned in ms."""
    n = len(values)
    out: dict[str, float | None] = {f"p{int(p)}_ms": None for p in points}
    out["max_ms"] = None
    if n == 0:
        return out
    if np is not None:
        arr = np.frombuffer(values, dtype=np.int64) if isinstance(values, array.array) else np.asarray(values)
        qs = np.percentile(arr, points, method="higher")
        for p, q in zip(points, qs, strict=True):
            out[f"p{int(p)}_ms"] = round(float(q) / 1e6, 3)
        out["max_ms"] = round(float(arr.max()) / 1e6, 3)
        return out
    ordered = sorted(values)
    for p in points:
        out[f"p{int(p)}_ms"] = round(ordered[min(n - 1, int(n * p / 100))] / 1e6, 3)
    out["max_ms"] = round(ordered[-1] / 1e6, 3)
    return out


class ProcWatch:
    """CPU ticks and RSS of another process (the server), from /proc."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.hz = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float | None:
        if not self.pid:
            return None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / self.hz
        except (OSError, IndexError, ValueError):
            return None

    def rss_kb(self) -> int | None:
        if not self.pid:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None


def redis_commandstats(address: str | None) -> dict[str, int] | None:
    """Calls per command so far on a Redis server ("host:port"), from INFO commandstats."""
    if not address:
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=2) as conn:
            conn.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
            data = b""
            while b"\r\n" not in data:  # the reply is a bulk string: "$<length>\r\n<text>\r\n"
                data += conn.recv(65536)
            header, _, data = data.partition(b"\r\n")
            length = int(header[1:])
            while len(data) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (OSError, ValueError):
        return None
    calls: dict[str, int] = {}
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line[8:].partition(":")
            calls[name] = int(stats.split("calls=", 1)[1].split(",", 1)[0])
    return calls


def redis_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    delta = {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}
    delta["info"] = delta.get("info", 0) - 1  # our own INFO call
    return {name: n for name, n in sorted(delta.items()) if n}


class Meter:
    """Generator CPU %, event-loop lag and server CPU % over a window of the run."""

    TICK = 0.010

    def __init__(self, server: ProcWatch) -> None:
        self.server = server
        self.lags = array.array("q")
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            start = monotonic_ns()
            await asyncio.sleep(self.TICK)
            self.lags.append(monotonic_ns() - start - 10_000_000)

    def start_ticker(self) -> None:
        self._task = asyncio.create_task(self._tick())

    def stop_ticker(self) -> None:
        if self._task:
            self._task.cancel()

    def mark(self) -> tuple[float, float, float | None, int]:
        return (time.monotonic(), time.process_time(), self.server.cpu_seconds(), len(self.lags))

    def since(self, mark: tuple[float, float, float | None, int]) -> dict[str, Any]:
        wall0, cpu0, srv0, lag0 = mark
        wall = max(1e-9, time.monotonic() - wall0)
        lags = self.lags[lag0:]
        lag = percentiles(lags, (99,))
        srv1 = self.server.cpu_seconds()
        out = {
            "wall_s": round(wall, 3),
            "gen_cpu_pct": round(100 * (time.process_time() - cpu0) / wall, 1),
            "gen_loop_lag_p99_ms": lag["p99_ms"],
            "gen_loop_lag_max_ms": lag["max_ms"],
            "server_cpu_pct": None if srv0 is None or srv1 is None else round(100 * (srv1 - srv0) / wall, 1),
        }
        out["generator_ok"] = out["gen_cpu_pct"] < 90 and (lag["p99_ms"] or 0) < 25
        return out


# --- protocols ----------------------------------------------------------------------


class Protocol:
    """How one application frames echo, join and room messages, and what it sends back."""

    name = ""
    data_prefix = b""  # what a frame carrying a benchmark payload starts with
    ready_on_connect = False  # ready once the WebSocket is open (else: on a hello frame)
    joins_by_url = False

    def url(self, base: str, kind: str, room: str) -> str:
        raise NotImplementedError

    def echo(self, data: str) -> bytes:
        raise NotImplementedError

    def join(self, room: str) -> bytes:
        raise NotImplementedError

    def room_message(self, room: str, data: str) -> bytes:
        raise NotImplementedError

    def control(self, client: Client, payload: bytes) -> None:
        """A frame that carries no benchmark payload."""
        client.run.other_frames += 1


class ChatProtocol(Protocol):
    name = "chat"
    data_prefix = b'{"type":"message"'

    def url(self, base: str, kind: str, room: str) -> str:
        return base + "/ws/chat/"

    def echo(self, data: str) -> bytes:
        return b'{"type":"echo","data":"' + data.encode() + b'"}'

    def join(self, room: str) -> bytes:
        return json.dumps({"type": "join", "room": room}).encode()

    def room_message(self, room: str, data: str) -> bytes:
        return (
            b'{"type":"room_message","room":'
            + json.dumps(room).encode()
            + b',"data":"'
            + data.encode()
            + b'"}'
        )

    def control(self, client: Client, payload: bytes) -> None:
        run = client.run
        try:
            event = json.loads(payload)
            kind = event["type"]
        except (ValueError, KeyError, TypeError):
            run.note_error("unparsable frame", payload)
            return
        if kind == "presence":
            run.presence_frames += 1
            members = event.get("members")
            if isinstance(members, int) and members > client.members:
                client.members = members
        elif kind == "message" and event.get("kind") == "system" and event.get("data") == "Connected":
            client.set_ready()
        elif kind == "joined":
            client.set_joined()
        elif kind == "error":
            run.note_error(f"error {event.get('code')}", payload)
        else:
            run.other_frames += 1


class TutorialProtocol(Protocol):
    name = "tutorial"
    data_prefix = b'{"message"'
    ready_on_connect = True
    joins_by_url = True

    def url(self, base: str, kind: str, room: str) -> str:
        return base + ("/ws/echo/" if kind == "echo" else f"/ws/chat/{quote(room)}/")

    def echo(self, data: str) -> bytes:
        return b'{"message": "' + data.encode() + b'"}'

    def room_message(self, room: str, data: str) -> bytes:
        return b'{"message": "' + data.encode() + b'"}'


class SocketIOProtocol(Protocol):
    """Socket.IO 5 over Engine.IO 4, WebSocket transport only (no long-polling first)."""

    name = "socketio"
    data_prefix = b'42["my_response"'

    def url(self, base: str, kind: str, room: str) -> str:
        return base + "/socket.io/?EIO=4&transport=websocket"

    def echo(self, data: str) -> bytes:
        return b'42["my_event",{"data":"' + data.encode() + b'"}]'

    def join(self, room: str) -> bytes:
        return b"42" + json.dumps(["join", {"room": room}]).encode()

    def room_message(self, room: str, data: str) -> bytes:
        return (
            b'42["my_room_event",{"room":' + json.dumps(room).encode() + b',"data":"' + data.encode() + b'"}]'
        )

    def control(self, client: Client, payload: bytes) -> None:
        run = client.run
        if payload == b"2":  # Engine.IO ping from the server: answer pong
            client.transport.send(TEXT, b"3")
            return
        if payload[:1] == b"0":  # Engine.IO open: connect to the default namespace
            client.transport.send(TEXT, b"40")
            return
        if payload[:2] == b"40":  # namespace connected; the demo's "Connected" follows
            return
        if payload[:2] == b"42":
            try:
                event = json.loads(payload[2:])
                name, data = event[0], (event[1] if len(event) > 1 else None)
            except (ValueError, IndexError, TypeError):
                run.note_error("unparsable event", payload)
                return
            text = data.get("data") if isinstance(data, dict) else None
            if name == "my_response" and text == "Connected":
                client.set_ready()
            elif name == "my_response" and isinstance(text, str) and text.startswith("In rooms:"):
                client.set_joined()
            elif name == "my_response" and text == "Server generated event":
                run.server_events += 1
            else:
                run.other_frames += 1
            return
        if payload[:2] in (b"41", b"44", b"1"):
            run.note_error("socket.io disconnect/connect_error", payload)
            return
        run.other_frames += 1


PROTOCOLS: dict[str, type[Protocol]] = {
    "chat": ChatProtocol,
    "tutorial": TutorialProtocol,
    "socketio": SocketIOProtocol,
}


# --- one connection -------------------------------------------------------------------


class Client(WSListener):
    """One WebSocket. Frames carrying a benchmark payload go straight to the run."""

    def __init__(self, run: Run, idx: int) -> None:
        super().__init__()
        self.run = run
        self.proto = run.proto
        self.idx = idx
        self.data_prefix = run.proto.data_prefix
        self.transport: WSTransport | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.joined: asyncio.Future[None] = loop.create_future()
        self.closed = False
        self.members = 0
        self.pongs = 0
        self.seen: list[bytearray] = []  # fanout: per sender, one byte per sequence number
        self.sender_id = -1
        self.expect_seq = -1  # echo: the sequence number in flight
        self.seq = 0
        self.write_paused = 0

    # picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.proto.ready_on_connect:
            self.set_ready()

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        msg_type = frame.msg_type
        if msg_type is TEXT:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(self.data_prefix):
                at = payload.find(MARK)
                if at >= 0:
                    self.run.on_data(self, payload, at)
                    return
            self.proto.control(self, payload)
        elif msg_type is PONG:
            self.pongs += 1
        elif msg_type is CLOSE:
            self.run.note_close(frame.get_close_code())
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        else:
            self.run.note_error(f"unexpected frame {msg_type.name}", b"")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.run.on_disconnected(self)
        for fut in (self.ready, self.joined):
            if not fut.done():
                fut.set_exception(ConnectionError("disconnected"))
                fut.exception()

    def pause_writing(self) -> None:
        self.write_paused += 1

    # helpers
    def set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def set_joined(self) -> None:
        if not self.joined.done():
            self.joined.set_result(None)

    def send(self, payload: bytes) -> None:
        self.transport.send(TEXT, payload)

    def write_buffer(self) -> int:
        try:
            return self.transport.underlying_transport.get_write_buffer_size()
        except Exception:
            return 0

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            try:
                self.transport.send_close()
                self.transport.disconnect()
            except Exception:
                pass


# --- scenarios --------------------------------------------------------------------------


class Run:
    """State shared by a scenario's connections; the scenarios subclass it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.proto: Protocol = PROTOCOLS[args.protocol]()
        self.base = args.url.rstrip("/")
        # Browsers send Origin; the Channels tutorial's AllowedHostsOriginValidator
        # refuses a handshake without one. Default: the server's own origin.
        origin = args.origin
        if origin is None:
            origin = self.base.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
        self.headers = {"Origin": origin} if origin else None
        self.meter = Meter(ProcWatch(args.server_pid))
        self.clients: list[Client] = []
        self.errors: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.closes: dict[str, int] = {}
        self.unexpected_disconnects = 0
        self.stopping = False
        self.other_frames = 0
        self.presence_frames = 0
        self.server_events = 0

    # bookkeeping called from Client
    def on_data(self, client: Client, payload: bytes, at: int) -> None:
        self.other_frames += 1

    def on_disconnected(self, client: Client) -> None:
        if not self.stopping:
            self.unexpected_disconnects += 1

    def note_error(self, what: str, payload: bytes) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append(payload[:300].decode("utf-8", "replace"))

    def note_close(self, code: Any) -> None:
        key = str(getattr(code, "value", code))
        self.closes[key] = self.closes.get(key, 0) + 1

    async def connect(self, idx: int, kind: str, room: str, *, wait: float) -> Client:
        url = self.proto.url(self.base, kind, room)
        _transport, client = await ws_connect(
            lambda: Client(self, idx),
            url,
            extra_headers=self.headers,
            websocket_handshake_timeout=wait,
            read_buffer_init_size=4096,
            logger_name="loadgen",
        )
        self.clients.append(client)
        await asyncio.wait_for(client.ready, wait)
        return client

    async def connect_many(
        self, n: int, kind: str, room: str, *, concurrency: int, wait: float, start: int = 0
    ) -> tuple[list[Client], dict[str, int]]:
        """Open n connections, at most `concurrency` handshakes at a time."""
        sem = asyncio.Semaphore(concurrency)
        failures: dict[str, int] = {}

        async def one(i: int) -> Client | None:
            async with sem:
                try:
                    return await self.connect(start + i, kind, room, wait=wait)
                except Exception as error:  # refused, reset, timed out, handshake rejected
                    key = type(error).__name__
                    failures[key] = failures.get(key, 0) + 1
                    if len(self.error_samples) < 5:
                        self.error_samples.append(f"connect: {error!r}"[:300])
                    return None

        results = await asyncio.gather(*(one(i) for i in range(n)))
        return [c for c in results if c is not None], failures

    async def join_all(self, clients: list[Client], room: str, *, concurrency: int, wait: float) -> int:
        """Join the room on every connection (the tutorial joins by URL); returns failures."""
        if self.proto.joins_by_url:
            return 0
        sem = asyncio.Semaphore(concurrency)
        failed = 0
        payload = self.proto.join(room)

        async def one(client: Client) -> None:
            nonlocal failed
            async with sem:
                try:
                    client.send(payload)
                    await asyncio.wait_for(client.joined, wait)
                except Exception as error:
                    failed += 1
                    if len(self.error_samples) < 5:
                        self.error_samples.append(f"join: {error!r}"[:300])

        await asyncio.gather(*(one(c) for c in clients))
        return failed

    async def quiet(self, *, idle: float, limit: float) -> float:
        """Wait until no control frame arrived for `idle` seconds (at most `limit`)."""
        start = time.monotonic()
        last = -1
        last_change = start
        while time.monotonic() - start < limit:
            now_count = self.other_frames + self.presence_frames + self.server_events
            if now_count != last:
                last, last_change = now_count, time.monotonic()
            elif time.monotonic() - last_change >= idle:
                break
            await asyncio.sleep(0.05)
        return round(time.monotonic() - start, 3)

    def close_all(self) -> None:
        self.stopping = True
        for client in self.clients:
            client.close()

    def common(self) -> dict[str, Any]:
        return {
            "errors": self.errors,
            "error_samples": self.error_samples,
            "close_codes": self.closes,
            "unexpected_disconnects": self.unexpected_disconnects,
        }


class EchoRun(Run):
    """Closed loop: each connection has one echo in flight and sends the next on reply."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.lat = array.array("q")
        self.count = 0
        self.mismatched = 0
        self.running = False

    def send_next(self, client: Client) -> None:
        client.seq += 1
        client.expect_seq = client.seq
        client.send(self.proto.echo(make_data("E", 0, client.idx % 10000, client.seq, monotonic_ns())))

    def on_data(self, client: Client, payload: bytes, at: int) -> None:
        now = monotonic_ns()
        if payload[at + 2] != TAG_ECHO or int(payload[at + 9 : at + 18]) != client.expect_seq:
            self.mismatched += 1  # someone else's frame, or not the one in flight
            return
        self.lat.append(now - int(payload[at + 18 : at + 37]))
        self.count += 1
        client.expect_seq = -1
        if self.running:
            self.send_next(client)

    async def main(self) -> dict[str, Any]:
        a = self.args
        self.meter.start_ticker()
        clients, failures = await self.connect_many(
            a.conns, "echo", "", concurrency=50, wait=a.connect_timeout
        )
        result: dict[str, Any] = {
            "scenario": "echo",
            "conns": a.conns,
            "connected": len(clients),
            "connect_failures": failures,
        }
        if not clients:
            return result | self.common()
        self.running = True
        for client in clients:
            self.send_next(client)
        await asyncio.sleep(a.warmup)
        self.lat = array.array("q")
        self.count = 0
        mark = self.meter.mark()
        await asyncio.sleep(a.duration)
        count, lat = self.count, self.lat
        window = self.meter.since(mark)
        self.running = False
        await asyncio.sleep(0.2)  # let the last round trips land
        result |= {
            "duration_s": window["wall_s"],
            "round_trips": count,
            "round_trips_per_s": round(count / window["wall_s"], 1),
            "latency": percentiles(lat),
            "mismatched": self.mismatched,
            "measure": window,
        }
        return result | self.common()


class FanoutRun(Run):
    """One room; every member receives every message; a ladder of send rates."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.step = -1
        self.lat = array.array("q")
        self.received = 0
        self.dups = 0
        self.late = 0
        self.bad = 0
        self.max_send_buffer = 0

    def on_data(self, client: Client, payload: bytes, at: int) -> None:
        now = monotonic_ns()
        if payload[at + 2] != TAG_FANOUT or int(payload[at + 3 : at + 5]) != self.step:
            self.late += 1  # a previous step's straggler (or an echo): not counted
            return
        sender = int(payload[at + 5 : at + 9])
        seq = int(payload[at + 9 : at + 18])
        try:
            seen = client.seen[sender]
            if seen[seq]:
                self.dups += 1
                return
            seen[seq] = 1
        except IndexError:
            self.bad += 1
            return
        self.received += 1
        self.lat.append(now - int(payload[at + 18 : at + 37]))

    async def send_loop(
        self, client: Client, sender: int, n_senders: int, rate: float, total: int, start: float, room: str
    ) -> int:
        """Send this sender's share of `total` room messages; returns how many it sent.

        The senders interleave into one evenly spaced stream: message g of the step
        (g = seq * n_senders + sender) is due at start + g / rate. After oversleeping,
        every message already due goes at once, so the offered rate holds on average.
        """
        proto, step = self.proto, self.step
        g, seq, max_buffer = sender, 0, 0
        while g < total and not client.closed:
            delay = start + g / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            while g < total and start + g / rate <= now:
                client.send(proto.room_message(room, make_data("F", step, sender, seq, monotonic_ns())))
                seq += 1
                g += n_senders
            max_buffer = max(max_buffer, client.write_buffer())
        self.max_send_buffer = max(self.max_send_buffer, max_buffer)
        return seq

    async def run_step(
        self, k: int, rate: float, members: list[Client], senders: list[Client], room: str
    ) -> dict:
        a = self.args
        n_senders = len(senders)
        total = max(1, round(rate * a.step_seconds))
        per_sender = -(-total // n_senders)
        self.step = k % 100
        for client in members:
            client.seen = [bytearray(per_sender) for _ in range(n_senders)]
        self.lat = array.array("q")
        self.received = self.dups = self.late = self.bad = 0
        self.max_send_buffer = 0
        errors_before = sum(self.errors.values())
        disconnects_before = self.unexpected_disconnects
        mark = self.meter.mark()
        redis_before = redis_commandstats(a.redis)
        start = time.monotonic() + 0.005
        sent = await asyncio.gather(
            *(
                self.send_loop(client, i, n_senders, rate, total, start, room)
                for i, client in enumerate(senders)
            )
        )
        send_window = self.meter.since(mark)
        total_sent = sum(sent)
        expected = total_sent * len(members)
        await poll_until(lambda: self.received >= expected, a.drain_seconds, 0.01)
        window = self.meter.since(mark)
        redis = redis_delta(redis_before, redis_commandstats(a.redis))
        lat = percentiles(self.lat)
        lost = expected - self.received
        errors = sum(self.errors.values()) - errors_before
        disconnects = self.unexpected_disconnects - disconnects_before
        reasons = []
        if lost:
            reasons.append(f"{lost} missing {a.drain_seconds:g} s after the last send")
        if self.dups:
            reasons.append(f"{self.dups} duplicates")
        if lat["p99_ms"] is None or lat["p99_ms"] >= a.p99_limit_ms:
            reasons.append(f"p99 {lat['p99_ms']} ms")
        if errors:
            reasons.append(f"{errors} errors")
        if disconnects:
            reasons.append(f"{disconnects} disconnects")
        return {
            "rate_msgs_per_s": rate,
            "offered_deliveries_per_s": round(rate * len(members), 1),
            "sent": total_sent,
            "send_seconds": send_window["wall_s"],
            "expected_deliveries": expected,
            "delivered": self.received,
            "lost": lost,
            "duplicates": self.dups,
            "late_from_earlier_steps": self.late,
            "malformed": self.bad,
            "errors": errors,
            "disconnects": disconnects,
            # deliveries over the send window plus the time it took to drain
            "delivered_per_s": round(self.received / window["wall_s"], 1),
            "latency": lat,
            "max_send_buffer_bytes": self.max_send_buffer,
            "passed": not reasons,
            "fail_reasons": reasons,
            # filled in for a failing step: were the missing deliveries late or gone?
            "eventually_delivered": None,
            "lost_for_good": None,
            "measure": window,
            "measure_send_window": send_window,
            # with --redis: the commands the server sent to Redis during the step
            "redis_commands": redis,
            "redis_commands_per_message": round(sum(redis.values()) / total_sent, 2)
            if redis is not None and total_sent
            else None,
        }

    async def main(self) -> dict[str, Any]:
        a = self.args
        self.meter.start_ticker()
        room = a.room or f"bench_{uuid.uuid4().hex[:10]}"
        result: dict[str, Any] = {
            "scenario": "fanout",
            "room": room,
            "subscribers": a.subscribers,
            "senders": a.senders,
            "step_seconds": a.step_seconds,
            "p99_limit_ms": a.p99_limit_ms,
        }
        mark = self.meter.mark()
        members, failures = await self.connect_many(
            a.subscribers, "room", room, concurrency=a.connect_concurrency, wait=a.connect_timeout
        )
        connect_window = self.meter.since(mark)
        join_failures = await self.join_all(
            members, room, concurrency=a.connect_concurrency, wait=a.join_timeout
        )
        join_window = self.meter.since(mark)
        settle = await self.quiet(idle=a.settle_idle, limit=a.settle_limit)
        result |= {
            "connected": len(members),
            "connect_failures": failures,
            "join_failures": join_failures,
            "connect_seconds": connect_window["wall_s"],
            "join_seconds": round(join_window["wall_s"] - connect_window["wall_s"], 3),
            "settle_seconds": settle,
            "setup_measure": self.meter.since(mark),
            "presence_frames_at_setup": self.presence_frames,
            "max_presence_members_seen": max((c.members for c in members), default=0)
            if self.proto.name == "chat"
            else None,
        }
        steps: list[dict[str, Any]] = []
        result["steps"] = steps
        if len(members) < a.subscribers or join_failures:
            result["aborted"] = "not every subscriber connected and joined"
            return result | self.summary(steps, len(members)) | self.common()
        senders = members[: a.senders]
        fails = 0
        for k, rate in enumerate(a.rates):
            step = await self.run_step(k, rate, members, senders, room)
            steps.append(step)
            self.print_step(step)
            fails = 0 if step["passed"] else fails + 1
            if fails >= a.stop_after_fails:
                await self.final_drain(step)
                break
            await self.quiet(idle=0.3, limit=a.drain_seconds)
        return result | self.summary(steps, len(members)) | self.common()

    async def final_drain(self, step: dict[str, Any]) -> None:
        """After the last (failing) step, wait longer to tell late deliveries from lost ones."""
        if not step["lost"]:
            return
        expected = step["expected_deliveries"]
        await poll_until(lambda: self.received >= expected, self.args.final_drain_seconds)
        step["eventually_delivered"] = self.received
        step["lost_for_good"] = expected - self.received
        step["final_drain_seconds"] = self.args.final_drain_seconds
        print(
            f"  after {self.args.final_drain_seconds:g} s more: {self.received}/{expected} delivered",
            file=sys.stderr,
            flush=True,
        )

    @staticmethod
    def print_step(step: dict[str, Any]) -> None:
        lat, m = step["latency"], step["measure"]
        print(
            f"  rate {step['rate_msgs_per_s']:>8g}/s  delivered {step['delivered']:>9}/{step['expected_deliveries']:<9}"
            f" p50 {lat['p50_ms']} p99 {lat['p99_ms']} ms  gen cpu {m['gen_cpu_pct']}%"
            f" lag p99 {m['gen_loop_lag_p99_ms']} ms  server cpu {m['server_cpu_pct']}%"
            f"  {'PASS' if step['passed'] else 'FAIL ' + ', '.join(step['fail_reasons'])}",
            file=sys.stderr,
            flush=True,
        )

    def summary(self, steps: list[dict[str, Any]], members: int) -> dict[str, Any]:
        passing = [s for s in steps if s["passed"]]
        best = max(passing, key=lambda s: s["rate_msgs_per_s"], default=None)
        first = steps[0] if steps else None
        return {
            "highest_passing_rate_msgs_per_s": best["rate_msgs_per_s"] if best else None,
            "sustainable_deliveries_per_s": round(best["rate_msgs_per_s"] * members, 1) if best else 0,
            "measured_deliveries_per_s_at_best": best["delivered_per_s"] if best else None,
            "first_step_latency": first["latency"] if first else None,
            "first_step_rate": first["rate_msgs_per_s"] if first else None,
            "generator_ok": all(s["measure"]["generator_ok"] for s in steps),
            "gen_cpu_pct_max": max((s["measure"]["gen_cpu_pct"] for s in steps), default=None),
            "gen_loop_lag_p99_ms_max": max(
                (s["measure"]["gen_loop_lag_p99_ms"] or 0 for s in steps), default=None
            ),
        }


class IdleRun(Run):
    """Many idle connections: are they all accepted, and what does each cost the server?"""

    async def main(self) -> dict[str, Any]:
        a = self.args
        server = self.meter.server
        self.meter.start_ticker()
        room = a.room or f"bench_idle_{uuid.uuid4().hex[:8]}"
        # A few connections first, so one-time costs (first request, hub start) are not
        # charged to the per-connection figure.
        warm, _ = await self.connect_many(
            a.warmup_conns, "room", room, concurrency=10, wait=a.connect_timeout
        )
        await asyncio.sleep(1.0)
        rss_before = server.rss_kb()
        mark = self.meter.mark()
        opened, failures = await self.connect_many(
            a.conns,
            "room",
            room,
            concurrency=a.connect_concurrency,
            wait=a.connect_timeout,
            start=len(warm),
        )
        connect_window = self.meter.since(mark)
        await asyncio.sleep(a.hold)
        rss_after = server.rss_kb()
        # Are they still alive? A WebSocket ping on each, counted by pongs.
        alive_before_ping = sum(1 for c in opened if not c.closed)
        for client in opened:
            if not client.closed:
                client.transport.send_ping()
        await poll_until(lambda: sum(1 for c in opened if c.pongs) >= alive_before_ping, a.ping_timeout)
        answered = sum(1 for c in opened if c.pongs)
        refused = a.conns - len(opened)
        per_conn_kb = None
        if rss_before is not None and rss_after is not None and opened:
            per_conn_kb = round((rss_after - rss_before) / len(opened), 2)
        return {
            "scenario": "idle",
            "conns": a.conns,
            "opened": len(opened),
            "refused_or_failed": refused,
            "connect_failures": failures,
            "connect_seconds": connect_window["wall_s"],
            "connects_per_s": round(len(opened) / connect_window["wall_s"], 1),
            "held_seconds": a.hold,
            "open_after_hold": alive_before_ping,
            "answered_ping": answered,
            "server_rss_before_kb": rss_before,
            "server_rss_after_kb": rss_after,
            "server_kb_per_conn": per_conn_kb,
            "measure": connect_window,
            "generator_ok": connect_window["generator_ok"],
        } | self.common()


SCENARIOS = {"echo": EchoRun, "fanout": FanoutRun, "idle": IdleRun}


# --- output ------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    """A short human-readable table of one run."""
    s = result["result"]
    name = result["label"] or result["protocol"]
    head = f"{name} ({result['protocol']} protocol) @ {result['url']}  scenario {s['scenario']}"
    lines = [head, "-" * len(head)]
    if s["scenario"] == "echo":
        m, lat = s.get("measure", {}), s.get("latency", {})
        lines += [
            f"connections          {s.get('connected')}/{s['conns']}",
            f"round trips/s        {s.get('round_trips_per_s')}",
            f"latency p50/p90/p99  {lat.get('p50_ms')} / {lat.get('p90_ms')} / {lat.get('p99_ms')} ms (max {lat.get('max_ms')})",
        ]
    elif s["scenario"] == "fanout":
        lines += [
            f"room members         {s.get('connected')}/{s['subscribers']} joined, {s['senders']} of them sending",
            f"setup                connect {s.get('connect_seconds')} s, join {s.get('join_seconds')} s, "
            f"settle {s.get('settle_seconds')} s ({s.get('presence_frames_at_setup')} presence frames)",
            f"{'rate/s':>8} {'offered/s':>10} {'delivered/s':>12} {'lost':>7} {'dup':>5} {'p50 ms':>8} {'p99 ms':>8}"
            f" {'max ms':>8} {'gen cpu':>8} {'lag p99':>8} {'srv cpu':>8}  result",
        ]
        for st in s.get("steps", []):
            lat, m = st["latency"], st["measure"]
            lines.append(
                f"{st['rate_msgs_per_s']:>8g} {st['offered_deliveries_per_s']:>10g} {st['delivered_per_s']:>12g}"
                f" {st['lost']:>7} {st['duplicates']:>5} {lat['p50_ms']!s:>8} {lat['p99_ms']!s:>8} {lat['max_ms']!s:>8}"
                f" {m['gen_cpu_pct']:>7}% {m['gen_loop_lag_p99_ms']!s:>8} {m['server_cpu_pct']!s:>7}%"
                f"  {'pass' if st['passed'] else 'FAIL: ' + ', '.join(st['fail_reasons'])}"
            )
        for st in s.get("steps", []):
            if st.get("redis_commands") is not None:
                lines.append(
                    f"{st['rate_msgs_per_s']:>8g} redis: {st['redis_commands_per_message']} commands per room "
                    f"message {st['redis_commands']}"
                )
            if st.get("lost_for_good") is not None:
                lines.append(
                    f"{'':8} after {st['final_drain_seconds']:g} s more: {st['eventually_delivered']} of "
                    f"{st['expected_deliveries']} delivered, {st['lost_for_good']} never arrived"
                )
        lines.append(f"sustainable          {s.get('sustainable_deliveries_per_s')} deliveries/s")
        m = {}
    elif s["scenario"] == "idle":
        m = s.get("measure", {})
        lines += [
            f"opened               {s['opened']}/{s['conns']} (refused or failed {s['refused_or_failed']}), "
            f"{s['connects_per_s']} connects/s",
            f"after {s['held_seconds']} s            {s['open_after_hold']} open, {s['answered_ping']} answered a ping",
            f"server RSS           {s['server_rss_before_kb']} -> {s['server_rss_after_kb']} kB, "
            f"{s['server_kb_per_conn']} kB per connection",
        ]
    if s["scenario"] != "fanout":
        m = s.get("measure", {})
        if m:
            lines.append(
                f"generator            cpu {m['gen_cpu_pct']}%, loop lag p99 {m['gen_loop_lag_p99_ms']} ms"
                f" max {m['gen_loop_lag_max_ms']} ms; server cpu {m['server_cpu_pct']}%"
            )
    lines.append(
        f"generator total      cpu {result['generator']['cpu_pct']}% over {result['generator']['wall_s']} s"
    )
    if s.get("errors"):
        lines.append(f"errors               {s['errors']}  e.g. {s['error_samples'][:2]}")
    if s.get("unexpected_disconnects"):
        lines.append(f"disconnects          {s['unexpected_disconnects']} {s.get('close_codes')}")
    return "\n".join(lines)


def parse_rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="WebSocket load generator (chat protocol, Channels tutorial, Flask-SocketIO demo).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8000", help="server base URL (ws:// or wss://)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="chat")
    parser.add_argument("--out", help="write the result as JSON to this file")
    parser.add_argument("--label", default="", help="a name for this run in the JSON (e.g. the stack)")
    parser.add_argument("--server-pid", type=int, help="server process id, for its CPU and memory (/proc)")
    parser.add_argument(
        "--redis", help="host:port of the server's Redis: count its commands per step (INFO commandstats)"
    )
    parser.add_argument("--time-limit", type=float, default=900, help="abort the run after this many seconds")
    parser.add_argument("--origin", help="Origin header to send (default: the server's own; '' for none)")
    parser.add_argument("--connect-timeout", type=float, default=30)
    parser.add_argument("--connect-concurrency", type=int, default=50, help="handshakes in flight at once")
    sub = parser.add_subparsers(dest="scenario", required=True)

    echo = sub.add_parser("echo", help="closed-loop echo round trips")
    echo.add_argument("--conns", type=int, default=50)
    echo.add_argument("--duration", type=float, default=10)
    echo.add_argument("--warmup", type=float, default=1.0)

    fan = sub.add_parser("fanout", help="one room, a ladder of message rates")
    fan.add_argument("--subscribers", type=int, default=100, help="room members (senders included)")
    fan.add_argument("--senders", type=int, default=4, help="members that send; the rate is split among them")
    fan.add_argument(
        "--rates",
        type=parse_rates,
        default=parse_rates("10,50,100,200,500,1000,1500,2000"),
        help="comma-separated room message rates (messages/s for the whole room)",
    )
    fan.add_argument("--step-seconds", type=float, default=10)
    fan.add_argument(
        "--drain-seconds", type=float, default=3, help="wait this long after a step for stragglers"
    )
    fan.add_argument(
        "--final-drain-seconds",
        type=float,
        default=10,
        help="after the failing step, wait up to this long to tell late from lost",
    )
    fan.add_argument("--p99-limit-ms", type=float, default=250)
    fan.add_argument(
        "--stop-after-fails", type=int, default=1, help="stop the ladder after this many failing steps"
    )
    fan.add_argument("--join-timeout", type=float, default=180)
    fan.add_argument(
        "--settle-idle", type=float, default=1.0, help="setup ends after this long without frames"
    )
    fan.add_argument("--settle-limit", type=float, default=120, help="... or after this long in any case")
    fan.add_argument("--room", default="", help="room name (default: a new one; \\w+ for the tutorial)")

    idle = sub.add_parser("idle", help="many idle connections; server memory per connection")
    idle.add_argument("--conns", type=int, default=10000)
    idle.add_argument("--warmup-conns", type=int, default=10)
    idle.add_argument("--hold", type=float, default=5, help="seconds to hold them before measuring")
    idle.add_argument("--ping-timeout", type=float, default=15)
    idle.add_argument("--room", default="", help="for the tutorial, the room in the URL")
    return parser


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    run = SCENARIOS[args.scenario](args)
    wall0, cpu0 = time.monotonic(), time.process_time()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    timed_out = False
    try:
        result = await asyncio.wait_for(run.main(), args.time_limit)
    except TimeoutError:
        timed_out = True
        result = {"scenario": args.scenario, "aborted": f"time limit {args.time_limit} s"} | run.common()
    finally:
        run.close_all()
        run.meter.stop_ticker()
    await asyncio.sleep(0.2)
    wall = time.monotonic() - wall0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "tool": "bench/loadgen.py",
        "label": args.label,
        "protocol": args.protocol,
        "url": args.url,
        "started_unix": round(time.time() - wall, 3),
        "argv": sys.argv[1:],
        "timed_out": timed_out,
        "environment": {
            "python": platform.python_version(),
            "picows": picows.__version__,
            "event_loop": "uvloop" if uvloop is not None else "asyncio",
            "cpus": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        },
        "generator": {
            "wall_s": round(wall, 3),
            "cpu_pct": round(100 * (time.process_time() - cpu0) / wall, 1),
            "user_s": round(ru1.ru_utime - ru0.ru_utime, 3),
            "system_s": round(ru1.ru_stime - ru0.ru_stime, 3),
            "max_rss_kb": ru1.ru_maxrss,
        },
        "result": result,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_fd_limit()
    if uvloop is not None:
        out = uvloop.run(amain(args))
    else:
        out = asyncio.run(amain(args))
    print(table(out), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
