"""The hub's healing: heartbeats, reaping dead processes, and surviving a database outage."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat import hub as hub_module
from chat import services
from chat.auth import Actor
from chat.models import Membership, Room, Worker

pytestmark = pytest.mark.django_db(transaction=True)

BEAT = 0.05
TIMEOUT = 0.25


class FlakyDatabase:
    """Stands in for the heartbeat's database: up or down on cue, every call logged."""

    def __init__(self) -> None:
        self.up = True
        self.log: list[tuple[str, float]] = []

    async def heartbeat(self, *, worker: str) -> None:
        if not self.up:
            self.log.append(("fail", time.monotonic()))
            raise ConnectionError("the database is away")
        self.log.append(("beat", time.monotonic()))

    async def reap(self, *, silent_for: float) -> int:
        assert silent_for == TIMEOUT
        self.log.append(("reap", time.monotonic()))
        return 0

    async def restore(self) -> None:
        self.log.append(("restore", time.monotonic()))

    def events(self, kind: str) -> list[float]:
        return [at for name, at in self.log if name == kind]


@pytest.fixture
async def beating(settings, monkeypatch):
    """A hub whose heartbeat loop runs against a FlakyDatabase with short timings."""
    settings.CHAT_HEARTBEAT_SECONDS = BEAT
    settings.CHAT_WORKER_TIMEOUT = TIMEOUT
    database = FlakyDatabase()
    monkeypatch.setattr(services, "worker_heartbeat", database.heartbeat)
    monkeypatch.setattr(services, "workers_reap", database.reap)
    hub = hub_module.Hub()
    monkeypatch.setattr(hub, "_restore_memberships", database.restore)
    monkeypatch.setattr(hub, "_probe_layer", _nothing)
    task = asyncio.create_task(hub._heartbeat_forever())
    yield database
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _nothing() -> None:
    return None


async def test_a_process_reaps_only_after_a_whole_timeout_of_healthy_beats(beating):
    await asyncio.sleep(TIMEOUT * 2.5)
    reaps = beating.events("reap")
    assert reaps, beating.log
    started = beating.log[0][1] - BEAT  # the loop's first beat comes one interval after start
    assert reaps[0] - started >= TIMEOUT - BEAT / 2


async def test_after_a_database_outage_nobody_is_reaped_until_beats_are_healthy_again(beating):
    """The first process through after an outage must not declare every other one dead."""
    await asyncio.sleep(TIMEOUT * 1.5)
    beating.up = False
    await asyncio.sleep(TIMEOUT * 1.5)  # longer than the timeout: every last beat is old
    beating.up = True
    back = time.monotonic()
    await asyncio.sleep(TIMEOUT * 2.5)
    first_beat_back = min(at for at in beating.events("beat") if at >= back)
    reaps_after = [at for at in beating.events("reap") if at >= back]
    assert reaps_after, beating.log
    assert reaps_after[0] - first_beat_back >= TIMEOUT * 0.99
    outage = [at for at in beating.events("fail")]
    assert not [at for at in beating.events("reap") if outage[0] <= at < first_beat_back]


async def test_a_process_silent_for_a_whole_timeout_records_its_members_again(beating):
    await asyncio.sleep(BEAT * 2)
    beating.up = False
    await asyncio.sleep(TIMEOUT * 1.5)
    beating.up = True
    await asyncio.sleep(BEAT * 3)
    restores = beating.events("restore")
    assert len(restores) == 1, beating.log
    assert restores[0] >= beating.events("fail")[-1]


async def test_one_missed_beat_changes_nothing(beating):
    await asyncio.sleep(BEAT * 2)
    beating.up = False
    await asyncio.sleep(BEAT * 1.2)
    beating.up = True
    await asyncio.sleep(BEAT * 3)
    assert beating.events("fail") and not beating.events("restore"), beating.log


# --- restoring memberships against the real database ---------------------------------


