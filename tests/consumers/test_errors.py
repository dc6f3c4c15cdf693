"""Every error code: when it is sent, with which `ref`, and that nothing else happens."""

import json

import pytest

from chat import services
from chat.protocol import MAX_JSON_DEPTH
from tests.consumers.helpers import (
    expect_error,
    frame,
    join,
    join_all,
    post,
    request,
    room_count,
    room_state,
    send,
    still_works,
    stored_message_count,
)

pytestmark = pytest.mark.django_db(transaction=True)


def nested(depth: int) -> str:
    """A valid frame whose deepest value sits `depth` levels down, the frame itself included."""
    return '{"type":"echo","data":"deep","x":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


# --- bad_json -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not json", id="text"),
        pytest.param("{", id="truncated"),
        pytest.param('{"type": "echo", "data": "x",}', id="trailing-comma"),
        pytest.param("{'type': 'echo'}", id="single-quotes"),
        pytest.param("[1, 2]", id="array"),
        pytest.param('[{"type": "echo", "data": "x", "ref": 1}]', id="object-in-array"),
        pytest.param('"a string"', id="string"),
        pytest.param("42", id="number"),
        pytest.param("null", id="null"),
        pytest.param("true", id="boolean"),
        pytest.param(" ", id="blank"),
        pytest.param('{"type": "echo", "data": "x", "n": NaN}', id="NaN"),
        pytest.param('{"type": "echo", "data": "x", "n": -Infinity}', id="Infinity"),
        pytest.param('{"type": "echo", "data": "raw\ncontrol"}', id="raw-newline-in-string"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deep-arrays"),
        pytest.param('{"a":' * 5000 + "1" + "}" * 5000, id="deep-objects"),
        pytest.param(nested(MAX_JSON_DEPTH + 1), id="one-level-too-deep"),
    ],
)
async def test_a_frame_that_is_not_a_json_object_is_bad_json(open_socket, text):
    """Invalid JSON, JSON that is not an object, and JSON nested too deep are `bad_json`, without `ref`."""
    alice, _ = await open_socket()
    error = await expect_error(alice, text, "bad_json")
    assert "ref" not in error
    await still_works(alice)


async def test_an_empty_text_frame_is_bad_json(open_socket):
    """An empty frame is not a JSON object."""
    alice, _ = await open_socket()
    await alice.send_input({"type": "websocket.receive", "text": ""})
    error = await alice.receive_json_from()
    assert error["code"] == "bad_json"
    await still_works(alice)


async def test_a_binary_frame_is_bad_json(open_socket):
    """Binary frames are refused, even when they hold valid JSON."""
    alice, _ = await open_socket()
    await alice.send_to(bytes_data=json.dumps(frame("echo", data="x", ref=1)).encode())
    error = await alice.receive_json_from()
    assert error["type"] == "error" and error["code"] == "bad_json" and "ref" not in error
    await still_works(alice)


async def test_nesting_up_to_the_limit_is_accepted(open_socket):
    """Nesting within the depth limit is ordinary JSON; unknown fields are ignored."""
    alice, _ = await open_socket()
    reply = await request(alice, nested(MAX_JSON_DEPTH))
    assert reply["kind"] == "echo" and reply["data"] == "deep"


# --- unknown_type ----------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"data": "no type"},
        {"type": None},
        {"type": 5},
        {"type": True},
        {"type": ["echo"]},
        {"type": {"name": "echo"}},
        {"type": ""},
        {"type": "Echo"},
        {"type": "echo "},
        {"type": "message"},
        {"type": "chat.deliver", "group": "chat.all", "text": "{}"},
        {"type": "websocket.disconnect"},
        {"type": "on_echo", "data": "x"},
        {"type": "__init__"},
        {"type": "relay"},
        {"type": "x" * 10_000},
    ],
    ids=lambda message: repr(message)[:40],
)
async def test_a_missing_or_unknown_type_is_unknown_type(open_socket, message):
    """`type` must be one of the protocol's commands: no internal name or handler is reachable."""
    alice, _ = await open_socket()
    error = await expect_error(alice, message | {"ref": "t"}, "unknown_type")
    assert error["ref"] == "t"
    await still_works(alice)


