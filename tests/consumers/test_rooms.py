"""Rooms: join, leave, room messages, presence, closing, history and recovery."""

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from chat.models import Membership, Room, Worker
from tests.conftest import connect
from tests.consumers.helpers import (
    cookie_header,
    frame,
    is_utc_timestamp,
    join,
    join_all,
    logged_in_session,
    post,
    request,
    room_state,
    store_room_messages,
)

pytestmark = pytest.mark.django_db(transaction=True)


# --- join ----------------------------------------------------------------------


async def test_join_answers_joined_then_presence(open_socket):
    """The joiner gets `joined` with its rooms and the (empty) history, then its own `presence`."""
    alice, hello = await open_socket()
    joined = await request(alice, frame("join", room="salle café 🚀", ref=1))
    assert joined == {
        "type": "joined",
        "room": "salle café 🚀",
        "rooms": ["salle café 🚀"],
        "history": [],
        "ref": 1,
    }
    presence = await alice.receive_json_from()
    assert presence == {
        "type": "presence",
        "room": "salle café 🚀",
        "event": "join",
        "user": hello["user"],
        "members": 1,
    }
    assert await alice.receive_nothing()


async def test_a_join_is_announced_to_every_member_and_nobody_else(open_socket):
    """Each member, the joiner included, gets `presence` with the new member count; outsiders get nothing."""
    alice, _ = await open_socket()
    bob, bob_hello = await open_socket()
    outsider, _ = await open_socket()
    await join(alice, "den")
    await join(outsider, "elsewhere")
    await post(alice, "den", "before bob")

    joined = await request(bob, frame("join", room="den"))
    assert [message["data"] for message in joined["history"]] == ["before bob"]
    expected = {"type": "presence", "room": "den", "event": "join", "user": bob_hello["user"], "members": 2}
    assert await bob.receive_json_from() == expected
    assert await alice.receive_json_from() == expected
    assert await outsider.receive_nothing()
    assert await alice.receive_nothing()
    assert await bob.receive_nothing()


async def test_joined_history_is_the_50_most_recent_messages_oldest_first(open_socket):
    """`joined` carries at most 50 messages: the newest ones, in the order they were sent."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join(alice, "busy")
    ids = await store_room_messages("busy", 55)
    joined = await request(bob, frame("join", room="busy"))
    history = joined["history"]
    assert [message["id"] for message in history] == ids[-50:]
    entry = history[0]
    assert entry["type"] == "message" and entry["kind"] == "room"
    assert entry["room"] == "busy" and entry["sender"] == "seed" and entry["data"] == "m5"
    assert is_utc_timestamp(entry["ts"])
    assert "count" not in entry and "ref" not in entry


async def test_joining_a_room_twice_answers_joined_and_changes_nothing(open_socket):
    """A second join of the same room answers `joined` again, with no second `presence` for anyone."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join_all("den", alice, bob)
    await post(alice, "den", "hello")
    await bob.receive_json_from()

    again = await request(alice, frame("join", room=" den ", ref="again"))
    assert again["type"] == "joined" and again["ref"] == "again"
    assert again["rooms"] == ["den"]
    assert [message["data"] for message in again["history"]] == ["hello"]
    assert await alice.receive_nothing()
    assert await bob.receive_nothing()

    carol, _ = await open_socket()
    await request(carol, frame("join", room="den"))
    assert (await carol.receive_json_from())["members"] == 3


async def test_rooms_are_listed_sorted_by_code_point(open_socket):
    """`rooms` in `joined` and `left` is sorted by code point (astral emoji after U+FF01)."""
    alice, _ = await open_socket()
    bang = "\uff01"  # FULLWIDTH EXCLAMATION MARK: after 'é', before any astral character
    for name in ["b", "🚀", "a", "é", bang, "Z"]:
        joined = await join(alice, name)
    assert joined["rooms"] == ["Z", "a", "b", "é", bang, "🚀"]
    left = await request(alice, frame("leave", room="a"))
    assert left["rooms"] == ["Z", "b", "é", bang, "🚀"]


