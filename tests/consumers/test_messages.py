"""Echo, broadcast, the message counter, `ref`, ping and disconnect, server events."""

import pytest

from chat import services
from chat.emitter import DEFAULT_MESSAGE
from tests.consumers.helpers import (
    GUEST_NAME,
    frame,
    is_utc_timestamp,
    join,
    join_all,
    request,
    stored_message_count,
)

pytestmark = pytest.mark.django_db(transaction=True)


async def test_connect_greets_with_a_system_message(open_socket):
    """On connect the server sends `Connected` with count 0 and the display name, and nothing else."""
    alice, hello = await open_socket()
    assert hello == {
        "type": "message",
        "kind": "system",
        "data": "Connected",
        "count": 0,
        "user": hello["user"],
    }
    assert GUEST_NAME.fullmatch(hello["user"]), hello
    assert await alice.receive_nothing()


# --- echo ------------------------------------------------------------------


async def test_echo_reaches_only_the_sender(open_socket):
    """An echo comes back to its sender alone, unstored, with no id."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    reply = await request(alice, frame("echo", data="hello", ref="e1"))
    assert reply == {"type": "message", "kind": "echo", "data": "hello", "count": 1, "ref": "e1"}
    assert await bob.receive_nothing()
    assert await alice.receive_nothing()
    assert await stored_message_count() == 0


async def test_echo_returns_unicode_data_unchanged(open_socket):
    """Accents, CJK, emoji with joiners and quotes survive the round trip."""
    alice, _ = await open_socket()
    data = 'café 会議室 👩‍💻 "quoted" \\ back\nslash'
    reply = await request(alice, frame("echo", data=data))
    assert reply["data"] == data


# --- broadcast ---------------------------------------------------------------


async def test_broadcast_reaches_every_client_and_is_stored(open_socket):
    """Every connected client gets a broadcast, members of rooms or not; only the sender's copy has `ref`."""
    alice, hello = await open_socket()
    bob, _ = await open_socket()
    carol, _ = await open_socket()
    await join(carol, "elsewhere")

    own = await request(alice, frame("broadcast", data="to everyone", ref="b1"))
    assert own["type"] == "message" and own["kind"] == "broadcast", own
    assert own["ref"] == "b1"
    assert own["data"] == "to everyone"
    assert own["count"] == 1
    assert own["sender"] == hello["user"]
    assert isinstance(own["id"], int) and own["id"] > 0
    assert is_utc_timestamp(own["ts"]), own["ts"]
    assert "room" not in own

    expected = {key: value for key, value in own.items() if key != "ref"}
    assert await bob.receive_json_from() == expected
    assert await carol.receive_json_from() == expected
    assert await stored_message_count() == 1
    for communicator in (alice, bob, carol):
        assert await communicator.receive_nothing()


async def test_broadcast_copies_carry_the_senders_count(open_socket):
    """`count` in a broadcast is the sender's own counter, whoever receives it."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await request(bob, frame("echo", data="one"))
    await request(bob, frame("echo", data="two"))
    own = await request(bob, frame("broadcast", data="three"))
    assert own["count"] == 3
    assert (await alice.receive_json_from())["count"] == 3
    # Receiving does not move the receiver's own counter.
    assert (await request(alice, frame("echo", data="mine")))["count"] == 1


async def test_broadcast_ids_increase(open_socket):
    """Each stored broadcast gets a larger id than the one before."""
    alice, _ = await open_socket()
    ids = [(await request(alice, frame("broadcast", data=str(n))))["id"] for n in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3


# --- count -------------------------------------------------------------------


async def test_count_grows_only_with_messages_the_sender_produced(open_socket):
    """Echo, broadcast and room_message count from 1; join, history, ping and errors do not."""
    alice, _ = await open_socket()
    assert (await request(alice, frame("echo", data="a")))["count"] == 1
    assert (await request(alice, frame("broadcast", data="b")))["count"] == 2
    await join(alice, "counted")
    assert (await request(alice, frame("room_message", room="counted", data="c")))["count"] == 3
    assert (await request(alice, frame("ping", id=1)))["type"] == "pong"
    assert (await request(alice, frame("history", room="counted")))["type"] == "history"
    assert (await request(alice, frame("echo", data="")))["type"] == "error"
    assert (await request(alice, frame("room_message", room="not joined", data="x")))["type"] == "error"
    assert (await request(alice, "not json"))["type"] == "error"
    assert (await request(alice, frame("echo", data="d")))["count"] == 4


async def test_each_connection_has_its_own_count(open_socket):
    """Two sockets count separately, even for the same session."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await request(alice, frame("echo", data="a"))
    await request(alice, frame("echo", data="a"))
    assert (await request(bob, frame("echo", data="b")))["count"] == 1


