"""Writes: store messages, create, join, leave and close rooms, publish server events.

Each write is atomic and hands its event to `publish()` only once the transaction
has committed, so nobody ever sees a message that is not stored. This is the only
module that sends to the channel layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
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
    """The channel-layer event for one frame to a group: encoded once, for every recipient."""
    return {
        "type": DELIVER_EVENT,
        "group": group,
        "text": text,
        "exclude": exclude,
        "id": message_id,
        "closes": closes_room,
    }


async def publish(event: dict[str, Any]) -> None:
    """Send one event to every process that has sockets in its group."""
    await get_channel_layer().group_send(event["group"], event)


def publish_on_commit(event: dict[str, Any]) -> None:
    """Publish once the surrounding transaction commits (at once when there is none)."""
    transaction.on_commit(lambda: async_to_sync(publish)(event))


# --- Messages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Posted:
    """A stored message and its frame, as every recipient but the sender gets it."""

    message_id: int
    text: str


@transaction.atomic
def broadcast_post(*, actor: Actor, body: str, count: int, connection: str) -> Posted:
    message = Message.objects.create(room=None, sender=actor.name, sender_user_id=actor.user_id, body=body)
    text = encode(selectors.message_as_event(message) | {"count": count})
    publish_on_commit(
        fanout_event(group=BROADCAST_GROUP, text=text, exclude=connection, message_id=message.pk)
    )
    return Posted(message.pk, text)


@transaction.atomic
def room_message_post(*, room: Room, actor: Actor, body: str, count: int, connection: str) -> Posted:
    message = Message.objects.create(room=room, sender=actor.name, sender_user_id=actor.user_id, body=body)
    text = encode(selectors.message_as_event(message, room_name=room.name) | {"count": count})
    publish_on_commit(
        fanout_event(group=room.group_name, text=text, exclude=connection, message_id=message.pk)
    )
    return Posted(message.pk, text)


async def server_event_publish(*, data: str, count: int) -> None:
    """Send a server-generated event to every connected client."""
    event = {
        "type": "message",
        "kind": "server",
        "data": data,
        "count": count,
        "ts": selectors.timestamp(timezone.now()),
    }
    await publish(fanout_event(group=BROADCAST_GROUP, text=encode(event)))


# --- Rooms -------------------------------------------------------------------


@transaction.atomic
def room_open(*, name: str, actor: Actor) -> Room:
    """The room of that name, created with the actor as creator, or reopened if closed."""
    room, _created = Room.objects.get_or_create(
        name=name,
        defaults={"creator_key": actor.key, "creator_name": actor.name, "creator_user_id": actor.user_id},
    )
    if room.closed is not None:
        room.closed = None
        room.closed_by = ""
        room.save(update_fields=["closed", "closed_by"])
    return room


def _presence_text(*, room: Room, event: str, user: str) -> str:
    members = selectors.room_member_count(room=room)
    return encode({"type": "presence", "room": room.name, "event": event, "user": user, "members": members})


@dataclass(frozen=True, slots=True)
class Joined:
    history: list[dict[str, Any]]
    last_id: int  # the newest message in `history` (0 when empty): later ones arrive live


@transaction.atomic
def room_join(*, room: Room, actor: Actor, connection: str, worker: str) -> Joined:
    """Make the connection a member, announce it to every member, and return recent history."""
    _membership, created = Membership.objects.get_or_create(
        room=room, connection=connection, defaults={"worker_id": worker, "user": actor.name}
    )
    history, _more = selectors.room_history(name=room.name)
    if created:
        text = _presence_text(room=room, event="join", user=actor.name)
        publish_on_commit(fanout_event(group=room.group_name, text=text))
    return Joined(history=history, last_id=history[-1]["id"] if history else 0)


@transaction.atomic
def room_leave(*, room: Room, actor: Actor, connection: str) -> None:
    """Remove the connection from the room and tell the remaining members."""
    deleted, _ = Membership.objects.filter(room=room, connection=connection).delete()
    if deleted:
        text = _presence_text(room=room, event="leave", user=actor.name)
        publish_on_commit(fanout_event(group=room.group_name, text=text, exclude=connection))


@transaction.atomic
def room_close(*, name: str, actor: Actor, connection: str) -> str:
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
    publish_on_commit(fanout_event(group=room.group_name, text=text, exclude=connection, closes_room=room.pk))
    return text


def connection_leave_all(*, actor: Actor, connection: str) -> None:
    """A socket went away: leave all its rooms, each with its own presence event."""
    memberships = Membership.objects.filter(connection=connection).select_related("room")
    for membership in memberships:
        room_leave(room=membership.room, actor=actor, connection=connection)


# --- Workers -------------------------------------------------------------------

# A process that missed this many seconds of heartbeats is dead: its members go.
WORKER_TIMEOUT = timedelta(seconds=60)


def worker_heartbeat(*, worker: str) -> None:
    Worker.objects.update_or_create(id=worker, defaults={"heartbeat": timezone.now()})


def workers_reap(*, now: Any = None) -> int:
    """Drop the members of processes that stopped beating; returns how many went."""
    cutoff = (now or timezone.now()) - WORKER_TIMEOUT
    dead = list(Worker.objects.filter(heartbeat__lt=cutoff).values_list("id", flat=True))
    gone = 0
    for worker in dead:
        gone += _worker_remove(worker=worker)
    return gone


@transaction.atomic
def _worker_remove(*, worker: str) -> int:
    memberships = list(Membership.objects.filter(worker_id=worker).select_related("room"))
    for membership in memberships:
        membership.delete()
        text = _presence_text(room=membership.room, event="leave", user=membership.user)
        publish_on_commit(fanout_event(group=membership.room.group_name, text=text))
    Worker.objects.filter(id=worker).delete()
    return len(memberships)