@pytest.mark.parametrize(
    "name",
    [
        "salle café 🚀",
        "会議室",
        "a/b/../c",
        "chat.room.1",
        "<b>bold</b> & 'quotes'",
        "👩‍👩‍👧‍👦 family",
        "x",
        "🚀" * 64,
        "👩‍💻" * 21 + "a",  # 64 code points: each emoji is three, joiner included
        "zero\u200bwidth",  # a format character (Cf), not a control character
    ],
)
async def test_any_printable_unicode_name_is_a_room(open_socket, name):
    """Spaces, accents, emoji, CJK, slashes and markup all make usable rooms, up to 64 code points."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join_all(name, alice, bob)
    own = await post(alice, name, "hi")
    assert own["room"] == name
    assert (await bob.receive_json_from())["room"] == name
    history = await request(bob, frame("history", room=name))
    assert history["room"] == name and [m["data"] for m in history["messages"]] == ["hi"]


async def test_a_room_name_is_trimmed(open_socket):
    """Surrounding whitespace is not part of the name: ' Lobby ' is 'Lobby'."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    joined = await join(alice, " Lobby ")
    assert joined["room"] == "Lobby" and joined["rooms"] == ["Lobby"]
    await request(bob, frame("join", room="\tLobby\n"))
    assert (await bob.receive_json_from())["members"] == 2
    await alice.receive_json_from()
    own = await post(alice, "Lobby", "trimmed")
    assert own["room"] == "Lobby"
    assert (await bob.receive_json_from())["data"] == "trimmed"
    assert (await request(bob, frame("leave", room="  Lobby")))["room"] == "Lobby"


async def test_a_name_padded_to_more_than_64_characters_is_fine_once_trimmed(open_socket):
    """The limit applies to the trimmed name."""
    alice, _ = await open_socket()
    joined = await join(alice, "   " + "a" * 64 + "   ")
    assert joined["room"] == "a" * 64


async def test_room_names_are_case_sensitive(open_socket):
    """'Lobby' and 'lobby' are two rooms: their messages and presence do not cross."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join(alice, "Lobby")
    await request(bob, frame("join", room="lobby"))
    assert (await bob.receive_json_from())["members"] == 1
    await post(alice, "Lobby", "upper")
    assert await bob.receive_nothing()
    assert await alice.receive_nothing()
    history = await request(bob, frame("history", room="lobby"))
    assert history["messages"] == []


# --- room messages ---------------------------------------------------------------


async def test_a_room_message_reaches_members_only(open_socket):
    """Every member gets the message; the sender's copy alone carries `ref`; outsiders get nothing."""
    alice, alice_hello = await open_socket()
    bob, _ = await open_socket()
    outsider, _ = await open_socket()
    await join_all("den", alice, bob)

    own = await request(alice, frame("room_message", room="den", data="hi all", ref="m1"))
    assert own["type"] == "message" and own["kind"] == "room"
    assert own["room"] == "den" and own["data"] == "hi all"
    assert own["sender"] == alice_hello["user"]
    assert own["count"] == 1 and own["ref"] == "m1"
    assert isinstance(own["id"], int) and own["id"] > 0
    assert is_utc_timestamp(own["ts"])

    copy = await bob.receive_json_from()
    assert copy == {key: value for key, value in own.items() if key != "ref"}
    assert await outsider.receive_nothing()
    assert await alice.receive_nothing()
    assert await bob.receive_nothing()


async def test_message_ids_increase_within_a_room(open_socket):
    """Ids grow with every message of a room, whoever sends it."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join_all("den", alice, bob)
    ids = []
    for sender, receiver in [(alice, bob), (bob, alice), (alice, bob), (bob, alice)]:
        own = await post(sender, "den", "x")
        assert (await receiver.receive_json_from())["id"] == own["id"]
        ids.append(own["id"])
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_a_member_of_two_rooms_gets_each_rooms_messages_once(open_socket):
    """Messages are delivered per room, to the right room, exactly once."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join_all("one", alice, bob)
    await join_all("two", alice, bob)
    await post(alice, "one", "first")
    await post(alice, "two", "second")
    received = [await bob.receive_json_from(), await bob.receive_json_from()]
    assert [(m["room"], m["data"]) for m in received] == [("one", "first"), ("two", "second")]
    assert await bob.receive_nothing()


# --- leave and presence --------------------------------------------------------------


