"""Reads: room history and who is in a room. No writes, no channel layer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .models import Membership, Message, Room
from .protocol import HISTORY_DEFAULT_LIMIT


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, to the millisecond."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_event(
    *, message_id: int, sender: str, ts: str, body: str, room_name: str | None
) -> dict[str, Any]:
    """A message as the protocol shows it (without the sender's `count`); no room: a broadcast."""
    event: dict[str, Any] = {
        "type": "message",
        "kind": "room" if room_name is not None else "broadcast",
        "id": message_id,
        "sender": sender,
        "ts": ts,
        "data": body,
    }
    if room_name is not None:
        event["room"] = room_name
    return event


def message_as_event(message: Message, *, room_name: str | None = None) -> dict[str, Any]:
    """A stored message as the protocol shows it (without the sender's `count`)."""
    if message.room_id:
        room_name = room_name if room_name is not None else message.room.name
    else:
        room_name = None
    return message_event(
        message_id=message.pk,
        sender=message.sender,
        ts=timestamp(message.created),
        body=message.body,
        room_name=room_name,
    )


def room_find(*, name: str) -> Room | None:
    return Room.objects.filter(name=name).first()


def room_history(
    *,
    name: str,
    before: int | None = None,
    since: int | None = None,
    limit: int = HISTORY_DEFAULT_LIMIT,
) -> tuple[list[dict[str, Any]], bool]:
    """A page of a room's messages, oldest first, and whether more remain in that direction."""
    room = room_find(name=name)
    if room is None:
        return [], False
    messages = Message.objects.filter(room=room)
    if since is not None:
        page = list(messages.filter(id__gt=since).order_by("id")[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
    else:
        if before is not None:
            messages = messages.filter(id__lt=before)
        page = list(messages.order_by("-id")[: limit + 1])
        more = len(page) > limit
        page = page[:limit][::-1]
    return [message_as_event(message, room_name=room.name) for message in page], more


def room_member_count(*, room: Room) -> int:
    return Membership.objects.filter(room=room).count()
