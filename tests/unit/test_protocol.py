"""The wire contract as data: parsing client frames, and encoding server events."""

import json

import pytest

from chat import protocol as p
from chat.protocol import ErrorCode, ProtocolError

LIMIT = 10  # a small CHAT_MAX_MESSAGE_CHARS keeps the boundary cases readable


def parse(message, *, max_chars=LIMIT):
    """Parse a dict (sent as JSON) or a raw string, as the consumer does."""
    text = message if isinstance(message, str) else json.dumps(message)
    return p.parse_client_message(text, max_chars=max_chars)


def refused(message, code=ErrorCode.INVALID, *, max_chars=LIMIT) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse(message, max_chars=max_chars)
    assert caught.value.code == code, caught.value.detail
    assert caught.value.detail
    return caught.value


# --- each command ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "echo", "data": "hi"}, p.Echo(ref=None, data="hi")),
        ({"type": "broadcast", "data": "hi", "ref": 1}, p.Broadcast(ref=1, data="hi")),
        ({"type": "join", "room": "den", "ref": "j"}, p.Join(ref="j", room="den")),
        ({"type": "leave", "room": "den"}, p.Leave(ref=None, room="den")),
        ({"type": "room_message", "room": "den", "data": "x"}, p.RoomMessage(ref=None, room="den", data="x")),
        ({"type": "close_room", "room": "den"}, p.CloseRoom(ref=None, room="den")),
        (
            {"type": "history", "room": "den"},
            p.History(ref=None, room="den", before=None, since=None, limit=p.HISTORY_DEFAULT_LIMIT),
        ),
        (
            {"type": "history", "room": "den", "since": 0, "limit": 200},
            p.History(ref=None, room="den", before=None, since=0, limit=200),
        ),
        (
            {"type": "history", "room": "den", "before": 1, "limit": 1},
            p.History(ref=None, room="den", before=1, since=None, limit=1),
        ),
        ({"type": "ping"}, p.Ping(ref=None, id=None)),
        ({"type": "ping", "id": "abc", "ref": 2}, p.Ping(ref=2, id="abc")),
        ({"type": "ping", "id": 0}, p.Ping(ref=None, id=0)),
        ({"type": "disconnect", "ref": "bye"}, p.Disconnect(ref="bye")),
    ],
    ids=lambda value: value.get("type") if isinstance(value, dict) else None,
)
def test_each_command_type_parses_into_its_command(message, expected):
    """Every client type in the protocol's table becomes its typed command, with its ref."""
    assert parse(message) == expected


def test_command_types_are_the_protocols_nine():
    """The table of client types is exactly the protocol's."""
    assert set(p.COMMAND_TYPES) == {
        "echo",
        "broadcast",
        "join",
        "leave",
        "room_message",
        "close_room",
        "history",
        "ping",
        "disconnect",
    }


def test_unknown_fields_are_ignored():
    """Clients may add fields of their own."""
    assert parse({"type": "echo", "data": "x", "client": {"v": 2}}) == p.Echo(ref=None, data="x")


# --- frames that are not JSON objects ------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "nope",
        "{",
        "[]",
        "[{}]",
        '"s"',
        "1",
        "null",
        "true",
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": -Infinity}',
    ],
)
def test_a_frame_that_is_not_a_json_object_is_bad_json(text):
    """Only a JSON object is a message; NaN and Infinity are not JSON."""
    error = refused(text, ErrorCode.BAD_JSON)
    assert error.ref is None


def test_a_binary_frame_is_bad_json():
    """Binary frames are refused whatever they hold."""
    with pytest.raises(ProtocolError) as caught:
        p.parse_client_message(None, b'{"type": "ping"}', max_chars=LIMIT)
    assert caught.value.code == ErrorCode.BAD_JSON


def _nested(depth: int) -> str:
    return '{"type":"ping","x":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def test_nesting_is_limited_to_max_json_depth():
    """Nesting up to MAX_JSON_DEPTH levels parses; one more is bad_json, long before the stack runs out."""
    assert parse(_nested(p.MAX_JSON_DEPTH)) == p.Ping(ref=None, id=None)
    refused(_nested(p.MAX_JSON_DEPTH + 1), ErrorCode.BAD_JSON)
    refused("[" * 1_000_000, ErrorCode.BAD_JSON)
    refused('{"a":' * 100_000, ErrorCode.BAD_JSON)