async def test_leave_answers_left_and_tells_the_remaining_members(open_socket):
    """The leaver gets `left`; the others get `presence` with the new count; the leaver hears no more."""
    alice, alice_hello = await open_socket()
    bob, _ = await open_socket()
    await join_all("den", alice, bob)
    await join(alice, "other")

    left = await request(alice, frame("leave", room="den", ref=9))
    assert left == {"type": "left", "room": "den", "rooms": ["other"], "ref": 9}
    assert await bob.receive_json_from() == {
        "type": "presence",
        "room": "den",
        "event": "leave",
        "user": alice_hello["user"],
        "members": 1,
    }
    assert await alice.receive_nothing()

    await post(bob, "den", "alice is gone")
    assert await alice.receive_nothing()
    error = await request(alice, frame("room_message", room="den", data="x"))
    assert error["code"] == "not_in_room"


async def test_a_socket_that_closes_without_leave_leaves_all_its_rooms(open_socket):
    """Closing the socket is leaving every room: each room's members get `presence`."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    carol, carol_hello = await open_socket()
    await join_all("one", alice, bob, carol)
    await join_all("two", alice, carol)

    await carol.disconnect()
    leaves = {}
    for _ in range(2):
        presence = await alice.receive_json_from()
        leaves[presence["room"]] = presence
    assert leaves == {
        "one": {
            "type": "presence",
            "room": "one",
            "event": "leave",
            "user": carol_hello["user"],
            "members": 2,
        },
        "two": {
            "type": "presence",
            "room": "two",
            "event": "leave",
            "user": carol_hello["user"],
            "members": 1,
        },
    }
    assert await bob.receive_json_from() == leaves["one"]
    assert await bob.receive_nothing()

    await bob.disconnect()
    assert (await alice.receive_json_from())["members"] == 1
    assert await alice.receive_nothing()


async def test_presence_counts_connections(open_socket):
    """One session with two sockets in a room counts twice."""
    session = await logged_in_session("twotabs")
    tab1, _ = await open_socket(headers=cookie_header(session))
    tab2, _ = await open_socket(headers=cookie_header(session))
    await join(tab1, "den")
    await request(tab2, frame("join", room="den"))
    presence = await tab2.receive_json_from()
    assert presence["members"] == 2 and presence["user"] == "twotabs"


async def test_a_restarted_single_process_server_forgets_the_members_of_its_earlier_run():
    """Without Redis the server is one process: members left by its previous run are ghosts."""

    def earlier_run() -> None:
        room = Room.objects.create(name="den", creator_key="k", creator_name="someone")
        old = Worker.objects.create(id="earlier-run", heartbeat=timezone.now())  # killed just now
        Membership.objects.create(room=room, connection="old-socket", worker=old, user="ghost")

    await sync_to_async(earlier_run)()
    alice, _ = await connect()  # the first socket starts this run's hub
    await join(alice, "den")
    assert await sync_to_async(Membership.objects.filter(room__name="den").count)() == 1
    assert not await sync_to_async(Worker.objects.filter(id="earlier-run").exists)()
    await alice.disconnect()


# --- close_room -----------------------------------------------------------------------


async def test_the_creator_closes_a_room_and_every_member_is_removed(open_socket):
    """Every member gets `room_closed`; the closer's copy carries `ref`; members are no longer in the room."""
    alice, alice_hello = await open_socket()
    bob, _ = await open_socket()
    carol, _ = await open_socket()
    outsider, _ = await open_socket()
    await join_all("den", alice, bob, carol)

    closed = await request(alice, frame("close_room", room="den", ref="c"))
    assert closed == {"type": "room_closed", "room": "den", "by": alice_hello["user"], "ref": "c"}
    for member in (bob, carol):
        assert await member.receive_json_from() == {
            "type": "room_closed",
            "room": "den",
            "by": alice_hello["user"],
        }
    assert await outsider.receive_nothing()
    assert (await room_state("den")).closed is not None

    for member in (alice, bob, carol):
        error = await request(member, frame("room_message", room="den", data="anyone?"))
        assert error["code"] == "not_in_room"
        error = await request(member, frame("leave", room="den"))
        assert error["code"] == "not_in_room"
    assert (await join(bob, "next"))["rooms"] == ["next"]
    for communicator in (alice, bob, carol, outsider):
        assert await communicator.receive_nothing()


