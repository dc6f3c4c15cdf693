"""Per-process fan-out: one channel-layer channel per process, relayed to its own sockets.

The tutorial pattern gives every socket a channel and sends one channel-layer message
per recipient, each consumer then encoding its own copy. Here a room message is one
channel-layer message per *process*, carrying the frame's text already encoded; the
hub of each process hands that same text to its local sockets.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Awaitable
from typing import Any, Protocol

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from . import services
from .emitter import emit_server_events
from .wire import Outgoing

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15  # four beats fit in WORKER_TIMEOUT, so one slow beat is no death
# Channel-layer groups expire (a day by default); renewing hourly keeps a long-lived
# process in its groups at the cost of one write per group per hour.
GROUP_RENEW_SECONDS = 3600


class Connection(Protocol):
    connection_id: str

    def relay(self, group: str, message_id: int | None, outgoing: Outgoing) -> Awaitable[None] | None: ...

    def forget_room(self, group: str) -> None: ...


class Hub:
    """The sockets of this process by group, fed by this process's one channel."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.worker_id = uuid.uuid4().hex[:16]
        self.channel = ""
        self.groups: dict[str, set[Connection]] = {services.BROADCAST_GROUP: set()}
        self._subscribed: set[str] = set()  # groups this process's channel is in
        self._group_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        await services.worker_heartbeat(worker=self.worker_id)
        self.channel = await self.layer.new_channel(prefix="chat.worker")
        await self._sync_group(services.BROADCAST_GROUP)
        self._tasks.append(asyncio.create_task(self._receive_forever(), name="chat-hub-receive"))
        self._tasks.append(asyncio.create_task(self._heartbeat_forever(), name="chat-hub-heartbeat"))
        interval = settings.CHAT_SERVER_EVENTS_INTERVAL
        # Another process cannot reach an in-memory layer, so the server emits itself.
        if interval > 0 and isinstance(self.layer, InMemoryChannelLayer):
            self._tasks.append(
                asyncio.create_task(emit_server_events(interval=interval), name="chat-server-events")
            )
        log.info("chat worker %s listening on %s", self.worker_id, self.channel)

    # --- membership of local sockets --------------------------------------

    def attach(self, connection: Connection) -> None:
        self.groups[services.BROADCAST_GROUP].add(connection)

    async def subscribe(self, connection: Connection, group: str) -> None:
        """Deliver the group's events to this socket from now on."""
        self.groups.setdefault(group, set()).add(connection)
        await self._sync_group(group)

    async def unsubscribe(self, connection: Connection, group: str) -> None:
        members = self.groups.get(group)
        if members is not None:
            members.discard(connection)
        await self._sync_group(group)

    async def detach(self, connection: Connection) -> None:
        emptied = []
        for group, members in self.groups.items():
            if connection in members:
                members.discard(connection)
                if not members:
                    emptied.append(group)
        for group in emptied:
            await self._sync_group(group)

    async def _sync_group(self, group: str) -> None:
        """Make this process's channel a member of the group exactly while it has sockets there."""
        async with self._group_lock:
            wanted = group == services.BROADCAST_GROUP or bool(self.groups.get(group))
            if wanted and group not in self._subscribed:
                await self.layer.group_add(group, self.channel)
                self._subscribed.add(group)
            elif not wanted and group in self._subscribed:
                self.groups.pop(group, None)
                self._subscribed.discard(group)
                await self.layer.group_discard(group, self.channel)

    # --- delivery ------------------------------------------------------------

    async def deliver(self, event: dict[str, Any]) -> None:
        """Hand one encoded frame to every local socket in the event's group."""
        group = event["group"]
        members = self.groups.get(group)
        if not members:
            return
        outgoing, exclude, message_id = Outgoing(event["text"]), event.get("exclude"), event.get("id")
        closes = event.get("closes") is not None
        for connection in list(members):
            if closes:
                members.discard(connection)
                connection.forget_room(group)
            if connection.connection_id == exclude:
                continue
            try:
                pending = connection.relay(group, message_id, outgoing)
                if pending is not None:  # the plain ASGI path; the fast path is done already
                    await pending
            except Exception:  # one broken socket must not cost the others their message
                log.exception("relay to %s failed", connection.connection_id)
        if closes:
            await self._sync_group(group)

    async def _receive_forever(self) -> None:
        while True:
            try:
                event = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("channel layer receive failed; retrying in 1 s")
                await asyncio.sleep(1)
                continue
            if event.get("type") == services.DELIVER_EVENT:
                await self.deliver(event)

    async def _heartbeat_forever(self) -> None:
        beats_per_renewal = GROUP_RENEW_SECONDS // HEARTBEAT_SECONDS
        beat = 0
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            beat += 1
            try:
                await services.worker_heartbeat(worker=self.worker_id)
                await services.workers_reap()
                if beat % beats_per_renewal == 0:
                    for group in list(self._subscribed):
                        await self.layer.group_add(group, self.channel)
            except Exception:
                log.exception("heartbeat failed; trying again in %s s", HEARTBEAT_SECONDS)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[Hub]] = weakref.WeakKeyDictionary()


async def get_hub() -> Hub:
    """This process's hub, started on first use (one per event loop)."""
    loop = asyncio.get_running_loop()
    future = _hubs.get(loop)
    if future is None:
        future = loop.create_future()
        _hubs[loop] = future
        hub = Hub()
        try:
            await hub.start()
        except BaseException as error:
            del _hubs[loop]
            future.set_exception(error)
            future.exception()  # retrieved: the caller re-raises it
            raise
        future.set_result(hub)
    return await asyncio.shield(future)
