"""Small steps that many consumer tests share: joining, reading errors, making identities."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model

from chat.models import Message, Room

GUEST_NAME = re.compile(r"guest-[0-9a-f]{4,}")


def frame(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, **fields}


async def send(communicator: WebsocketCommunicator, message: dict[str, Any] | str) -> None:
    """Send a dict as JSON, or a string exactly as given (for frames that are not JSON)."""
    if isinstance(message, str):
        await communicator.send_input({"type": "websocket.receive", "text": message})
    else:
        await communicator.send_json_to(message)


async def request(communicator: WebsocketCommunicator, message: dict[str, Any] | str) -> dict[str, Any]:
    """Send one frame and return the next frame this socket receives."""
    await send(communicator, message)
    return await communicator.receive_json_from()


async def expect_error(
    communicator: WebsocketCommunicator, message: dict[str, Any] | str, code: str
) -> dict[str, Any]:
    """Send one frame, check that the answer is an `error` with `code`, and return it."""
    reply = await request(communicator, message)
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert isinstance(reply["detail"], str) and reply["detail"], reply
    return reply


async def still_works(communicator: WebsocketCommunicator) -> None:
    """The connection goes on: an echo is answered, and nothing else was waiting."""
    reply = await request(communicator, frame("echo", data="still here", ref="after-error"))
    assert reply["type"] == "message" and reply["kind"] == "echo", reply
    assert reply["data"] == "still here" and reply["ref"] == "after-error", reply
    assert await communicator.receive_nothing()


async def join(communicator: WebsocketCommunicator, room: str, **fields: Any) -> dict[str, Any]:
    """Join a room; return `joined` after reading the joiner's own `presence`."""
    joined = await request(communicator, frame("join", room=room, **fields))
    assert joined["type"] == "joined", joined
    presence = await communicator.receive_json_from()
    assert presence["type"] == "presence" and presence["event"] == "join", presence
    return joined


async def join_all(room: str, *communicators: WebsocketCommunicator) -> None:
    """Join each socket in turn, reading the `presence` that every earlier member gets."""
    for index, communicator in enumerate(communicators):
        await join(communicator, room)
        for earlier in communicators[:index]:
            presence = await earlier.receive_json_from()
            assert presence["type"] == "presence" and presence["event"] == "join", presence


async def post(communicator: WebsocketCommunicator, room: str, data: str) -> dict[str, Any]:
    """Send a room message and return the sender's own copy."""
    own = await request(communicator, frame("room_message", room=room, data=data))
    assert own["type"] == "message" and own["kind"] == "room", own
    return own


def is_utc_timestamp(value: str) -> bool:
    """ISO 8601 in UTC, written with `Z` or `+00:00`."""
    if not (value.endswith("Z") or value.endswith("+00:00")):
        return False
    moment = datetime.fromisoformat(value)
    return moment.utcoffset() is not None and moment.astimezone(UTC).utcoffset().total_seconds() == 0


# --- database --------------------------------------------------------------


@sync_to_async
def stored_message_count() -> int:
    return Message.objects.count()


@sync_to_async
def room_count() -> int:
    return Room.objects.count()


@sync_to_async
def room_state(name: str) -> Room | None:
    return Room.objects.filter(name=name).first()


@sync_to_async
def store_room_messages(room: str, count: int, *, sender: str = "seed") -> list[int]:
    """Write `count` messages straight to a room that exists; return their ids, oldest first."""
    target = Room.objects.get(name=room)
    return [Message.objects.create(room=target, sender=sender, body=f"m{n}").pk for n in range(count)]


def _session_store() -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore()


def cookie_header(session_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode())]


@sync_to_async
def new_session(**data: Any) -> str:
    """A session saved in the session store, as the page leaves it; returns its key."""
    session = _session_store()
    for key, value in data.items():
        session[key] = value
    session.create()
    return session.session_key


@sync_to_async
def session_data(session_key: str) -> dict[str, Any]:
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    return dict(session.items())


@sync_to_async
def create_user(username: str, *, is_staff: bool = False) -> None:
    get_user_model().objects.create_user(
        username=username, password="a long test password", is_staff=is_staff
    )


@sync_to_async
def login_session(username: str) -> str:
    """A new session in which that user has logged in, as Django's login() leaves it; returns its key."""
    user = get_user_model().objects.get(username=username)
    session = _session_store()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key


async def logged_in_session(username: str, *, is_staff: bool = False) -> str:
    """A new user, logged in in a new session; returns the session key."""
    await create_user(username, is_staff=is_staff)
    return await login_session(username)


@sync_to_async
def change_password(username: str) -> None:
    """Change the user's password, which ends every session logged in before."""
    user = get_user_model().objects.get(username=username)
    user.set_unusable_password()  # a new random value, without the cost of hashing
    user.save()
