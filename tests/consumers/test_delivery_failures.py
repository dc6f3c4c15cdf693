"""When the channel layer fails after a message was stored, nothing is lost."""

import pytest

from chat import services

from .helpers import frame, join_all, request

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_stored_message_is_confirmed_and_recoverable_when_publishing_fails(open_socket, monkeypatch):
    """The sender gets its stored copy with an id, and the others find it in `history`."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join_all("ops", alice, bob)

    async def broken_publish(event):
        raise ConnectionError("channel layer is down")

    monkeypatch.setattr(services, "publish", broken_publish)
    own = await request(alice, frame("room_message", room="ops", data="stored anyway", ref="s"))
    assert own["type"] == "message" and own["ref"] == "s" and own["id"] > 0, own
    assert await bob.receive_nothing()

    monkeypatch.undo()
    history = await request(bob, frame("history", room="ops", since=own["id"] - 1))
    assert [message["data"] for message in history["messages"]] == ["stored anyway"]
