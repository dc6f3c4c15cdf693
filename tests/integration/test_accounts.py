"""Logged-in users over real HTTP and sockets, on a deployment that turns guests off."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .servers import (
    TIMEOUT,
    Server,
    cookie_value,
    daphne_server,
    fresh_database,
    hello,
    run_manage,
    server_env,
    session_cookie,
)

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def members_only(tmp_path_factory, migrated_database) -> Iterator[Server]:
    """A server with CHAT_ALLOW_GUESTS=false and one user, alice."""
    workdir = tmp_path_factory.mktemp("members")
    database = fresh_database(migrated_database, workdir)
    create = f"from django.contrib.auth.models import User; User.objects.create_user('alice', password={PASSWORD!r})"
    result = run_manage("shell", "-c", create, env=server_env(database))
    assert result.returncode == 0, result.stderr
    with daphne_server(workdir, database, CHAT_ALLOW_GUESTS="false") as server:
        yield server


def log_in(server: Server, username: str, password: str) -> str:
    """Log in through the real form, CSRF token and all; returns the session cookie."""
    status, headers, body = server.get("/accounts/login/?next=/")
    assert status == 200
    csrf_cookie = cookie_value(headers, "csrftoken")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body.decode()).group(1)
    form = urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token, "next": "/"})
    status, headers, _body = server.request(
        "POST",
        "/accounts/login/",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={csrf_cookie}"},
    )
    assert (status, headers["location"]) == (302, ["/"])
    return session_cookie(headers)


def test_visitors_are_sent_to_log_in(members_only):
    status, headers, _body = members_only.get("/")
    assert (status, headers["location"]) == (302, ["/accounts/login/?next=/"])


async def test_socket_without_login_is_closed_with_4401(members_only):
    async with connect(members_only.ws_url) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_logged_in_user_is_that_user_on_the_socket(members_only):
    cookie = log_in(members_only, "alice", PASSWORD)
    status, _headers, body = members_only.get("/", cookie=cookie)
    assert status == 200 and '<strong id="display-name">alice</strong>' in body.decode()
    async with connect(
        members_only.ws_url, additional_headers={"Cookie": cookie}, open_timeout=TIMEOUT
    ) as socket:
        assert (await hello(socket))["user"] == "alice"


def test_csrf_token_is_required_to_log_in(members_only):
    status, _headers, _body = members_only.request(
        "POST",
        "/accounts/login/",
        body=urlencode({"username": "alice", "password": PASSWORD}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 403