async def test_a_closed_room_keeps_its_history_and_reopens_with_the_same_creator(open_socket):
    """After closing, history stays readable; a join reopens the room, still owned by its creator."""
    alice, alice_hello = await open_socket()
    bob, _ = await open_socket()
    await join(alice, "den")
    await post(alice, "den", "one")
    await post(alice, "den", "two")
    await request(alice, frame("close_room", room="den"))

    history = await request(bob, frame("history", room="den"))
    assert [m["data"] for m in history["messages"]] == ["one", "two"]

    joined = await request(bob, frame("join", room="den"))
    assert [m["data"] for m in joined["history"]] == ["one", "two"]
    assert (await bob.receive_json_from())["members"] == 1
    assert (await room_state("den")).closed is None

    assert (await request(bob, frame("close_room", room="den")))["code"] == "forbidden"
    await post(bob, "den", "three")
    closed = await request(alice, frame("close_room", room="den"))
    assert closed["type"] == "room_closed" and closed["by"] == alice_hello["user"]
    assert await bob.receive_json_from() == {"type": "room_closed", "room": "den", "by": alice_hello["user"]}


async def test_a_message_racing_a_close_from_another_process_is_refused_and_not_stored(open_socket):
    """The room was closed (on another worker, say) before the socket heard: `not_in_room`."""
    alice, _ = await open_socket()
    await join(alice, "race")
    await post(alice, "race", "before")
    # The close commits, but its room_closed event has not reached this process yet.
    await sync_to_async(Room.objects.filter(name="race").update)(closed=timezone.now(), closed_by="elsewhere")

    error = await request(alice, frame("room_message", room="race", data="after", ref=7))
    assert error["type"] == "error" and error["code"] == "not_in_room" and error["ref"] == 7, error
    history = await request(alice, frame("history", room="race"))
    assert [m["data"] for m in history["messages"]] == ["before"]
    echo = await request(alice, frame("echo", data="x"))
    assert echo["count"] == 2, "the refused message moved the counter"