def test_brackets_inside_strings_are_not_nesting():
    """Brackets and escaped quotes inside strings do not count towards the depth."""
    data = '[{"\\"' * 20 + "]}" * 20
    assert parse({"type": "echo", "data": data}, max_chars=1000) == p.Echo(ref=None, data=data)


# --- type ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"type": None},
        {"type": 1},
        {"type": False},
        {"type": ["echo"]},
        {"type": "ECHO"},
        {"type": "chat.deliver"},
    ],
    ids=repr,
)
def test_a_missing_non_string_or_unknown_type_is_unknown_type(message):
    """The error keeps the frame's ref."""
    error = refused(message | {"ref": "r"}, ErrorCode.UNKNOWN_TYPE)
    assert error.ref == "r"


def test_the_unknown_type_detail_is_short_and_encodable():
    """A huge or unencodable type is not copied whole into the reply."""
    error = refused({"type": "x" * 10_000}, ErrorCode.UNKNOWN_TYPE)
    assert len(error.detail) < 300
    error = refused('{"type": "\\ud800"}', ErrorCode.UNKNOWN_TYPE)
    error.detail.encode("utf-8")


# --- ref and ping id ----------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["", "r", "x" * 64, "🚀" * 64, 0, -1, 10**63, -(10**62)], ids=repr)
def test_a_string_or_integer_ref_of_up_to_64_characters_is_kept(ref):
    """`ref` may be any string or integer of at most 64 characters written out."""
    assert parse({"type": "ping", "ref": ref}).ref == ref
    assert parse({"type": "ping", "id": ref}).id == ref


@pytest.mark.parametrize("ref", [True, False, 1.0, [], {}, "x" * 65, 10**64, -(10**63)], ids=repr)
def test_any_other_ref_or_ping_id_is_invalid(ref):
    """An unusable `ref` is refused, and the error cannot carry it."""
    assert refused({"type": "ping", "ref": ref}).ref is None
    assert refused({"type": "ping", "id": ref, "ref": "mine"}).ref == "mine"


def test_a_lone_surrogate_ref_is_invalid():
    """A ref that could not be written back into a frame is refused."""
    assert refused('{"type": "ping", "ref": "\\ud800"}').ref is None
    refused('{"type": "ping", "id": "a\\udfffb"}')


def test_read_ref_ignores_an_unusable_ref():
    """The rate limiter answers with the ref when it is usable, and without it otherwise."""
    assert p.read_ref({"ref": 5}) == 5
    assert p.read_ref({"ref": True}) is None
    assert p.read_ref({"ref": "x" * 65}) is None
    assert p.read_ref({}) is None


# --- data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["echo", "broadcast", "room_message"])
def test_data_is_a_string_of_1_to_max_chars_code_points(command):
    """Emoji count as one; the limit is inclusive; the error keeps the ref."""
    base = {"type": command, "room": "den", "ref": 7}
    assert parse(base | {"data": "🚀" * LIMIT}).data == "🚀" * LIMIT
    assert parse(base | {"data": "👩‍💻" * 3 + "a"}).data == "👩‍💻" * 3 + "a"  # 10 code points
    for data in ("🚀" * (LIMIT + 1), "", None, 5, ["x"], {"t": "x"}, True):
        assert refused(base | {"data": data}).ref == 7
    assert refused(base).ref == 7  # no data at all


def test_data_is_not_trimmed():
    """Whitespace is part of a message; only room names are trimmed."""
    assert parse({"type": "echo", "data": "  "}).data == "  "


def test_a_lone_surrogate_in_data_is_invalid():
    """JSON can spell a lone surrogate, but no UTF-8 frame can carry it."""
    error = refused('{"type": "echo", "data": "a\\ud800", "ref": 1}')
    assert error.ref == 1
    # A proper surrogate pair is an ordinary astral character.
    assert parse('{"type": "echo", "data": "\\ud83d\\ude80"}').data == "🚀"


# --- room names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (" Lobby ", "Lobby"),
        ("\tLobby\n", "Lobby"),
        ("\u3000会議室\u00a0", "会議室"),
        ("salle café 🚀", "salle café 🚀"),
        ("a/b", "a/b"),
        ("a  b", "a  b"),
        ("🚀" * 64, "🚀" * 64),
        (" " + "x" * 64 + " ", "x" * 64),
        ("👨‍👩‍👧", "👨‍👩‍👧"),
        ("zero\u200bwidth", "zero\u200bwidth"),
    ],
    ids=repr,
)
def test_a_room_name_is_trimmed_and_otherwise_kept(raw, name):
    """Trimmed as `str.strip` does; spaces inside, accents, emoji, joiners and CJK are kept."""
    assert parse({"type": "join", "room": raw}).room == name


