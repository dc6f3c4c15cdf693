"""The wire contract as data: client commands, server events, error and close codes.

`parse_client_message()` turns one WebSocket frame into a typed command or raises
`ProtocolError`; `encode()` turns a server event into the text of one frame.
Nothing here touches the database or the channel layer.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, NoReturn


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID = "invalid"
    NOT_IN_ROOM = "not_in_room"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    # Not in the base protocol: the server could not do what was asked (the
    # database or the channel layer failed). Nothing was stored; try again.
    UNAVAILABLE = "unavailable"
    # Not in the base protocol: a `join` beyond CHAT_MAX_ROOMS_PER_CONNECTION.
    TOO_MANY_ROOMS = "too_many_rooms"


class CloseCode:
    NORMAL = 1000
    POLICY_VIOLATION = 1008  # a flood that goes on after its rate_limited errors
    MESSAGE_TOO_BIG = 1009  # sent by the ASGI server itself, from CHAT_MAX_FRAME_BYTES
    SERVICE_RESTART = 1012  # the channel layer was down: reconnect and catch up with `history since`
    LOGIN_REQUIRED = 4401  # also sent to a session's sockets when that session logs out
    ORIGIN_REFUSED = 4403
    TOO_MANY_CONNECTIONS = 4429  # beyond CHAT_MAX_CONNECTIONS_PER_USER, like HTTP 429
    TOO_SLOW = 4408  # stopped reading: more than CHAT_MAX_SEND_BUFFER_BYTES waited for it


ROOM_NAME_MAX_CHARS = 64  # fits a tab label, and a name is never a paragraph
REF_MAX_CHARS = 64  # a correlation id, not a payload
HISTORY_DEFAULT_LIMIT = 50  # one screen of messages
HISTORY_MAX_LIMIT = 200  # bounds the work one request can ask for
# JSON nested deeper than this is refused before Python's recursion limit is near.
MAX_JSON_DEPTH = 32

Ref = str | int | None


class ProtocolError(Exception):
    """A request the server refuses: the sender gets an `error`, nothing else changes."""

    def __init__(self, code: ErrorCode, detail: str, *, ref: Ref = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.ref = ref

    def as_event(self) -> dict[str, Any]:
        return with_ref({"type": "error", "code": str(self.code), "detail": self.detail}, self.ref)


# --- Commands ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    type: ClassVar[str]
    ref: Ref


@dataclass(frozen=True, slots=True)
class Echo(Command):
    type: ClassVar[str] = "echo"
    data: str


@dataclass(frozen=True, slots=True)
class Broadcast(Command):
    type: ClassVar[str] = "broadcast"
    data: str


@dataclass(frozen=True, slots=True)
class Join(Command):
    type: ClassVar[str] = "join"
    room: str


@dataclass(frozen=True, slots=True)
class Leave(Command):
    type: ClassVar[str] = "leave"
    room: str


@dataclass(frozen=True, slots=True)
class RoomMessage(Command):
    type: ClassVar[str] = "room_message"
    room: str
    data: str


@dataclass(frozen=True, slots=True)
class CloseRoom(Command):
    type: ClassVar[str] = "close_room"
    room: str


@dataclass(frozen=True, slots=True)
class History(Command):
    type: ClassVar[str] = "history"
    room: str
    before: int | None
    since: int | None
    limit: int


@dataclass(frozen=True, slots=True)
class Ping(Command):
    type: ClassVar[str] = "ping"
    id: Ref


@dataclass(frozen=True, slots=True)
class Disconnect(Command):
    type: ClassVar[str] = "disconnect"


# --- Parsing -----------------------------------------------------------------


def _json_depth_ok(text: str) -> bool:
    """Cheap pre-check against deeply nested JSON, which would exhaust the stack."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return False
        elif char in "]}":
            depth -= 1
    return True


def _refuse_constant(name: str) -> NoReturn:
    # Python's parser accepts NaN and Infinity, which are not JSON (RFC 8259).
    raise ValueError(f"{name} is not JSON")


def decode_frame(text: str | None, data: bytes | None) -> dict[str, Any]:
    """Decode one frame into a JSON object, or raise `bad_json`."""
    if text is None:
        raise ProtocolError(ErrorCode.BAD_JSON, "Binary frames are not accepted; send JSON as text.")
    # Only texts with many brackets can be too deep; most frames skip the scan.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and not _json_depth_ok(text):
        raise ProtocolError(ErrorCode.BAD_JSON, f"The JSON is nested more than {MAX_JSON_DEPTH} levels deep.")
    try:
        message = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_JSON, "The frame is not valid JSON.") from None
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, 'The frame must be a JSON object, like {"type": "ping"}.')
    return message


def _is_encodable(text: str) -> bool:
    """False for strings with lone surrogates, which no UTF-8 frame can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _correlation_id(message: dict[str, Any], field: str) -> Ref:
    """Read `ref` or a ping's `id`: a string or integer of at most 64 characters."""
    value = message.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ProtocolError(ErrorCode.INVALID, f"'{field}' must be a string or an integer.")
    if len(str(value)) > REF_MAX_CHARS:
        raise ProtocolError(ErrorCode.INVALID, f"'{field}' must be at most {REF_MAX_CHARS} characters.")
    if isinstance(value, str) and not _is_encodable(value):
        raise ProtocolError(ErrorCode.INVALID, f"'{field}' must be valid Unicode text.")
    return value


