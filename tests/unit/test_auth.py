"""Identities and the Origin rule, without a socket."""

import pytest
from django.contrib.auth.models import AnonymousUser

from chat.auth import (
    GUEST_NAME_SESSION_KEY,
    Actor,
    _guest_actor_sync,
    actor_for_scope,
    guest_name_for_session,
    new_guest_name,
    origin_allowed,
)
from tests.consumers.helpers import GUEST_NAME

# --- Origin ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        None,
        b"http://localhost",
        b"http://localhost:8000",
        b"https://localhost:443",
        b"http://127.0.0.1:8000",
        b"http://[::1]:8000",
        b"http://[::1]",
        b"HTTP://LocalHost:8000",
        b"http://localhost:8000/",
        b"  http://localhost:8000  ",
    ],
    ids=repr,
)
def test_a_missing_origin_or_an_allowed_host_is_accepted(origin):
    """The default ALLOWED_HOSTS admit localhost in any scheme, port and case; no Origin is a non-browser client."""
    assert origin_allowed(origin)


@pytest.mark.parametrize(
    "origin",
    [
        b"http://evil.example",
        b"http://evil.example:8000",
        b"http://localhost.evil.example",
        b"http://evillocalhost",
        b"http://localhost@evil.example",
        b"http://evil.example/http://localhost",
        b"http://127.0.0.2",
        b"null",
        b"",
        b"localhost",
        b"file://",
        b"http://local host",
        b"http://\xff\xfe",
    ],
    ids=repr,
)
def test_any_other_origin_is_refused(origin):
    """Lookalike hosts, userinfo tricks, opaque and empty origins are refused."""
    assert not origin_allowed(origin)


def test_the_origin_rule_follows_allowed_hosts(settings):
    """Matching is Django's: a leading dot allows subdomains; the setting is read at call time."""
    settings.ALLOWED_HOSTS = [".chat.example", "exact.example"]
    assert origin_allowed(b"https://chat.example")
    assert origin_allowed(b"https://eu.chat.example:8443")
    assert origin_allowed(b"https://exact.example")
    assert not origin_allowed(b"https://sub.exact.example")
    assert not origin_allowed(b"http://localhost:8000")


def test_a_wildcard_allowed_host_accepts_any_origin(settings):
    """`ALLOWED_HOSTS = ['*']` allows every host, but an origin must still name one."""
    settings.ALLOWED_HOSTS = ["*"]
    assert origin_allowed(b"https://anything.example")
    assert not origin_allowed(b"null")


# --- guest names ----------------------------------------------------------------------------


def test_a_new_guest_name_is_guest_and_hex_digits():
    """`guest-` followed by at least four hex digits."""
    names = {new_guest_name() for _ in range(50)}
    assert all(GUEST_NAME.fullmatch(name) for name in names)
    assert len(names) > 45


def test_a_sessions_guest_name_is_made_once_and_kept():
    """The first call stores a name in the session; later calls return it."""
    session: dict = {}
    name = guest_name_for_session(session)
    assert session[GUEST_NAME_SESSION_KEY] == name
    assert guest_name_for_session(session) == name


def test_a_socket_without_a_session_is_its_own_guest():
    """No session: the actor is that connection, under a fresh guest name."""
    actor = _guest_actor_sync(None, "abc123")
    assert actor.key == "conn:abc123"
    assert GUEST_NAME.fullmatch(actor.name)
    assert actor.user_id is None and not actor.is_staff


# --- actors ------------------------------------------------------------------------------------


class FakeUser:
    is_authenticated = True

    def __init__(self, pk: int, username: str, *, is_staff: bool = False) -> None:
        self.pk = pk
        self.username = username
        self.is_staff = is_staff

    def get_username(self) -> str:
        return self.username


@pytest.mark.parametrize("allow_guests", [True, False])
async def test_a_logged_in_user_is_known_by_username(settings, allow_guests):
    """A user's actor is keyed by the user and named by the username, guests allowed or not."""
    settings.CHAT_ALLOW_GUESTS = allow_guests
    actor = await actor_for_scope({"user": FakeUser(7, "marie", is_staff=True)}, "conn")
    assert actor == Actor(key="user:7", name="marie", user_id=7, is_staff=True)


async def test_with_guests_off_an_anonymous_visitor_has_no_actor(settings):
    """Guests off and nobody logged in: no identity, so the socket is closed with 4401."""
    settings.CHAT_ALLOW_GUESTS = False
    assert await actor_for_scope({"user": AnonymousUser(), "session": None}, "conn") is None