def test_room_names_are_not_case_folded_or_normalised():
    """'Lobby' and 'lobby' differ, as do composed and decomposed accents."""
    assert parse({"type": "join", "room": "Lobby"}).room != parse({"type": "join", "room": "lobby"}).room
    assert parse({"type": "join", "room": "cafe\u0301"}).room == "cafe\u0301"


@pytest.mark.parametrize(
    "room",
    [None, 1, ["den"], "", "   ", "x" * 65, "🚀" * 65, "a\x00", "a\nb", "\x1bx", "a\x7f", "a\x85b", "a\x9f"],
    ids=repr,
)
@pytest.mark.parametrize("command", ["join", "leave", "room_message", "close_room", "history"])
def test_a_bad_room_name_is_invalid(command, room):
    """Non-strings, empty names, more than 64 code points and Cc characters are refused."""
    error = refused({"type": command, "room": room, "data": "x", "ref": "r"})
    assert error.ref == "r"


def test_a_surrogate_in_a_room_name_is_invalid():
    """Category Cs is refused."""
    refused('{"type": "join", "room": "a\\udc00"}')


def test_a_missing_room_is_invalid():
    """Every room command needs its room."""
    for command in ("join", "leave", "room_message", "close_room", "history"):
        refused({"type": command, "data": "x"})


# --- history ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"since": 1, "before": 2},
        {"since": 0, "before": 1},
        {"limit": 0},
        {"limit": 201},
        {"limit": -5},
        {"limit": "5"},
        {"limit": 5.0},
        {"limit": True},
        {"since": -1},
        {"since": "1"},
        {"since": 1.5},
        {"since": False},
        {"before": 0},
        {"before": -1},
        {"before": "1"},
        {"before": True},
    ],
    ids=repr,
)
def test_bad_history_paging_is_invalid(fields):
    """`before` and `since` are message ids and exclusive of each other; `limit` is 1 to 200."""
    assert refused({"type": "history", "room": "den", "ref": 3} | fields).ref == 3


def test_history_ids_have_no_upper_bound():
    """Any positive integer is a message id to page from, however large."""
    assert parse({"type": "history", "room": "den", "before": 10**30}).before == 10**30


# --- errors and events -------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["a", 0, ""], ids=repr)
def test_an_error_event_carries_any_ref_it_has(ref):
    """`ref` is included whenever the client gave one, falsy or not."""
    event = ProtocolError(ErrorCode.FORBIDDEN, "No.", ref=ref).as_event()
    assert event == {"type": "error", "code": "forbidden", "detail": "No.", "ref": ref}


def test_an_error_event_has_no_ref_when_none_was_given():
    """Without a ref, the event has no `ref` key at all."""
    assert ProtocolError(ErrorCode.BAD_JSON, "Bad.").as_event() == {
        "type": "error",
        "code": "bad_json",
        "detail": "Bad.",
    }


def test_error_codes_include_the_protocols_six():
    """Every code of the protocol's error table exists, spelled as on the wire."""
    assert {"bad_json", "unknown_type", "invalid", "not_in_room", "forbidden", "rate_limited"} <= {
        str(code) for code in ErrorCode
    }


def test_encode_is_compact_and_keeps_non_ascii():
    """A frame is compact JSON with non-ASCII text as is."""
    assert p.encode({"room": "会議室", "n": 1}) == '{"room":"会議室","n":1}'


@pytest.mark.parametrize("ref", ["r", 'quote " and \\ backslash', "会議", 0, -12, ""], ids=repr)
def test_with_ref_text_adds_the_ref_to_an_encoded_event(ref):
    """Adding `ref` to encoded text is the same as encoding the event with it."""
    event = {"type": "message", "data": "x}", "count": 1}
    text = p.with_ref_text(p.encode(event), ref)
    assert json.loads(text) == event | {"ref": ref}


def test_with_ref_text_without_ref_leaves_the_text_alone():
    """No ref, no change."""
    text = p.encode({"type": "message"})
    assert p.with_ref_text(text, None) is text