def read_ref(message: dict[str, Any]) -> Ref:
    """The request's `ref`, or None when it has none or an unusable one."""
    try:
        return _correlation_id(message, "ref")
    except ProtocolError:
        return None


def clean_data(message: dict[str, Any], max_chars: int) -> str:
    data = message.get("data")
    if not isinstance(data, str):
        raise ProtocolError(ErrorCode.INVALID, "'data' must be a string.")
    if not data:
        raise ProtocolError(ErrorCode.INVALID, "'data' must not be empty.")
    if len(data) > max_chars:
        raise ProtocolError(
            ErrorCode.INVALID, f"'data' is {len(data)} characters long; the limit is {max_chars}."
        )
    if not _is_encodable(data):
        raise ProtocolError(ErrorCode.INVALID, "'data' must be valid Unicode text (it has a lone surrogate).")
    return data


def clean_room_name(value: Any) -> str:
    """Validate a room name: trimmed, 1 to 64 code points, no control or surrogate characters."""
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.INVALID, "'room' must be a string.")
    name = value.strip()
    if not name:
        raise ProtocolError(ErrorCode.INVALID, "'room' must not be empty.")
    if len(name) > ROOM_NAME_MAX_CHARS:
        raise ProtocolError(
            ErrorCode.INVALID,
            f"'room' is {len(name)} characters long; the limit is {ROOM_NAME_MAX_CHARS}.",
        )
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise ProtocolError(
                ErrorCode.INVALID,
                f"'room' must not contain control characters (found U+{ord(char):04X}).",
            )
    return name


def _message_id(message: dict[str, Any], field: str, *, lowest: int) -> int | None:
    value = message.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ProtocolError(
            ErrorCode.INVALID, f"'{field}' must be a message id (an integer of at least {lowest})."
        )
    return value


def _history_limit(message: dict[str, Any]) -> int:
    value = message.get("limit", HISTORY_DEFAULT_LIMIT)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= HISTORY_MAX_LIMIT:
        raise ProtocolError(ErrorCode.INVALID, f"'limit' must be an integer from 1 to {HISTORY_MAX_LIMIT}.")
    return value


def parse_client_message(text: str | None, data: bytes | None = None, *, max_chars: int) -> Command:
    """Turn one client frame into a command, or raise `ProtocolError` carrying the frame's ref."""
    message = decode_frame(text, data)
    ref = _correlation_id(message, "ref")
    try:
        return _parse(message, ref, max_chars)
    except ProtocolError as error:
        error.ref = ref
        raise


def _parse(message: dict[str, Any], ref: Ref, max_chars: int) -> Command:
    kind = message.get("type")
    if kind == "echo":
        return Echo(ref=ref, data=clean_data(message, max_chars))
    if kind == "broadcast":
        return Broadcast(ref=ref, data=clean_data(message, max_chars))
    if kind == "join":
        return Join(ref=ref, room=clean_room_name(message.get("room")))
    if kind == "leave":
        return Leave(ref=ref, room=clean_room_name(message.get("room")))
    if kind == "room_message":
        room = clean_room_name(message.get("room"))
        return RoomMessage(ref=ref, room=room, data=clean_data(message, max_chars))
    if kind == "close_room":
        return CloseRoom(ref=ref, room=clean_room_name(message.get("room")))
    if kind == "history":
        room = clean_room_name(message.get("room"))
        # `since: 0` means "from the first message": what a client that saw nothing sends.
        before = _message_id(message, "before", lowest=1)
        since = _message_id(message, "since", lowest=0)
        if before is not None and since is not None:
            raise ProtocolError(ErrorCode.INVALID, "Give 'before' or 'since', not both.")
        return History(ref=ref, room=room, before=before, since=since, limit=_history_limit(message))
    if kind == "ping":
        return Ping(ref=ref, id=_correlation_id(message, "id"))
    if kind == "disconnect":
        return Disconnect(ref=ref)
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "Every message needs a string 'type'.")
    raise ProtocolError(
        ErrorCode.UNKNOWN_TYPE,
        f"Unknown message type {kind[:40]!r}; expected one of: {', '.join(COMMAND_TYPES)}.",
    )


COMMAND_TYPES = tuple(
    cls.type for cls in (Echo, Broadcast, Join, Leave, RoomMessage, CloseRoom, History, Ping, Disconnect)
)


# --- Server events ----------------------------------------------------------


def with_ref(event: dict[str, Any], ref: Ref) -> dict[str, Any]:
    if ref is not None:
        event["ref"] = ref
    return event


def encode(event: dict[str, Any]) -> str:
    """The text of one frame: compact JSON, non-ASCII kept as is (half the bytes for CJK)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def with_ref_text(text: str, ref: Ref) -> str:
    """Add `ref` to an already encoded event without decoding it again."""
    if ref is None:
        return text
    return text[:-1] + ',"ref":' + json.dumps(ref, ensure_ascii=False) + "}"