async def test_a_lone_surrogate_type_is_unknown_type(open_socket):
    """A type holding a lone surrogate is answered with a frame that is still valid UTF-8."""
    alice, _ = await open_socket()
    await send(alice, '{"type": "\\ud800", "ref": 3}')
    error = await alice.receive_json_from()
    assert error["code"] == "unknown_type" and error["ref"] == 3
    await still_works(alice)


# --- invalid ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        frame("echo"),
        frame("echo", data=None),
        frame("echo", data=5),
        frame("echo", data=["x"]),
        frame("echo", data=""),
        frame("broadcast"),
        frame("broadcast", data=""),
        frame("broadcast", data={"text": "x"}),
        frame("room_message", room="den"),
        frame("room_message", room="den", data=""),
        frame("room_message", data="x"),
        frame("join"),
        frame("join", room=None),
        frame("join", room=7),
        frame("join", room=["den"]),
        frame("join", room=""),
        frame("join", room="   "),
        frame("join", room="\t\n"),
        frame("leave"),
        frame("leave", room=""),
        frame("close_room"),
        frame("close_room", room=""),
        frame("history"),
        frame("history", room=""),
        frame("history", room="den", since=1, before=5),
        frame("history", room="den", since=0, before=1),
        frame("history", room="den", limit=0),
        frame("history", room="den", limit=201),
        frame("history", room="den", limit=-1),
        frame("history", room="den", limit="10"),
        frame("history", room="den", limit=True),
        frame("history", room="den", limit=10.5),
        frame("history", room="den", since=-1),
        frame("history", room="den", since="3"),
        frame("history", room="den", since=True),
        frame("history", room="den", since=1.0),
        frame("history", room="den", before=0),
        frame("history", room="den", before=-3),
        frame("history", room="den", before="9"),
        frame("ping", id=True),
        frame("ping", id=1.5),
        frame("ping", id=["x"]),
        frame("ping", id={"a": 1}),
        frame("ping", id="x" * 65),
        frame("ping", id=10**64),
    ],
    ids=lambda message: json.dumps(message, ensure_ascii=False)[:60],
)
async def test_a_missing_wrong_or_empty_field_is_invalid(open_socket, message):
    """Each field is checked; the error carries the request's `ref`."""
    alice, _ = await open_socket()
    await join(alice, "den")
    error = await expect_error(alice, message | {"ref": "bad"}, "invalid")
    assert error["ref"] == "bad"
    await still_works(alice)


@pytest.mark.parametrize(
    "room",
    [
        "a" * 65,
        "🚀" * 65,
        "👩‍💻" * 21 + "ab",  # 65 code points
        "line\nbreak",
        "nul\x00",
        "bell\x07",
        "escape\x1b[31m",
        "delete\x7f",
        "next\x85line",
        "c1\x9f",
    ],
    ids=repr,
)
async def test_a_room_name_too_long_or_with_control_characters_is_invalid(open_socket, room):
    """Names over 64 code points or holding Cc characters are refused by every command that takes a room."""
    alice, _ = await open_socket()
    for command in ("join", "leave", "room_message", "close_room", "history"):
        error = await expect_error(alice, frame(command, room=room, data="x", ref=command), "invalid")
        assert error["ref"] == command
    assert await room_count() == 0
    await still_works(alice)


async def test_a_lone_surrogate_in_a_room_name_is_invalid(open_socket):
    """A surrogate (Cs) cannot be part of a room name."""
    alice, _ = await open_socket()
    await send(alice, '{"type": "join", "room": "a\\udc00b", "ref": "s"}')
    error = await alice.receive_json_from()
    assert error["code"] == "invalid" and error["ref"] == "s"
    assert await room_count() == 0
    await still_works(alice)


