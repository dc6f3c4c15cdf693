"""Writes: store messages, create, join, leave and close rooms, publish server events.

Every write runs in one transaction in a database thread and returns the events it
caused; `@writes` publishes them from the event loop once that transaction has
committed, so nobody ever sees a message that is not stored, and the database thread
never waits for the channel layer. Room messages and broadcasts take the same path in
batches (`_PostBatcher`). This is the only module that sends to the channel layer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ParamSpec

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection as db_connection
from django.db import transaction
from django.utils import timezone

from . import selectors
from .auth import Actor
from .models import Membership, Message, Room, Worker
from .protocol import ErrorCode, ProtocolError, encode

log = logging.getLogger(__name__)

BROADCAST_GROUP = "chat.all"  # every process's channel: broadcasts and server events
DELIVER_EVENT = "chat.deliver"  # the one channel-layer event type; the hub handles it


# --- Fan-out -----------------------------------------------------------------


def fanout_event(
    *,
    group: str,
    text: str,
    exclude: str | None = None,
    message_id: int | None = None,
    closes_room: int | None = None,
) -> dict[str, Any]:
    """The channel-layer event for one frame to a group: encoded once, for every recipient.

    `frames` is a list of [text, connection to skip, message id]; `coalesce` joins the
    frames of consecutive events to one group into one event.
    """
    return {
        "type": DELIVER_EVENT,
        "group": group,
        "frames": [[text, exclude, message_id]],
        "closes": closes_room,
    }


def close_sockets_event(*, group: str, code: int) -> dict[str, Any]:
    """The channel-layer event that closes every socket in a group, on every process, with `code`."""
    return {"type": DELIVER_EVENT, "group": group, "frames": [], "closes": None, "close_code": code}


def _joinable(event: dict[str, Any]) -> bool:
    return not event["closes"] and event.get("close_code") is None


def coalesce(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join runs of events to the same group into one event, keeping every frame's order.

    Under load a stored batch holds many messages to one room; as one event they cost
    one channel-layer message (one Redis PUBLISH) and one pass over the local sockets.
    Only consecutive events join, so no frame overtakes another on its way to a socket.
    """
    joined: list[dict[str, Any]] = []
    for event in events:
        last = joined[-1] if joined else None
        if last is not None and last["group"] == event["group"] and _joinable(last) and _joinable(event):
            last["frames"].extend(event["frames"])
        else:
            joined.append({**event, "frames": list(event["frames"])})  # the caller's events stay as they were
    return joined


async def publish(event: dict[str, Any]) -> None:
    """Send one event to every process that has sockets in its group."""
    await get_channel_layer().group_send(event["group"], event)


async def _publish_committed(events: list[dict[str, Any]]) -> None:
    """Publish the events of a committed write. A failure here undoes nothing and loses
    nothing: the caller still gets its answer, and clients catch up with `history`."""
    for event in coalesce(events):
        try:
            await publish(event)
        except Exception:
            log.exception(
                "could not publish to %s after commit; clients recover from history", event["group"]
            )


@dataclass(slots=True)
class Outcome:
    """What a write returns to its caller, and the events to publish once it commits."""

    value: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)


P = ParamSpec("P")


def writes(store: Callable[P, Outcome]) -> Callable[P, Awaitable[Any]]:
    """Make an atomic, synchronous store function an async service that publishes after commit."""
    atomic_store = database_sync_to_async(transaction.atomic(store))

    @functools.wraps(store)
    async def service(*args: P.args, **kwargs: P.kwargs) -> Any:
        outcome = await atomic_store(*args, **kwargs)
        await _publish_committed(outcome.events)
        return outcome.value

    return service


# --- Messages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Posted:
    """A stored message and its frame, as every recipient but the sender gets it."""

    message_id: int
    text: str


@dataclass(frozen=True, slots=True)
class _Post:
    room: Room | None
    actor: Actor
    body: str
    count: int
    connection: str


# One transaction stores a whole batch: under load, messages that arrive while one
# batch is being written go together in the next, and their fan-out leaves together
# (one write per socket for the lot). The cap bounds one transaction's duration.
BATCH_MAX = 256


_INSERT_FIELDS = ("room", "sender", "sender_user", "body", "created")


