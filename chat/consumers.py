"""The chat WebSocket: authenticate, parse, authorize, dispatch, relay.

The consumer holds one connection's state (its rooms, its counter, its rate limit)
and runs no query itself: storage lives in services and selectors, fan-out in the hub.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any, ClassVar

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from . import protocol as p
from . import selectors, services
from .auth import actor_for_scope, session_group
from .hub import Hub, get_hub
from .ratelimit import TokenBucket, open_connections
from .wire import FRAMES_EXTENSION, Outgoing, text_frame

log = logging.getLogger(__name__)

# A client that goes on sending after this many seconds' worth of refused frames in a
# row (100 at the default 20 a second; at least FLOOD_CLOSE_MIN) is not reading its
# errors: it is closed with 1008, so that the errors it ignores stop costing the server.
FLOOD_CLOSE_SECONDS = 5
FLOOD_CLOSE_MIN = 20
# A socket that goes while the database is down cannot record that it left its rooms;
# its process lives on, so no reaper would ever remove those memberships (ghost members,
# and no `presence` leave for the others). The cleanup is retried until the database
# takes it, waiting from the first delay, doubling up to the last.
CLEANUP_RETRY_SECONDS = (1.0, 30.0)

db = database_sync_to_async

_cleanups: set[asyncio.Task[None]] = set()  # pending retries, kept from the garbage collector


class ChatConsumer(AsyncWebsocketConsumer):
    # Delivery goes through the process's hub, so a socket needs no channel of its
    # own: no per-socket receive loop, no per-recipient channel-layer message.
    channel_layer_alias = "chat.no-per-socket-channel"
    # The handler of each command type, by method name: one table for every socket,
    # where a dict of bound methods would cost each socket about 1 KB.
    handlers: ClassVar[dict[type[p.Command], str]] = {
        p.Echo: "on_echo",
        p.Broadcast: "on_broadcast",
        p.Join: "on_join",
        p.Leave: "on_leave",
        p.RoomMessage: "on_room_message",
        p.CloseRoom: "on_close_room",
        p.History: "on_history",
        p.Ping: "on_ping",
        p.Disconnect: "on_disconnect",
    }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Handle one socket's events in order, in a plain loop.

        Channels' own loop waits on a task per event (built to multiplex a per-socket
        channel, which this consumer does not have) and its dispatch hops to a thread
        before every event to close stale database connections; every query here goes
        through database_sync_to_async, which does that itself.
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                message = await receive()
                handler = getattr(self, get_handler_name(message), None)
                if handler is None:
                    raise ValueError(f"No handler for message type {message['type']}")
                await handler(message)
        except StopConsumer:
            pass

    async def connect(self) -> None:
        self.connection_id = uuid.uuid4().hex
        self.hub: Hub | None = None
        self.count = 0  # messages this connection sent that produced a `message`
        self.rooms: dict[str, Any] = {}  # room name -> Room, for the rooms joined
        self.history_floor: dict[str, int] = {}  # group -> newest id its `joined` carried
        self.joining: dict[str, list[tuple[int | None, Outgoing]]] = {}  # group -> frames held back
        # The server's fast path for prepared frames (chat/uvicorn_ws.py), when it has one.
        self.write_frame = self.scope.get("extensions", {}).get(FRAMES_EXTENSION, {}).get("write")
        rate = settings.CHAT_RATE_LIMIT
        self.limiter = TokenBucket(rate=rate, burst=2 * rate)  # the protocol allows bursts of 2x
        self.refused_in_a_row = 0
        self.flood_threshold = max(int(FLOOD_CLOSE_SECONDS * rate), FLOOD_CLOSE_MIN)
        self.counted = False  # whether open_connections counts this socket
        self.actor = await actor_for_scope(self.scope, self.connection_id)
        await self.accept()
        if self.actor is None:
            await self.close(code=p.CloseCode.LOGIN_REQUIRED)
            return
        if not await self.open_within_limits():
            return
        self.hub = await get_hub()
        self.hub.attach(self)
        await self.follow_session()
        await self.send_event(
            {"type": "message", "kind": "system", "data": "Connected", "count": 0, "user": self.actor.name}
        )

    async def disconnect(self, code: int) -> None:
        """Leave every room, so the other members see this socket go, whatever happens here."""
        if self.counted:
            self.counted = False
            await open_connections.release(self.actor.key, self.connection_id)
        if self.hub is None:
            return
        try:
            await self.hub.detach(self)
            if self.rooms or self.joining:
                self.rooms.clear()
                await services.connection_leave_all(actor=self.actor, connection=self.connection_id)
        except Exception:
            log.exception("cleanup of connection %s failed; retrying until it succeeds", self.connection_id)
            task = asyncio.create_task(_leave_all_until_done(self.actor, self.connection_id))
            _cleanups.add(task)
            task.add_done_callback(_cleanups.discard)

    # --- incoming frames ----------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.hub is None:
            return  # refused at connect; the close is on its way
        command: p.Command | None = None
        try:
            if not self.limiter.allow():
                self.refused_in_a_row += 1
                if self.refused_in_a_row > self.flood_threshold:
                    if self.refused_in_a_row == self.flood_threshold + 1:
                        log.info("closing connection %s: it floods", self.connection_id)
                        await self.close(code=p.CloseCode.POLICY_VIOLATION)
                    return  # closing: the rest of the flood gets no answers
                raise p.ProtocolError(
                    p.ErrorCode.RATE_LIMITED,
                    f"Too many messages: the limit is {settings.CHAT_RATE_LIMIT:g} a second. "
                    "This one was not processed; slow down and send it again.",
                    ref=_ref_of(text_data),
                )
            self.refused_in_a_row = 0
            command = p.parse_client_message(text_data, bytes_data, max_chars=settings.CHAT_MAX_MESSAGE_CHARS)
            started = time.monotonic()
            try:
                await getattr(self, self.handlers[type(command)])(command)
            finally:
                self.limiter.excuse(time.monotonic() - started)  # frames queued meanwhile are no flood
        except p.ProtocolError as error:
            if command is not None:
                # Raised by a handler or a service, which never see the request's ref.
                error.ref = command.ref
            await self.send_event(error.as_event())
        except Exception:
            log.exception("request %r on connection %s failed", command, self.connection_id)
            error = p.ProtocolError(
                p.ErrorCode.UNAVAILABLE,
                "The server could not complete this request, and nothing was stored. Try again.",
                ref=command.ref if command else None,
            )
            await self.send_event(error.as_event())

    # --- handlers, one per command type -------------------------------------

    async def on_echo(self, command: p.Echo) -> None:
        self.count += 1
        await self.send_event(
            p.with_ref(
                {"type": "message", "kind": "echo", "data": command.data, "count": self.count}, command.ref
            )
        )

    async def on_broadcast(self, command: p.Broadcast) -> None:
        posted = await services.broadcast_post(
            actor=self.actor, body=command.data, count=self.count + 1, connection=self.connection_id
        )
        self.count += 1
        await self.send_text(p.with_ref_text(posted.text, command.ref))

    async def on_join(self, command: p.Join) -> None:
        if command.room in self.rooms:
            history, _more = await db(selectors.room_history)(name=command.room)
            await self.send_joined(command, history)
            return
        limit = settings.CHAT_MAX_ROOMS_PER_CONNECTION
        if limit and len(self.rooms) + len(self.joining) >= limit:
            raise p.ProtocolError(
                p.ErrorCode.TOO_MANY_ROOMS,
                f"This connection is in {len(self.rooms)} rooms, the most allowed; leave one to join another.",
            )
        room = await services.room_open(name=command.room, actor=self.actor)
        group = room.group_name
        # Subscribe before reading history, and hold live frames back until `joined`
        # is sent: nothing posted meanwhile is missed, and nothing arrives twice.
        self.joining[group] = []
        await self.hub.subscribe(self, group)
        try:
            joined = await services.room_join(
                room=room, actor=self.actor, connection=self.connection_id, worker=self.hub.worker_id
            )
        except BaseException:
            del self.joining[group]
            await self.hub.unsubscribe(self, group)
            raise
        self.rooms[room.name] = room
        self.history_floor[group] = joined.last_id
        await self.send_joined(command, joined.history)
        for message_id, outgoing in self.joining.pop(group):
            pending = self.relay(group, message_id, outgoing)
            if pending is not None:
                await pending

    async def send_joined(self, command: p.Join, history: list[dict[str, Any]]) -> None:
        await self.send_event(
            p.with_ref(
                {"type": "joined", "room": command.room, "rooms": sorted(self.rooms), "history": history},
                command.ref,
            )
        )

    async def on_leave(self, command: p.Leave) -> None:
        room = self.member_room(command.room)
        del self.rooms[room.name]
        await self.hub.unsubscribe(self, room.group_name)
        try:
            await services.room_leave(room=room, actor=self.actor, connection=self.connection_id)
        except BaseException:
            self.rooms[room.name] = room
            await self.hub.subscribe(self, room.group_name)
            raise
        await self.send_event(
            p.with_ref({"type": "left", "room": room.name, "rooms": sorted(self.rooms)}, command.ref)
        )

    async def on_room_message(self, command: p.RoomMessage) -> None:
        room = self.member_room(command.room)
        posted = await services.room_message_post(
            room=room,
            actor=self.actor,
            body=command.data,
            count=self.count + 1,
            connection=self.connection_id,
        )
        self.count += 1
        await self.send_text(p.with_ref_text(posted.text, command.ref))

    async def on_close_room(self, command: p.CloseRoom) -> None:
        text = await services.room_close(name=command.room, actor=self.actor, connection=self.connection_id)
        room = self.rooms.get(command.room)
        if room is not None:
            self.forget_room(room.group_name)
            await self.hub.unsubscribe(self, room.group_name)
        await self.send_text(p.with_ref_text(text, command.ref))

    async def on_history(self, command: p.History) -> None:
        messages, more = await db(selectors.room_history)(
            name=command.room, before=command.before, since=command.since, limit=command.limit
        )
        await self.send_event(
            p.with_ref(
                {"type": "history", "room": command.room, "messages": messages, "more": more}, command.ref
            )
        )

    async def on_ping(self, command: p.Ping) -> None:
        await self.send_event(p.with_ref({"type": "pong", "id": command.id}, command.ref))

    async def on_disconnect(self, command: p.Disconnect) -> None:
        await self.send_event(
            p.with_ref(
                {"type": "message", "kind": "system", "data": "Disconnected", "count": self.count},
                command.ref,
            )
        )
        await self.close(code=p.CloseCode.NORMAL)

    def member_room(self, name: str) -> Any:
        room = self.rooms.get(name)
        if room is None:
            raise p.ProtocolError(p.ErrorCode.NOT_IN_ROOM, f"You are not in room {name!r}; join it first.")
        return room

    # --- called by the hub ----------------------------------------------------

    def relay(self, group: str, message_id: int | None, outgoing: Outgoing) -> Awaitable[None] | None:
        """Send a frame the hub fanned out, unless `joined` already carried it.

        Synchronous on the server's fast path (no coroutine per recipient); otherwise
        returns the ASGI send for the hub to await.
        """
        if self.joining:
            held = self.joining.get(group)
            if held is not None:
                held.append((message_id, outgoing))
                return None
        if message_id is not None and message_id <= self.history_floor.get(group, 0):
            return None
        if self.write_frame is None:
            return self.send(text_data=outgoing.text)
        self.write_frame(outgoing.frame)
        return None

    def forget_room(self, group: str) -> None:
        """The room was closed: it is no longer one of this socket's rooms."""
        for name, room in list(self.rooms.items()):
            if room.group_name == group:
                del self.rooms[name]
        self.history_floor.pop(group, None)

    # --- abuse limits and logout (docs/protocol.md, "Limits") -------------------

    async def open_within_limits(self) -> bool:
        """Count this socket against its user's or session's limit; close it if over."""
        limit = settings.CHAT_MAX_CONNECTIONS_PER_USER
        # A client without a session cookie is an identity of its own: nothing to count.
        if not limit or self.actor.key.startswith("conn:"):
            return True
        if not await open_connections.acquire(self.actor.key, self.connection_id, limit):
            log.info("refused connection %s: %s has %d open", self.connection_id, self.actor.key, limit)
            await self.close(code=p.CloseCode.TOO_MANY_CONNECTIONS)
            return False
        self.counted = True
        return True

    async def follow_session(self) -> None:
        """Subscribe a logged-in socket to its session's group, where logging out is announced."""
        session = self.scope.get("session")
        if self.actor.user_id is None or session is None or not session.session_key:
            return
        await self.hub.subscribe(self, session_group(session.session_key))

    async def send_event(self, event: dict[str, Any]) -> None:
        await self.send_text(p.encode(event))

    async def send_text(self, text: str) -> None:
        """Send one frame to this socket, by the server's fast path when it offers one."""
        if self.write_frame is not None:
            self.write_frame(text_frame(text.encode()))
        else:
            await self.send(text_data=text)


async def _leave_all_until_done(actor: Any, connection: str) -> None:
    """Take a departed socket out of its rooms once the database is back, announcing each leave."""
    delay, longest = CLEANUP_RETRY_SECONDS
    while True:
        await asyncio.sleep(delay)
        try:
            await services.connection_leave_all(actor=actor, connection=connection)
        except Exception as error:
            delay = min(2 * delay, longest)
            log.warning(
                "cleanup of connection %s failed again (%r); next try in %g s", connection, error, delay
            )
        else:
            log.info("cleanup of connection %s done after the database came back", connection)
            return


def _ref_of(text: str | None) -> p.Ref:
    try:
        return p.read_ref(p.decode_frame(text, None))
    except p.ProtocolError:
        return None


class EchoConsumer(AsyncWebsocketConsumer):
    """Test only (CHAT_ECHO_ROUTE): every frame back verbatim, for the Autobahn conformance run."""

    channel_layer_alias = "chat.no-per-socket-channel"  # no channel layer: nothing but echo

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)