@pytest.mark.parametrize("command", ["echo", "broadcast", "room_message"])
async def test_a_lone_surrogate_in_data_is_invalid(open_socket, command):
    """`"\\ud800"` is valid JSON but no UTF-8 frame can carry it: `invalid`, and nothing is stored."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join_all("den", alice, bob)
    text = json.dumps(frame(command, room="den", ref="s")).removesuffix("}") + ', "data": "a\\ud800b"}'
    await send(alice, text)
    error = await alice.receive_json_from()
    assert error["code"] == "invalid" and error["ref"] == "s"
    assert await bob.receive_nothing()
    assert await stored_message_count() == 0
    await still_works(alice)


@pytest.mark.parametrize(
    "ref",
    [True, False, 1.5, [1], {"a": 1}, "x" * 65, 10**64, -(10**63)],
    ids=repr,
)
async def test_an_unusable_ref_is_invalid_and_not_repeated(open_socket, ref):
    """A `ref` that is not a string or integer of at most 64 characters is refused, without `ref`."""
    alice, _ = await open_socket()
    error = await expect_error(alice, frame("echo", data="x", ref=ref), "invalid")
    assert "ref" not in error
    await still_works(alice)


async def test_a_lone_surrogate_ref_is_invalid(open_socket):
    """A `ref` that cannot be written back is refused rather than echoed."""
    alice, _ = await open_socket()
    await send(alice, '{"type": "echo", "data": "x", "ref": "\\ud800"}')
    error = await alice.receive_json_from()
    assert error["code"] == "invalid" and "ref" not in error
    await still_works(alice)


@pytest.mark.parametrize("command", ["echo", "broadcast", "room_message"])
async def test_data_may_hold_up_to_the_configured_number_of_code_points(open_socket, settings, command):
    """`CHAT_MAX_MESSAGE_CHARS` counts code points: 10 emoji pass a limit of 10, 11 do not."""
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    alice, _ = await open_socket()
    await join(alice, "den")
    reply = await request(alice, frame(command, room="den", data="🚀" * 10))
    assert reply["type"] == "message" and reply["data"] == "🚀" * 10
    error = await expect_error(alice, frame(command, room="den", data="🚀" * 11, ref=2), "invalid")
    assert error["ref"] == 2
    await still_works(alice)


async def test_data_defaults_to_at_most_4000_characters(open_socket):
    """By default 4,000 characters pass and 4,001 do not."""
    alice, _ = await open_socket()
    assert (await request(alice, frame("echo", data="x" * 4000)))["data"] == "x" * 4000
    await expect_error(alice, frame("echo", data="x" * 4001), "invalid")
    await still_works(alice)


async def test_invalid_fields_are_reported_before_membership(open_socket):
    """A bad room name or empty data is `invalid` even for a room the sender is not in."""
    alice, _ = await open_socket()
    await expect_error(alice, frame("room_message", room="", data="x"), "invalid")
    await expect_error(alice, frame("room_message", room="den", data=""), "invalid")
    await expect_error(alice, frame("leave", room="a" * 65), "invalid")
    await still_works(alice)


async def test_a_bad_message_stores_nothing_and_reaches_nobody(open_socket):
    """Refused broadcasts, room messages and joins leave the database and the other members untouched."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join_all("den", alice, bob)
    for message in (
        frame("broadcast", data=""),
        frame("broadcast", data=5),
        frame("room_message", room="den", data=""),
        frame("room_message", room="den", data="x" * 4001),
        frame("room_message", room="den\x00", data="x"),
        frame("join", room="x" * 65),
        frame("close_room", room=""),
    ):
        await expect_error(alice, message, "invalid")
    assert await stored_message_count() == 0
    assert await room_count() == 1
    assert await bob.receive_nothing()
    await still_works(alice)


# --- not_in_room -------------------------------------------------------------------


@pytest.mark.parametrize("exists", [True, False])
async def test_room_message_or_leave_outside_a_room_is_not_in_room(open_socket, exists):
    """Only members may post to or leave a room; the error carries `ref` and nothing is stored."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    if exists:
        await join(bob, "den")
    error = await expect_error(alice, frame("room_message", room="den", data="x", ref="m"), "not_in_room")
    assert error["ref"] == "m"
    error = await expect_error(alice, frame("leave", room="den", ref=4), "not_in_room")
    assert error["ref"] == 4
    assert await stored_message_count() == 0
    assert await bob.receive_nothing()
    await still_works(alice)


# --- forbidden ---------------------------------------------------------------------


async def test_close_room_by_someone_else_is_forbidden(open_socket):
    """Neither creator nor staff: `forbidden` with `ref`, the room stays open, nobody is told."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    await join_all("den", alice, bob)
    error = await expect_error(bob, frame("close_room", room="den", ref=8), "forbidden")
    assert error["ref"] == 8
    assert (await room_state("den")).closed is None
    assert await alice.receive_nothing()
    await still_works(bob)
    await post(bob, "den", "still a member")
    assert (await alice.receive_json_from())["data"] == "still a member"


