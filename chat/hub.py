"""Per-process fan-out: one channel-layer channel per process, relayed to its own sockets.

The tutorial pattern gives every socket a channel and sends one channel-layer message
per recipient, each consumer then encoding its own copy. Here a room message is one
channel-layer message per *process*, carrying the frame's text already encoded; the
hub of each process hands that same text to its local sockets.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable
from typing import Any, Protocol

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from . import services
from .emitter import emit_server_events
from .protocol import CloseCode
from .runtime import collect_periodically
from .wire import Outgoing

log = logging.getLogger(__name__)

# Heartbeat and worker timeout: settings.CHAT_HEARTBEAT_SECONDS and CHAT_WORKER_TIMEOUT.
# Channel-layer groups expire (a day by default); renewing hourly keeps a long-lived
# process in its groups at the cost of one write per group per hour.
GROUP_RENEW_SECONDS = 3600
# How soon to try again to rejoin the channel layer's groups after Redis went away.
LAYER_RETRY_SECONDS = 1.0
PROBE_EVENT = "chat.probe"  # the hub's own check that its channel still receives


class Connection(Protocol):
    connection_id: str
    actor: Any  # chat.auth.Actor
    rooms: dict[str, Any]  # room name -> Room, the rooms this socket is a member of

    def relay(self, group: str, message_id: int | None, outgoing: Outgoing) -> Awaitable[None] | None: ...

    async def close(self, code: int) -> None: ...

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
        self._layer_lost = asyncio.Event()  # set when the channel layer failed: rejoin groups
        # Whether events may have gone missing since the layer last failed: once it is back,
        # this process's sockets are closed so that their clients catch up (see _rejoin_layer_forever).
        self._missed_events = False
        self._probes_sent = 0
        self._probes_seen = 0

    async def start(self) -> None:
        await services.worker_heartbeat(worker=self.worker_id)
        if isinstance(self.layer, InMemoryChannelLayer):
            # Nobody else can reach this layer, so this is the chat's only process: every
            # other process on record is an earlier run of it, and its members are ghosts.
            await services.workers_reap(silent_for=0, keep=self.worker_id)
        self.channel = await self.layer.new_channel(prefix="chat.worker")
        await self._sync_group(services.BROADCAST_GROUP)
        self._tasks.append(asyncio.create_task(self._receive_forever(), name="chat-hub-receive"))
        self._tasks.append(asyncio.create_task(self._heartbeat_forever(), name="chat-hub-heartbeat"))
        self._tasks.append(asyncio.create_task(self._rejoin_layer_forever(), name="chat-hub-rejoin"))
        self._tasks.append(asyncio.create_task(collect_periodically(), name="chat-full-collection"))
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
        """Hand the event's encoded frames, in order, to every local socket in its group."""
        group = event["group"]
        members = self.groups.get(group)
        if not members:
            return
        if event.get("close_code") is not None:
            await self._close(list(members), event["close_code"])
            return
        frames = [(Outgoing(text), exclude, message_id) for text, exclude, message_id in event["frames"]]
        closes = event.get("closes") is not None
        for connection in list(members):
            if closes:
                members.discard(connection)
                connection.forget_room(group)
            try:
                for outgoing, exclude, message_id in frames:
                    if connection.connection_id != exclude:
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
                log.exception("channel layer receive failed; retrying in %g s", LAYER_RETRY_SECONDS)
                self._layer_failed()
                await asyncio.sleep(LAYER_RETRY_SECONDS)
                continue
            kind = event.get("type")
            if kind == services.DELIVER_EVENT:
                await self.deliver(event)
            elif kind == PROBE_EVENT:
                self._probes_seen = max(self._probes_seen, event.get("seq", 0))

    # --- healing: Redis restarts, dead processes, this process cut off --------

    def _layer_failed(self) -> None:
        self._missed_events = True
        self._layer_lost.set()

    async def _rejoin_layer_forever(self) -> None:
        """After the channel layer failed, put this process's channel back in its groups,
        then close this process's sockets with 1012 so that their clients catch up.

        A Redis restarted without persistence has forgotten every group (the core
        layer keeps them as keys); re-adding is harmless where it remembers them. While
        the layer was down, events published meanwhile (by any process) reached nobody
        here; a socket that stayed open would never learn of them. The close tells its
        client to reconnect and ask `history since` its last id, as after any drop.
        """
        while True:
            await self._layer_lost.wait()
            self._layer_lost.clear()
            try:
                async with self._group_lock:
                    for group in list(self._subscribed):
                        await self.layer.group_add(group, self.channel)
            except Exception as error:
                log.warning(
                    "channel layer still unavailable (%r); retrying in %g s", error, LAYER_RETRY_SECONDS
                )
                self._layer_lost.set()
                await asyncio.sleep(LAYER_RETRY_SECONDS)
                continue
            log.info("channel layer reachable again; %d group(s) rejoined", len(self._subscribed))
            if self._missed_events:
                self._missed_events = False
                await self._close_all(CloseCode.SERVICE_RESTART)

    async def _close_all(self, code: int) -> None:
        connections = list(self.groups.get(services.BROADCAST_GROUP, ()))
        log.warning(
            "closing %d socket(s) with %s so their clients catch up after the outage", len(connections), code
        )
        await self._close(connections, code)

    async def _close(self, connections: list[Connection], code: int) -> None:
        for connection in connections:
            try:
                await connection.close(code=code)
            except Exception:  # one broken socket must not keep the others open
                log.exception("could not close %s", connection.connection_id)

    async def _probe_layer(self) -> None:
        """Send this channel a probe; if the previous one never came back, rejoin the groups."""
        if self._probes_seen < self._probes_sent:
            log.warning("the channel layer lost a probe; rejoining this process's groups")
            self._layer_failed()
        self._probes_sent += 1
        try:
            await self.layer.send(self.channel, {"type": PROBE_EVENT, "seq": self._probes_sent})
        except Exception as error:
            log.warning("channel layer unavailable (%r)", error)
            self._layer_failed()

    async def _heartbeat_forever(self) -> None:
        """Beat, reap dead processes, and undo this process's own reaping if it happened.

        A process reaps others only after beating without a miss for a whole timeout:
        after a database outage every process's last beat is old, and the first to get
        through must not declare all the others dead.
        """
        interval = settings.CHAT_HEARTBEAT_SECONDS
        timeout = settings.CHAT_WORKER_TIMEOUT
        last_beat = healthy_since = time.monotonic()  # start() beat
        next_renewal = last_beat + GROUP_RENEW_SECONDS
        while True:
            await asyncio.sleep(interval)
            await self._probe_layer()
            try:
                await services.worker_heartbeat(worker=self.worker_id)
            except Exception:
                log.exception("heartbeat failed; trying again in %g s", interval)
                healthy_since = None
                continue
            now = time.monotonic()
            if now - last_beat >= timeout - interval:
                # Silent long enough that another process may have removed this one's members.
                await self._restore_memberships()
            last_beat = now
            if healthy_since is None:
                healthy_since = now
            try:
                if now - healthy_since >= timeout:
                    await services.workers_reap(silent_for=timeout)
                if now >= next_renewal:
                    next_renewal = now + GROUP_RENEW_SECONDS
                    for group in list(self._subscribed):
                        await self.layer.group_add(group, self.channel)
            except Exception:
                log.exception("reaping or group renewal failed; trying again in %g s", interval)

    async def _restore_memberships(self) -> None:
        """Record again the room memberships of this process's sockets (a no-op for those kept)."""
        restored = 0
        for group, members in list(self.groups.items()):
            if group == services.BROADCAST_GROUP:
                continue
            for connection in list(members):
                room = next((r for r in connection.rooms.values() if r.group_name == group), None)
                if room is None:
                    continue  # still joining, or just left: its own request records it
                try:
                    await services.room_join(
                        room=room,
                        actor=connection.actor,
                        connection=connection.connection_id,
                        worker=self.worker_id,
                    )
                    if connection not in self.groups.get(group, ()):  # left meanwhile: undo
                        await services.room_leave(
                            room=room, actor=connection.actor, connection=connection.connection_id
                        )
                    restored += 1
                except Exception:
                    log.exception("could not restore %s in %s", connection.connection_id, group)
        log.warning("heartbeats were missing for a whole timeout; %d membership(s) checked", restored)


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