@dataclass(eq=False)
class FakeConnection:
    connection_id: str
    actor: Actor
    rooms: dict[str, Any] = field(default_factory=dict)

    def relay(self, group, message_id, outgoing):
        return None

    def forget_room(self, group):
        pass


async def test_restoring_memberships_puts_back_the_reaped_and_keeps_the_rest():
    hub = hub_module.Hub()
    room = await database_sync_to_async(Room.objects.create)(name="lobby", creator_key="k", creator_name="k")
    await services.worker_heartbeat(worker=hub.worker_id)
    kept = FakeConnection("kept", Actor(key="conn:kept", name="kept"), {"lobby": room})
    reaped = FakeConnection("reaped", Actor(key="conn:reaped", name="reaped"), {"lobby": room})
    joining = FakeConnection("joining", Actor(key="conn:joining", name="joining"))  # no room yet
    hub.groups[room.group_name] = {kept, reaped, joining}
    await services.room_join(room=room, actor=kept.actor, connection="kept", worker=hub.worker_id)

    await hub._restore_memberships()

    rows = await database_sync_to_async(
        lambda: sorted(Membership.objects.filter(room=room).values_list("connection", "worker_id"))
    )()
    assert rows == [("kept", hub.worker_id), ("reaped", hub.worker_id)]


async def test_reaping_removes_the_members_of_silent_processes_only():
    room = await database_sync_to_async(Room.objects.create)(name="hall", creator_key="k", creator_name="k")
    for worker in ("dead", "alive"):
        await services.worker_heartbeat(worker=worker)
        await services.room_join(
            room=room, actor=Actor(key=f"conn:{worker}", name=worker), connection=worker, worker=worker
        )
    await asyncio.sleep(0.3)
    await services.worker_heartbeat(worker="alive")

    assert await services.workers_reap(silent_for=0.2) == 1

    left = await database_sync_to_async(
        lambda: list(Membership.objects.values_list("connection", flat=True))
    )()
    assert left == ["alive"]
    assert await database_sync_to_async(lambda: list(Worker.objects.values_list("id", flat=True)))() == [
        "alive"
    ]


# --- the channel layer goes away and comes back ------------------------------------


class AwayLayer:
    """Stands in for a Redis-backed layer that is down until told otherwise."""

    def __init__(self) -> None:
        self.up = False
        self.added: list[str] = []

    async def group_add(self, group: str, channel: str) -> None:
        if not self.up:
            raise ConnectionError("Redis is away")
        self.added.append(group)


@dataclass(eq=False)  # hashed by identity, as the hub's sets need
class Socket:
    connection_id: str
    closes: list[int] = field(default_factory=list)

    async def close(self, code: int) -> None:
        self.closes.append(code)


async def test_once_the_layer_is_back_every_socket_is_closed_to_catch_up(monkeypatch):
    """Events published while the layer was down reached nobody: 1012 makes clients catch up."""
    monkeypatch.setattr(hub_module, "LAYER_RETRY_SECONDS", 0.01)
    hub = hub_module.Hub()
    hub.layer, hub.channel = AwayLayer(), "chat.worker.test"
    hub._subscribed = {services.BROADCAST_GROUP}
    sockets = [Socket("a"), Socket("b")]
    for socket in sockets:
        hub.attach(socket)
    task = asyncio.create_task(hub._rejoin_layer_forever())
    try:
        hub._layer_failed()
        await asyncio.sleep(0.1)
        assert [socket.closes for socket in sockets] == [[], []]  # still down: nobody to send to
        hub.layer.up = True
        await asyncio.sleep(0.1)
        assert [socket.closes for socket in sockets] == [[1012], [1012]]
        assert hub.layer.added == [services.BROADCAST_GROUP]
        hub._layer_lost.set()  # a rejoin with nothing missed (the hourly kind) closes nobody
        await asyncio.sleep(0.05)
        assert [socket.closes for socket in sockets] == [[1012], [1012]]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