# --- ref ---------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["r-1", 42, 0, "", -7, "🚀" * 64, "x" * 64, 10**63])
async def test_every_direct_reply_carries_the_requests_ref(open_socket, ref):
    """String and integer refs (falsy ones too) come back unchanged on every direct reply."""
    alice, _ = await open_socket()
    replies = {
        "echo": await request(alice, frame("echo", data="x", ref=ref)),
        "broadcast": await request(alice, frame("broadcast", data="x", ref=ref)),
        "joined": await request(alice, frame("join", room="refs", ref=ref)),
    }
    presence = await alice.receive_json_from()
    assert presence["type"] == "presence" and "ref" not in presence
    replies["room_message"] = await request(alice, frame("room_message", room="refs", data="x", ref=ref))
    replies["history"] = await request(alice, frame("history", room="refs", ref=ref))
    replies["pong"] = await request(alice, frame("ping", id="p", ref=ref))
    replies["left"] = await request(alice, frame("leave", room="refs", ref=ref))
    await join(alice, "refs")
    replies["room_closed"] = await request(alice, frame("close_room", room="refs", ref=ref))
    replies["error"] = await request(alice, frame("echo", ref=ref))
    replies["disconnect"] = await request(alice, frame("disconnect", ref=ref))

    for name, reply in replies.items():
        assert "ref" in reply, (name, reply)
        assert reply["ref"] == ref and type(reply["ref"]) is type(ref), (name, reply)
    assert replies["error"]["type"] == "error"
    assert replies["room_closed"]["type"] == "room_closed"
    assert replies["disconnect"]["kind"] == "system"


async def test_a_reply_has_no_ref_when_the_request_had_none(open_socket):
    """Without `ref` in the request, no reply invents one."""
    alice, _ = await open_socket()
    for message in (
        frame("echo", data="x"),
        frame("broadcast", data="x"),
        frame("ping"),
        frame("history", room="nowhere"),
        frame("echo"),
    ):
        assert "ref" not in await request(alice, message)


# --- ping --------------------------------------------------------------------


@pytest.mark.parametrize("ping_id", ["abc", 17, 0, "", "会議"])
async def test_ping_is_answered_with_pong_and_the_same_id(open_socket, ping_id):
    """`pong` repeats the ping's `id`, of the same type."""
    alice, _ = await open_socket()
    pong = await request(alice, frame("ping", id=ping_id))
    assert pong == {"type": "pong", "id": ping_id}
    assert type(pong["id"]) is type(ping_id)


async def test_ping_without_id_gets_a_null_id(open_socket):
    """A ping without `id` is answered with `id: null`."""
    alice, _ = await open_socket()
    assert await request(alice, frame("ping")) == {"type": "pong", "id": None}


async def test_ping_reaches_only_the_sender(open_socket):
    """Nobody else sees a pong."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await request(alice, frame("ping", id=1, ref="p"))
    assert await bob.receive_nothing()


# --- disconnect ---------------------------------------------------------------


async def test_disconnect_sends_a_final_message_and_closes_normally(open_socket):
    """`disconnect` answers a system message with the count unchanged and the ref, then closes with 1000."""
    alice, _ = await open_socket()
    await request(alice, frame("echo", data="one"))
    await request(alice, frame("broadcast", data="two"))
    final = await request(alice, frame("disconnect", ref="bye"))
    assert final["type"] == "message" and final["kind"] == "system", final
    assert final["count"] == 2
    assert final["ref"] == "bye"
    assert isinstance(final["data"], str) and final["data"]
    assert await alice.receive_output() == {"type": "websocket.close", "code": 1000}


async def test_disconnect_before_any_message_carries_count_zero(open_socket):
    """A socket that sent nothing says goodbye with count 0."""
    alice, _ = await open_socket()
    final = await request(alice, frame("disconnect"))
    assert final["kind"] == "system" and final["count"] == 0 and "ref" not in final
    assert (await alice.receive_output())["code"] == 1000


async def test_disconnect_leaves_rooms_and_tells_the_others(open_socket):
    """After `disconnect` the socket's rooms see it leave."""
    alice, _ = await open_socket()
    bob, bob_hello = await open_socket()
    await join_all("den", alice, bob)
    await request(bob, frame("disconnect"))
    assert (await bob.receive_output())["code"] == 1000
    await bob.disconnect()
    presence = await alice.receive_json_from()
    assert presence == {
        "type": "presence",
        "room": "den",
        "event": "leave",
        "user": bob_hello["user"],
        "members": 1,
    }
    assert await alice.receive_nothing()


# --- server events --------------------------------------------------------------


async def test_server_events_reach_every_client(open_socket):
    """A server event arrives everywhere as `message` with kind `server`, the emitter's count and no ref."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join(bob, "busy")
    await services.server_event_publish(data="maintenance at noon", count=5)
    for communicator in (alice, bob):
        event = await communicator.receive_json_from()
        assert event["type"] == "message" and event["kind"] == "server", event
        assert event["data"] == "maintenance at noon"
        assert event["count"] == 5
        assert is_utc_timestamp(event["ts"])
        assert "ref" not in event
        assert await communicator.receive_nothing()
    # The receiver's own counter is its own.
    assert (await request(alice, frame("echo", data="x")))["count"] == 1


async def test_the_built_in_emitter_sends_numbered_server_events(open_socket, settings):
    """Without Redis the server process emits server events itself, with an increasing count."""
    settings.CHAT_SERVER_EVENTS_INTERVAL = 0.05
    alice, _ = await open_socket()
    first = await alice.receive_json_from()
    second = await alice.receive_json_from()
    assert first["kind"] == second["kind"] == "server"
    assert first["data"] == DEFAULT_MESSAGE
    assert first["count"] == 1
    assert second["count"] == first["count"] + 1
