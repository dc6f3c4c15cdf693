"""Arbitrary frames never break the consumer, never reach another client, never store anything.

Each property sends hypothesis-made frames through the real routing on one socket
(reused across examples), while a second socket sits in a room and listens, and checks
every time: the reply is the one the protocol specifies for that request or an `error`
with a code from the protocol's table, nothing else arrives on either socket, and the
number of stored messages changes only by a broadcast the protocol says to store.

`CHAT_FUZZ_EXAMPLES` sets the examples per property (default 300); see docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.models import Message
from chat.protocol import COMMAND_TYPES, ErrorCode
from chatproject.asgi import application

EXAMPLES = int(os.environ.get("CHAT_FUZZ_EXAMPLES", "300"))
REPLY_TIMEOUT = 10  # seconds; a join writes to the database

# The protocol's error table (PROTOCOL.md) plus the codes docs/protocol.md adds for
# requests. `unavailable` is left out on purpose: it means a handler failed.
ALLOWED_CODES = {
    ErrorCode.BAD_JSON,
    ErrorCode.UNKNOWN_TYPE,
    ErrorCode.INVALID,
    ErrorCode.NOT_IN_ROOM,
    ErrorCode.FORBIDDEN,
    ErrorCode.RATE_LIMITED,
    ErrorCode.TOO_MANY_ROOMS,
}
OBSERVER_ROOM = "fuzz observer \u2713 7f3a"

FIELDS = ("type", "ref", "data", "room", "id", "before", "since", "limit")

# Strings that have broken servers before: empty, huge, NUL and other controls, bidi
# overrides, joiners, byte-order marks, lone surrogates, the last code point.
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\r\n",
    "\x7f\x1b[31m",
    "\u202eevil\u202c",
    "\u200f\u05e9\u05dc\u05d5\u05dd",
    "\ufeff",
    "\u200b",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",
    "\U0001f1fa\U0001f1f3",
    "e\u0301",
    "\ud800",
    "\udfff",
    "a\udc80b",
    "\U0010ffff",
    "\uffff",
    "x" * 64,
    "x" * 65,
    "\U0001f600" * 64,
    "x" * 4000,
    "x" * 4001,
    "\U0001f600" * 4001,
    "y" * 100_000,
    "__proto__",
    "constructor",
    "<script>alert(1)</script>",
    "'; DROP TABLE chat_message; --",
    "%s%s%n",
    "{{ settings.SECRET_KEY }}",
    "../../etc/passwd",
    "chat.all",
]

odd_text = st.one_of(
    st.sampled_from(ODD_STRINGS),
    # Any code point, surrogates included.
    st.text(st.characters(exclude_categories=()), max_size=80),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=300),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1, 2**63, 2**64, 10**100, 1.5, -0.0, 1e308]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(odd_text, children, max_size=5),
    max_leaves=25,
)


@st.composite
def command_with_wrong_fields(draw) -> dict[str, Any]:
    """A real command type whose every field may be missing, of any type, or odd."""
    message: dict[str, Any] = {"type": draw(st.sampled_from(COMMAND_TYPES))}
    for field in FIELDS[1:]:
        if draw(st.booleans()):
            message[field] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        message["type"] = draw(json_values)
    return message


@st.composite
def nested_frame(draw) -> str:
    """A frame nested from 1 to 5,000 levels deep, sometimes cut short."""
    depth = draw(st.integers(1, 5000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    inner = opener * depth + "1" + closer * depth
    text = '{"type":"echo","data":"deep","x":' + inner + "}"
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


def as_text(message: Any, ascii_only: bool) -> str:
    return json.dumps(message, ensure_ascii=ascii_only)


any_json_frame = st.builds(as_text, json_values, st.booleans())
command_frame = st.builds(as_text, command_with_wrong_fields(), st.booleans())
unicode_command_frame = st.builds(
    as_text,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["echo", "join", "history", "ping", "room_message"])},
        optional={"data": odd_text, "room": odd_text, "ref": odd_text, "id": odd_text},
    ),
    st.booleans(),
)
raw_text_frame = st.one_of(
    odd_text,
    st.builds(lambda frame, cut: frame[:cut], command_frame, st.integers(0, 200)),
)
binary_frame = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda text: text.encode("utf-8", "surrogatepass"), command_frame),
)


def decoded(text: str | None) -> Any:
    """The frame as the server should read it, or a marker for "not a JSON object"."""
    if text is None:
        return None
    try:
        message = json.loads(text, parse_constant=lambda name: 1 / 0)
    except (ValueError, RecursionError, ZeroDivisionError):
        return None
    return message if isinstance(message, dict) else None


class Harness:
    """Two sockets on one event loop, reused across examples: one fuzzed, one observing."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.frames = 0
        self.stored = 0
        self.fuzzed: WebsocketCommunicator | None = None
        self.observer: WebsocketCommunicator | None = None
        self.count = 0  # the fuzzed socket's own message counter, as the server keeps it
        self.barriers = 0
        self.outcomes: Counter[str] = Counter()  # reply type or error code, for the report

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    async def open(self) -> WebsocketCommunicator:
        communicator = WebsocketCommunicator(application, "/ws/chat/")
        connected, _ = await communicator.connect(timeout=REPLY_TIMEOUT)
        assert connected
        hello = await communicator.receive_json_from(timeout=REPLY_TIMEOUT)
        assert hello["type"] == "message" and hello["data"] == "Connected", hello
        return communicator

    async def start(self) -> None:
        self.fuzzed = await self.open()
        self.observer = await self.open()
        await self.observer.send_json_to({"type": "join", "room": OBSERVER_ROOM})
        assert (await self.receive(self.observer))["type"] == "joined"
        assert (await self.receive(self.observer))["type"] == "presence"
        self.stored = await message_count()

    async def receive(self, communicator: WebsocketCommunicator) -> dict[str, Any]:
        return await communicator.receive_json_from(timeout=REPLY_TIMEOUT)

    async def barrier(self, communicator: WebsocketCommunicator, who: str) -> None:
        """A ping whose pong must be the very next frame: nothing else was waiting."""
        self.barriers += 1
        marker = f"barrier-{self.barriers}"
        await communicator.send_json_to({"type": "ping", "id": marker})
        reply = await self.receive(communicator)
        assert reply == {"type": "pong", "id": marker}, f"{who} got an unexpected frame: {reply}"

    async def send(self, text: str | None = None, data: bytes | None = None) -> None:
        """Send one frame, check the reply and every side effect, and leave both sockets as they were."""
        self.frames += 1
        message = decoded(text)
        # send_input, not send_to: send_to refuses empty frames, which clients can send.
        if text is not None:
            await self.fuzzed.send_input({"type": "websocket.receive", "text": text})
        else:
            await self.fuzzed.send_input({"type": "websocket.receive", "bytes": data})
        reply = await self.receive(self.fuzzed)
        broadcasts = 0
        self.outcomes[reply.get("code", reply["type"])] += 1
        if reply["type"] == "error":
            check_error(message, text, reply)
        else:
            broadcasts = await self.check_success(message, reply)
        await self.barrier(self.fuzzed, "the fuzzed socket")
        await self.barrier(self.observer, "the other socket in the room")
        stored = await message_count()
        assert stored == self.stored + broadcasts, f"{stored - self.stored} messages stored by {text!r:.200}"
        self.stored = stored

    async def check_success(self, message: Any, reply: dict[str, Any]) -> int:
        """A reply that is not an error must be the one the request's type specifies."""
        assert message is not None, f"a frame that is not a JSON object got {reply}"
        kind = message.get("type")
        assert kind in COMMAND_TYPES, f"type {kind!r} got {reply}"
        if "ref" in reply:
            assert reply["ref"] == message.get("ref"), reply
        if kind == "echo":
            self.count += 1
            assert reply["type"] == "message" and reply["kind"] == "echo", reply
            assert reply["data"] == message["data"] and reply["count"] == self.count, reply
        elif kind == "ping":
            assert reply["type"] == "pong" and reply["id"] == message.get("id"), reply
        elif kind == "history":
            assert reply["type"] == "history" and reply["room"] == message["room"].strip(), reply
            assert isinstance(reply["messages"], list) and isinstance(reply["more"], bool), reply
        elif kind == "join":
            room = message["room"].strip()
            assert reply["type"] == "joined" and reply["room"] == room and reply["rooms"] == [room], reply
            presence = await self.receive(self.fuzzed)
            assert presence["type"] == "presence" and presence["event"] == "join", presence
            # Leave again, so the next example starts in no room.
            await self.fuzzed.send_json_to({"type": "leave", "room": room})
            left = await self.receive(self.fuzzed)
            assert left["type"] == "left" and left["rooms"] == [], left
        elif kind == "close_room":
            assert reply["type"] == "room_closed" and reply["room"] == message["room"].strip(), reply
        elif kind == "broadcast":
            self.count += 1
            assert reply["type"] == "message" and reply["kind"] == "broadcast", reply
            assert reply["data"] == message["data"] and reply["count"] == self.count, reply
            seen = await self.receive(self.observer)
            assert seen["kind"] == "broadcast" and seen["data"] == message["data"], seen
            assert "ref" not in seen, seen
            return 1
        elif kind == "disconnect":
            assert reply == {
                "type": "message",
                "kind": "system",
                "data": "Disconnected",
                "count": self.count,
                **({"ref": message["ref"]} if "ref" in reply else {}),
            }, reply
            closed = await self.fuzzed.receive_output(timeout=REPLY_TIMEOUT)
            assert closed == {"type": "websocket.close", "code": 1000}, closed
            await self.fuzzed.disconnect()
            self.fuzzed, self.count = await self.open(), 0
        else:  # leave and room_message: the fuzzed socket is in no room, so only errors fit
            raise AssertionError(f"{kind} from a socket in no room got {reply}")
        return 0

    async def stop(self) -> None:
        for communicator in (self.fuzzed, self.observer):
            if communicator is not None:
                await communicator.disconnect()

    def close(self) -> None:
        """Stop the hub and everything else this loop still runs."""
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()


