"""Who a socket is: guest names, sessions, logged-in users, guests turned off, the Origin rule."""

import pytest
from channels.testing import WebsocketCommunicator

from chat.auth import GUEST_NAME_SESSION_KEY
from chatproject.asgi import application
from tests.consumers.helpers import (
    GUEST_NAME,
    change_password,
    cookie_header,
    frame,
    join,
    logged_in_session,
    login_session,
    new_session,
    post,
    request,
    session_data,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def handshake():
    """Attempt handshakes that may be refused; every socket is disconnected at teardown."""
    opened = []

    async def attempt(headers):
        communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
        opened.append(communicator)
        accepted, detail = await communicator.connect()
        return communicator, accepted, detail

    yield attempt
    for communicator in opened:
        await communicator.disconnect()


# --- guests -----------------------------------------------------------------------


async def test_a_guest_without_a_cookie_gets_a_name_for_that_connection_only(open_socket):
    """No session cookie: a `guest-` name with hex digits, different on every connection."""
    _, first_hello = await open_socket()
    _, second_hello = await open_socket()
    assert GUEST_NAME.fullmatch(first_hello["user"])
    assert GUEST_NAME.fullmatch(second_hello["user"])
    assert first_hello["user"] != second_hello["user"]


async def test_a_guest_session_keeps_its_name_across_reconnects(open_socket):
    """The same session cookie gives the same guest name on every connection, and the session keeps it."""
    session = await new_session()
    first, first_hello = await open_socket(headers=cookie_header(session))
    name = first_hello["user"]
    assert GUEST_NAME.fullmatch(name)
    assert (await session_data(session))[GUEST_NAME_SESSION_KEY] == name
    await first.disconnect()

    _, again_hello = await open_socket(headers=cookie_header(session))
    _, also_hello = await open_socket(headers=cookie_header(session))
    assert again_hello["user"] == also_hello["user"] == name


async def test_a_guest_name_given_by_the_page_is_used(open_socket):
    """The name the page stored in the session is the socket's name."""
    session = await new_session(**{GUEST_NAME_SESSION_KEY: "guest-c0ffee"})
    alice, hello = await open_socket(headers=cookie_header(session))
    assert hello["user"] == "guest-c0ffee"
    await join(alice, "den")
    assert (await post(alice, "den", "hi"))["sender"] == "guest-c0ffee"


async def test_two_guest_sessions_have_different_names(open_socket):
    """Different sessions are different guests."""
    _, first = await open_socket(headers=cookie_header(await new_session()))
    _, second = await open_socket(headers=cookie_header(await new_session()))
    assert first["user"] != second["user"]


async def test_a_cookie_for_no_live_session_is_a_guest_for_that_connection(open_socket):
    """An unknown session key counts as no cookie at all."""
    headers = cookie_header("nosuchsessionkeyexists0123456789")
    _, first = await open_socket(headers=headers)
    _, second = await open_socket(headers=headers)
    assert GUEST_NAME.fullmatch(first["user"]) and GUEST_NAME.fullmatch(second["user"])
    assert first["user"] != second["user"]


# --- room creators ----------------------------------------------------------------


async def test_a_guest_session_stays_the_creator_of_its_rooms_after_reconnecting(open_socket):
    """The session, not the socket, created the room: a new socket of that session may close it."""
    session = await new_session()
    first, _ = await open_socket(headers=cookie_header(session))
    await join(first, "mine")
    await first.disconnect()
    other, _ = await open_socket(headers=cookie_header(await new_session()))
    assert (await request(other, frame("close_room", room="mine")))["code"] == "forbidden"
    again, _ = await open_socket(headers=cookie_header(session))
    assert (await request(again, frame("close_room", room="mine")))["type"] == "room_closed"


async def test_a_guest_without_a_cookie_loses_its_rooms_on_reconnect(open_socket):
    """Without a session, the creator is that one connection."""
    first, _ = await open_socket()
    await join(first, "fleeting")
    await first.disconnect()
    second, _ = await open_socket()
    assert (await request(second, frame("close_room", room="fleeting")))["code"] == "forbidden"


async def test_a_user_is_the_creator_from_any_session(open_socket):
    """A logged-in creator may close the room after logging in again elsewhere."""
    laptop, _ = await open_socket(headers=cookie_header(await logged_in_session("ann")))
    await join(laptop, "ann's room")
    phone, phone_hello = await open_socket(headers=cookie_header(await login_session("ann")))
    assert phone_hello["user"] == "ann"
    closed = await request(phone, frame("close_room", room="ann's room"))
    assert closed["type"] == "room_closed" and closed["by"] == "ann"
    assert (await laptop.receive_json_from())["type"] == "room_closed"


# --- logged-in users ---------------------------------------------------------------


async def test_a_logged_in_users_display_name_is_the_username(open_socket):
    """The username is the name in `Connected`, on messages and in presence."""
    session = await logged_in_session("marie")
    marie, hello = await open_socket(headers=cookie_header(session))
    assert hello["user"] == "marie"
    await request(marie, frame("join", room="den"))
    assert (await marie.receive_json_from())["user"] == "marie"
    assert (await post(marie, "den", "bonjour"))["sender"] == "marie"
    assert (await request(marie, frame("broadcast", data="à tous")))["sender"] == "marie"


async def test_a_session_whose_login_is_no_longer_valid_is_a_guest(open_socket):
    """A session with a stale password hash does not log anyone in."""
    session = await logged_in_session("changed")
    await change_password("changed")
    _, hello = await open_socket(headers=cookie_header(session))
    assert GUEST_NAME.fullmatch(hello["user"])


# --- guests turned off ---------------------------------------------------------------


async def test_with_guests_off_a_visitor_is_accepted_then_closed_with_4401(handshake, settings):
    """`CHAT_ALLOW_GUESTS = False`: the handshake is accepted and at once closed with 4401, saying nothing."""
    settings.CHAT_ALLOW_GUESTS = False
    communicator, accepted, _ = await handshake([])
    assert accepted
    assert await communicator.receive_output() == {"type": "websocket.close", "code": 4401}
    assert await communicator.receive_nothing()


async def test_with_guests_off_a_guest_session_is_closed_with_4401(handshake, settings):
    """A guest session is not a login."""
    settings.CHAT_ALLOW_GUESTS = False
    session = await new_session(**{GUEST_NAME_SESSION_KEY: "guest-abcd"})
    communicator, accepted, _ = await handshake(cookie_header(session))
    assert accepted
    assert (await communicator.receive_output())["code"] == 4401


async def test_with_guests_off_a_logged_in_user_chats_as_usual(open_socket, settings):
    """Turning guests off changes nothing for users who logged in."""
    settings.CHAT_ALLOW_GUESTS = False
    user, hello = await open_socket(headers=cookie_header(await logged_in_session("member")))
    assert hello["user"] == "member" and hello["data"] == "Connected"
    assert (await request(user, frame("echo", data="x")))["kind"] == "echo"


# --- Origin ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        None,
        b"http://localhost:8000",
        b"https://localhost",
        b"http://127.0.0.1:8000",
        b"http://[::1]:8000",
        b"HTTP://LOCALHOST:8000",
    ],
)
async def test_a_missing_or_allowed_origin_is_accepted(handshake, origin):
    """No Origin (a non-browser client) or an Origin whose host is in ALLOWED_HOSTS, any scheme or port."""
    headers = [] if origin is None else [(b"origin", origin)]
    communicator, accepted, _ = await handshake(headers)
    assert accepted
    assert (await communicator.receive_json_from())["data"] == "Connected"


@pytest.mark.parametrize(
    "origin",
    [
        b"http://evil.example",
        b"http://localhost.evil.example",
        b"http://evil.example/localhost",
        b"http://localhost@evil.example",
        b"null",
        b"",
        b"not a url",
    ],
)
async def test_any_other_origin_is_refused_before_the_socket_opens(handshake, origin):
    """A page on a host outside ALLOWED_HOSTS cannot open a socket."""
    communicator, accepted, code = await handshake([(b"origin", origin)])
    assert not accepted
    assert code in (1000, 4403, 403), code
    assert await communicator.receive_nothing()


async def test_origins_follow_the_allowed_hosts_setting(handshake, settings):
    """The Origin rule reads ALLOWED_HOSTS, wildcards included."""
    settings.ALLOWED_HOSTS = [".chat.example", "exact.example"]
    for origin, allowed in [
        (b"https://chat.example", True),
        (b"https://eu.chat.example:8443", True),
        (b"https://exact.example", True),
        (b"https://sub.exact.example", False),
        (b"http://localhost:8000", False),
    ]:
        _, accepted, _ = await handshake([(b"origin", origin)])
        assert accepted is allowed, origin