def _insert_messages(rows: list[tuple[int | None, str, int | None, str]], *, created: datetime) -> list[int]:
    """INSERT (room id, sender, sender's user id, body) rows with one statement; their ids.

    The hot path of every room message. The ORM's save() or bulk_create() spends about
    eight times as long building model instances and converting each value as SQLite
    spends storing them (docs/performance.md): these values need no conversion but the
    time, which is the same for the whole batch. One statement for the batch also means
    one trip into the database driver. The ids come back in the order of the rows, as
    Django's bulk_create also relies on.
    """
    if not rows:
        return []
    fields = [Message._meta.get_field(name) for name in _INSERT_FIELDS]
    quote = db_connection.ops.quote_name
    row_sql = "({})".format(", ".join(["%s"] * len(fields)))
    sql = "INSERT INTO {} ({}) VALUES {} RETURNING {}".format(
        quote(Message._meta.db_table),
        ", ".join(quote(field.column) for field in fields),
        ", ".join([row_sql] * len(rows)),
        quote(Message._meta.pk.column),
    )
    created_value = fields[-1].get_db_prep_save(created, db_connection)
    params: list[Any] = []
    for row in rows:
        params += row
        params.append(created_value)
    with db_connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = [pk for (pk,) in cursor.fetchall()]
    if len(ids) != len(rows):
        raise RuntimeError(f"INSERT returned {len(ids)} ids for {len(rows)} messages")
    return ids


def _closed_rooms(posts: list[_Post]) -> set[int]:
    """The rooms of these posts that were closed since their senders joined them.

    Read in the batch's own write transaction, so a close either commits before it (and
    the post is refused, as a close removed every member) or after the posts are stored.
    """
    room_ids = sorted({post.room.pk for post in posts if post.room is not None})
    if not room_ids:
        return set()
    quote = db_connection.ops.quote_name
    pk, closed = Room._meta.pk.column, Room._meta.get_field("closed").column
    sql = "SELECT {} FROM {} WHERE {} IN ({}) AND {} IS NOT NULL".format(
        quote(pk), quote(Room._meta.db_table), quote(pk), ", ".join(["%s"] * len(room_ids)), quote(closed)
    )
    with db_connection.cursor() as cursor:  # raw, like the INSERT: the ORM would cost more than both
        cursor.execute(sql, room_ids)
        return {room_id for (room_id,) in cursor.fetchall()}


def _store_posts(posts: list[_Post]) -> Outcome:
    """Store the posts that can be: each gets a Posted, or the ProtocolError that refused it."""
    closed = _closed_rooms(posts)
    refused = [post.room is not None and post.room.pk in closed for post in posts]
    accepted = [post for post, was_refused in zip(posts, refused, strict=True) if not was_refused]
    rows = [
        (post.room.pk if post.room is not None else None, post.actor.name, post.actor.user_id, post.body)
        for post in accepted
    ]
    now = timezone.now()
    ids = iter(_insert_messages(rows, created=now))
    ts = selectors.timestamp(now)
    outcome = Outcome([], [])
    for post, was_refused in zip(posts, refused, strict=True):
        room = post.room
        if was_refused:
            outcome.value.append(
                ProtocolError(
                    ErrorCode.NOT_IN_ROOM, f"Room {room.name!r} was closed; join it again to reopen it."
                )
            )
            continue
        message_id = next(ids)
        event = selectors.message_event(
            message_id=message_id,
            sender=post.actor.name,
            ts=ts,
            body=post.body,
            room_name=room.name if room is not None else None,
        )
        event["count"] = post.count
        text = encode(event)
        group = room.group_name if room is not None else BROADCAST_GROUP
        outcome.value.append(Posted(message_id, text))
        outcome.events.append(
            fanout_event(group=group, text=text, exclude=post.connection, message_id=message_id)
        )
    return outcome


_store_posts_atomic = database_sync_to_async(transaction.atomic(_store_posts))


class _PostBatcher:
    """Stores the posts of one event loop in batches, then publishes them in order."""

    def __init__(self) -> None:
        self.waiting: list[tuple[_Post, asyncio.Future[Posted]]] = []  # Posted, or a ProtocolError
        self.task: asyncio.Task[None] | None = None

    async def post(self, post: _Post) -> Posted:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((post, future))
        if self.task is None:
            self.task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[:BATCH_MAX], self.waiting[BATCH_MAX:]
                try:
                    outcome = await _store_posts_atomic([post for post, _ in batch])
                except Exception as error:  # nothing of the batch was stored: each sender hears so
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                await _publish_committed(outcome.events)
                for (_, future), result in zip(batch, outcome.value, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, ProtocolError):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.task = None


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _PostBatcher] = weakref.WeakKeyDictionary()


def _batcher() -> _PostBatcher:
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = _batchers[loop] = _PostBatcher()
    return batcher


async def broadcast_post(*, actor: Actor, body: str, count: int, connection: str) -> Posted:
    """Store a broadcast and send it to every connected client."""
    return await _batcher().post(_Post(room=None, actor=actor, body=body, count=count, connection=connection))