def check_error(message: Any, text: str | None, reply: dict[str, Any]) -> None:
    assert set(reply) <= {"type", "code", "detail", "ref"}, reply
    assert reply["code"] in ALLOWED_CODES, reply
    assert isinstance(reply["detail"], str) and reply["detail"], reply
    if message is None:
        assert reply["code"] == ErrorCode.BAD_JSON and "ref" not in reply, (text, reply)
        return
    if "ref" in reply:
        assert reply["ref"] == message.get("ref"), reply
    if message.get("type") not in COMMAND_TYPES:
        # `ref` is read before `type`, so an unusable ref makes it `invalid`.
        assert reply["code"] in {ErrorCode.UNKNOWN_TYPE, ErrorCode.INVALID}, (message, reply)


@sync_to_async
def message_count() -> int:
    return Message.objects.count()


@pytest.fixture
def harness(transactional_db, settings) -> Iterator[Harness]:
    settings.CHAT_RATE_LIMIT = 0  # the fuzzer sends as fast as it can; rate limits have their own tests
    harness = Harness()
    try:
        harness.run(harness.start())
        yield harness
        harness.run(harness.stop())
    finally:
        harness.close()


def fuzz(strategy: st.SearchStrategy, harness: Harness, *, binary: bool = False) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(strategy)
    def property_(frame: Any) -> None:
        if binary:
            harness.run(harness.send(data=frame))
        else:
            harness.run(harness.send(text=frame))

    property_()
    # The last word on leaks: a quiet moment in which nothing more arrives anywhere.
    assert harness.run(harness.observer.receive_nothing(timeout=0.3))
    assert harness.run(harness.fuzzed.receive_nothing(timeout=0.1))
    outcomes = ", ".join(f"{name} {count}" for name, count in harness.outcomes.most_common())
    print(f"\nfuzz: {harness.frames} frames checked ({outcomes})")
    assert harness.frames >= EXAMPLES


def test_any_json_value_gets_its_reply_or_a_protocol_error(harness):
    """JSON of any shape: objects, arrays, scalars, nested, with odd keys and values."""
    fuzz(any_json_frame, harness)


def test_every_command_with_wrong_fields_gets_its_reply_or_a_protocol_error(harness):
    """Each command type with every field missing, of the wrong type, empty, huge or odd."""
    fuzz(command_frame, harness)


def test_odd_unicode_in_every_string_field(harness):
    """Lone surrogates, NUL, bidi overrides, joiners and emoji in data, room, ref and id."""
    fuzz(unicode_command_frame, harness)


def test_text_that_is_not_json_is_bad_json(harness):
    """Arbitrary text and JSON cut short anywhere."""
    fuzz(raw_text_frame, harness)


def test_binary_frames_are_bad_json(harness):
    """Binary frames, random bytes or a valid command's bytes, are refused like bad JSON."""
    fuzz(binary_frame, harness, binary=True)


def test_deep_nesting_is_bad_json_or_parsed(harness):
    """Nesting from 1 to 5,000 levels, complete or cut short: never a crash."""
    fuzz(nested_frame(), harness)