async def test_another_guest_cannot_close_a_room(open_socket):
    """`close_room` by someone who is neither creator nor staff is `forbidden`, and the room goes on."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join_all("den", alice, bob)
    error = await request(bob, frame("close_room", room="den", ref="nope"))
    assert error["type"] == "error" and error["code"] == "forbidden" and error["ref"] == "nope"
    assert await alice.receive_nothing()
    assert (await room_state("den")).closed is None
    await post(bob, "den", "still open")
    assert (await alice.receive_json_from())["data"] == "still open"


async def test_a_staff_user_closes_any_room_without_being_a_member(open_socket):
    """Staff may close a room someone else created; the staff user gets `room_closed` as its reply."""
    alice, _ = await open_socket()
    staff, _ = await open_socket(headers=cookie_header(await logged_in_session("moderator", is_staff=True)))
    await join(alice, "den")
    closed = await request(staff, frame("close_room", room="den", ref=1))
    assert closed == {"type": "room_closed", "room": "den", "by": "moderator", "ref": 1}
    assert await alice.receive_json_from() == {"type": "room_closed", "room": "den", "by": "moderator"}


async def test_a_logged_in_non_staff_user_cannot_close_a_guests_room(open_socket):
    """Logging in is not enough: only the creator or staff may close."""
    alice, _ = await open_socket()
    user, _ = await open_socket(headers=cookie_header(await logged_in_session("regular")))
    await join(alice, "den")
    assert (await request(user, frame("close_room", room="den")))["code"] == "forbidden"


async def test_closing_a_room_that_does_not_exist_is_invalid(open_socket):
    """There is nothing to close in a room nobody joined."""
    alice, _ = await open_socket()
    error = await request(alice, frame("close_room", room="ghost town", ref="g"))
    assert error["code"] == "invalid" and error["ref"] == "g"
    assert await room_state("ghost town") is None


# --- history ---------------------------------------------------------------------------


async def test_history_without_since_or_before_is_the_most_recent_messages(open_socket):
    """With neither, `history` returns the last `limit` messages, oldest first, and `more` if older remain."""
    alice, _ = await open_socket()
    await join(alice, "log")
    ids = await store_room_messages("log", 7)
    page = await request(alice, frame("history", room="log", limit=3, ref="h"))
    assert page["type"] == "history" and page["room"] == "log" and page["ref"] == "h"
    assert [m["id"] for m in page["messages"]] == ids[4:]
    assert page["more"] is True
    page = await request(alice, frame("history", room="log", limit=7))
    assert [m["id"] for m in page["messages"]] == ids and page["more"] is False


async def test_history_defaults_to_50_messages(open_socket):
    """Without `limit`, a page holds 50 messages."""
    alice, _ = await open_socket()
    await join(alice, "log")
    ids = await store_room_messages("log", 51)
    page = await request(alice, frame("history", room="log"))
    assert [m["id"] for m in page["messages"]] == ids[1:] and page["more"] is True


async def test_history_since_pages_forward_until_more_is_false(open_socket):
    """`since` returns the first `limit` messages after the id; paging on ends with `more: false`."""
    alice, _ = await open_socket()
    await join(alice, "log")
    ids = await store_room_messages("log", 7)
    seen, since, pages = [], 0, 0
    while True:
        page = await request(alice, frame("history", room="log", since=since, limit=3))
        pages += 1
        seen += [m["id"] for m in page["messages"]]
        if not page["more"]:
            break
        since = page["messages"][-1]["id"]
    assert seen == ids and pages == 3
    page = await request(alice, frame("history", room="log", since=ids[-1]))
    assert page["messages"] == [] and page["more"] is False
    page = await request(alice, frame("history", room="log", since=ids[3], limit=3))
    assert [m["id"] for m in page["messages"]] == ids[4:] and page["more"] is False


async def test_history_before_pages_backward_until_more_is_false(open_socket):
    """`before` returns the last `limit` messages before the id, oldest first."""
    alice, _ = await open_socket()
    await join(alice, "log")
    ids = await store_room_messages("log", 7)
    page = await request(alice, frame("history", room="log", before=ids[-1], limit=3))
    assert [m["id"] for m in page["messages"]] == ids[3:6] and page["more"] is True
    page = await request(alice, frame("history", room="log", before=ids[3], limit=3))
    assert [m["id"] for m in page["messages"]] == ids[:3] and page["more"] is False
    page = await request(alice, frame("history", room="log", before=ids[0]))
    assert page["messages"] == [] and page["more"] is False


async def test_history_needs_no_membership_and_has_no_counts(open_socket):
    """Anyone may read a room's history; entries look like `message` without `count`."""
    alice, _ = await open_socket()
    reader, _ = await open_socket()
    await join(alice, "public")
    own = await post(alice, "public", "readable")
    page = await request(reader, frame("history", room="public"))
    assert page["messages"] == [{key: value for key, value in own.items() if key not in ("count", "ref")}]


async def test_history_of_a_room_that_does_not_exist_is_empty(open_socket):
    """A room nobody created has an empty history, and nothing is created by asking."""
    alice, _ = await open_socket()
    page = await request(alice, frame("history", room="nowhere", since=0))
    assert page == {"type": "history", "room": "nowhere", "messages": [], "more": False}
    assert await room_state("nowhere") is None


async def test_history_with_an_id_beyond_any_stored_one(open_socket):
    """Ids larger than the database's integers are still just ids: nothing after, everything before."""
    alice, _ = await open_socket()
    await join(alice, "log")
    ids = await store_room_messages("log", 2)
    huge = 10**30
    assert (await request(alice, frame("history", room="log", since=huge)))["messages"] == []
    page = await request(alice, frame("history", room="log", before=huge))
    assert [m["id"] for m in page["messages"]] == ids


async def test_a_reconnecting_client_recovers_everything_it_missed(open_socket):
    """`history` with `since` = the last id seen returns every message sent while away."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join_all("den", alice, bob)
    await post(alice, "den", "seen by bob")
    last_seen = (await bob.receive_json_from())["id"]
    await bob.disconnect()
    await alice.receive_json_from()  # bob's presence: leave

    missed = [(await post(alice, "den", f"missed {n}"))["id"] for n in range(3)]
    bob_again, _ = await open_socket()
    page = await request(bob_again, frame("history", room="den", since=last_seen))
    assert [m["id"] for m in page["messages"]] == missed
    assert [m["data"] for m in page["messages"]] == ["missed 0", "missed 1", "missed 2"]
    assert page["more"] is False