async def test_close_room_of_a_room_that_does_not_exist_is_invalid(open_socket):
    """Closing an unknown room is `invalid` with `ref`, and creates nothing."""
    alice, _ = await open_socket()
    error = await expect_error(alice, frame("close_room", room="ghost", ref="g"), "invalid")
    assert error["ref"] == "g"
    assert await room_count() == 0
    await still_works(alice)


# --- rate_limited --------------------------------------------------------------------


async def test_the_frame_after_a_burst_of_twice_the_rate_is_rate_limited(open_socket, settings):
    """At 5 a second the first 10 quick frames pass; each later one gets its own `rate_limited` with its ref."""
    settings.CHAT_RATE_LIMIT = 5
    alice, _ = await open_socket()
    bob, _ = await open_socket()
    for n in range(10):
        await send(alice, frame("ping", id=n))
    await send(alice, frame("broadcast", data="too fast", ref="late"))
    await send(alice, frame("echo", data="also too fast", ref=12))
    for n in range(10):
        assert await alice.receive_json_from() == {"type": "pong", "id": n}
    error = await alice.receive_json_from()
    assert error["type"] == "error" and error["code"] == "rate_limited" and error["ref"] == "late"
    error = await alice.receive_json_from()
    assert error["code"] == "rate_limited" and error["ref"] == 12
    assert await stored_message_count() == 0
    # The bucket refills at 5 a second: after a fifth of a second one more frame passes.
    assert await bob.receive_nothing(timeout=0.25)
    reply = await request(alice, frame("echo", data="slower", ref="ok"))
    assert reply["kind"] == "echo" and reply["ref"] == "ok" and reply["count"] == 1


async def test_bad_frames_and_binary_frames_count_towards_the_rate(open_socket, settings):
    """Every frame costs a token, whether it is understood or not."""
    settings.CHAT_RATE_LIMIT = 2
    alice, _ = await open_socket()
    await send(alice, "not json")
    await alice.send_to(bytes_data=b"\x00\x01")
    await send(alice, frame("nonsense"))
    await send(alice, frame("echo", data=""))
    await send(alice, frame("ping", id="fifth"))
    codes = [(await alice.receive_json_from())["code"] for _ in range(5)]
    assert codes == ["bad_json", "bad_json", "unknown_type", "invalid", "rate_limited"]


async def test_a_rate_limited_frame_that_is_not_json_gets_an_error_without_ref(open_socket, settings):
    """A refused frame is answered even when it cannot be read."""
    settings.CHAT_RATE_LIMIT = 0.5  # a burst of one
    alice, _ = await open_socket()
    await send(alice, frame("ping"))
    await send(alice, "{not json")
    await alice.send_to(bytes_data=b"{}")
    assert (await alice.receive_json_from())["type"] == "pong"
    for _ in range(2):
        error = await alice.receive_json_from()
        assert error["code"] == "rate_limited" and "ref" not in error


async def test_a_rate_limit_of_zero_turns_the_limit_off(open_socket, settings):
    """With `CHAT_RATE_LIMIT = 0`, a hundred quick frames are all answered."""
    settings.CHAT_RATE_LIMIT = 0
    alice, _ = await open_socket()
    for n in range(100):
        await send(alice, frame("ping", id=n))
    for n in range(100):
        assert await alice.receive_json_from() == {"type": "pong", "id": n}


# --- unavailable (added to the protocol's table) ------------------------------------------


async def test_a_failed_store_is_unavailable_and_moves_no_counter(open_socket, monkeypatch):
    """When storage fails the sender gets `unavailable` with its ref, and its count does not move."""
    alice, _ = await open_socket()
    bob, _ = await open_socket()

    def broken(**kwargs):
        raise RuntimeError("database is down")

    monkeypatch.setattr(services, "broadcast_post", broken)
    error = await expect_error(alice, frame("broadcast", data="lost", ref="u"), "unavailable")
    assert error["ref"] == "u"
    assert await bob.receive_nothing()
    monkeypatch.undo()
    reply = await request(alice, frame("broadcast", data="again"))
    assert reply["count"] == 1
    assert (await bob.receive_json_from())["data"] == "again"