async def room_message_post(*, room: Room, actor: Actor, body: str, count: int, connection: str) -> Posted:
    """Store a room message and send it to the room's members."""
    return await _batcher().post(_Post(room=room, actor=actor, body=body, count=count, connection=connection))


async def server_event_publish(*, data: str, count: int) -> None:
    """Send a server-generated event to every connected client (not stored)."""
    event = {
        "type": "message",
        "kind": "server",
        "data": data,
        "count": count,
        "ts": selectors.timestamp(timezone.now()),
    }
    await publish(fanout_event(group=BROADCAST_GROUP, text=encode(event)))


# --- Rooms -------------------------------------------------------------------


@writes
def room_open(*, name: str, actor: Actor) -> Outcome:
    """The room of that name, created with the actor as creator, or reopened if closed."""
    room, _created = Room.objects.get_or_create(
        name=name,
        defaults={"creator_key": actor.key, "creator_name": actor.name, "creator_user_id": actor.user_id},
    )
    if room.closed is not None:
        room.closed = None
        room.closed_by = ""
        room.save(update_fields=["closed", "closed_by"])
    return Outcome(room)


def _presence(*, room: Room, event: str, user: str, exclude: str | None = None) -> dict[str, Any]:
    members = selectors.room_member_count(room=room)
    text = encode({"type": "presence", "room": room.name, "event": event, "user": user, "members": members})
    return fanout_event(group=room.group_name, text=text, exclude=exclude)


@dataclass(frozen=True, slots=True)
class Joined:
    history: list[dict[str, Any]]
    last_id: int  # the newest message in `history` (0 when empty): later ones arrive live


@writes
def room_join(*, room: Room, actor: Actor, connection: str, worker: str) -> Outcome:
    """Make the connection a member, announce it to every member, and return recent history."""
    _membership, created = Membership.objects.get_or_create(
        room=room, connection=connection, defaults={"worker_id": worker, "user": actor.name}
    )
    history, _more = selectors.room_history(name=room.name)
    joined = Joined(history=history, last_id=history[-1]["id"] if history else 0)
    return Outcome(joined, [_presence(room=room, event="join", user=actor.name)] if created else [])


def _leave(*, room: Room, actor: Actor, connection: str) -> list[dict[str, Any]]:
    deleted, _ = Membership.objects.filter(room=room, connection=connection).delete()
    return [_presence(room=room, event="leave", user=actor.name, exclude=connection)] if deleted else []


@writes
def room_leave(*, room: Room, actor: Actor, connection: str) -> Outcome:
    """Remove the connection from the room and tell the remaining members."""
    return Outcome(None, _leave(room=room, actor=actor, connection=connection))


@writes
def room_close(*, name: str, actor: Actor, connection: str) -> Outcome:
    """Close a room for its creator or a staff user; every member gets `room_closed`."""
    room = Room.objects.select_for_update().filter(name=name).first()
    if room is None:
        raise ProtocolError(ErrorCode.INVALID, f"There is no room named {name!r} to close.")
    if not (actor.is_staff or room.creator_key == actor.key):
        raise ProtocolError(
            ErrorCode.FORBIDDEN, f"Only the room's creator ({room.creator_name}) or staff can close it."
        )
    room.closed = timezone.now()
    room.closed_by = actor.name
    room.save(update_fields=["closed", "closed_by"])
    Membership.objects.filter(room=room).delete()
    text = encode({"type": "room_closed", "room": room.name, "by": actor.name})
    event = fanout_event(group=room.group_name, text=text, exclude=connection, closes_room=room.pk)
    return Outcome(text, [event])


@writes
def connection_leave_all(*, actor: Actor, connection: str) -> Outcome:
    """A socket went away: leave all its rooms, each with its own presence event."""
    events = []
    for membership in Membership.objects.filter(connection=connection).select_related("room"):
        events += _leave(room=membership.room, actor=actor, connection=connection)
    return Outcome(None, events)


# --- Workers -------------------------------------------------------------------


@writes
def worker_heartbeat(*, worker: str) -> Outcome:
    Worker.objects.update_or_create(id=worker, defaults={"heartbeat": timezone.now()})
    return Outcome()


@writes
def workers_reap(*, silent_for: float, keep: str | None = None) -> Outcome:
    """Drop the members of processes silent for `silent_for` seconds (all but `keep` when 0),
    announcing each departure."""
    cutoff = timezone.now() - timedelta(seconds=silent_for)
    events = []
    for worker in Worker.objects.filter(heartbeat__lt=cutoff).exclude(id=keep or ""):
        for membership in Membership.objects.filter(worker=worker).select_related("room"):
            membership.delete()
            events.append(_presence(room=membership.room, event="leave", user=membership.user))
        worker.delete()
    return Outcome(len(events), events)
