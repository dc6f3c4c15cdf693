"""The chat page, the login around it, and the health check."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from django.test import Client
from django.urls import reverse

from chat import views
from chat.auth import GUEST_NAME_SESSION_KEY

pytestmark = pytest.mark.django_db

INDEX = reverse("chat:index")
HEALTHZ = reverse("chat:healthz")
LOGIN = reverse("login")
SIGNUP = reverse("signup")
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(username="alice", password=PASSWORD)


# --- /healthz ------------------------------------------------------------------


def test_health_check_is_ok_when_everything_answers(client):
    response = client.get(HEALTHZ)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}
    assert "no-cache" in response["Cache-Control"]  # a probe must never see a cached answer


def test_health_check_is_503_when_the_database_fails(client, monkeypatch):
    def broken():
        raise ConnectionError("database is down")

    monkeypatch.setattr(views, "_database_ok", broken)
    response = client.get(HEALTHZ)
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "unavailable", "channel_layer": "ok"}


class BrokenLayer:
    """A channel layer whose server is gone."""

    async def new_channel(self, prefix="specific."):
        raise ConnectionError("Redis is down")


class HungLayer:
    """A channel layer that accepts a message and never delivers it."""

    async def new_channel(self, prefix="specific."):
        return prefix + "hung"

    async def send(self, channel, message):
        pass

    async def receive(self, channel):
        await asyncio.Event().wait()


@pytest.mark.parametrize("layer", [BrokenLayer(), HungLayer()], ids=["broken", "hung"])
def test_health_check_is_503_when_the_channel_layer_fails(client, monkeypatch, layer):
    monkeypatch.setattr(views, "get_channel_layer", lambda: layer)
    monkeypatch.setattr(views, "HEALTH_TIMEOUT", 0.05)
    response = client.get(HEALTHZ)
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "channel_layer": "unavailable"}


async def test_channel_layer_probe_needs_its_own_message_back(monkeypatch):
    """The layer is "ok" only when the message the probe sent is the one that comes back."""

    class Liar(HungLayer):
        async def receive(self, channel):
            return {"type": "something.else"}

    assert await views._probe(views._channel_layer_ok) == "ok"
    monkeypatch.setattr(views, "get_channel_layer", lambda: Liar())
    assert await views._probe(views._channel_layer_ok) == "unavailable"


# --- the chat page -------------------------------------------------------------


def shown_name(response) -> str:
    match = re.search(r'<strong id="display-name">([^<]+)</strong>', response.content.decode())
    assert match, response.content.decode()
    return match.group(1)


def test_page_gives_a_guest_a_name_that_lasts_the_session(client):
    first = client.get(INDEX)
    assert first.status_code == 200
    name = shown_name(first)
    assert re.fullmatch(r"guest-[0-9a-f]{4,}", name)
    assert "(guest)" in first.content.decode()
    assert client.session[GUEST_NAME_SESSION_KEY] == name
    assert shown_name(client.get(INDEX)) == name
    assert shown_name(Client().get(INDEX)) != name  # another visitor, another guest


def test_page_is_never_cached(client):
    assert "no-cache" in client.get(INDEX)["Cache-Control"]


def test_page_carries_the_client_script_and_its_limits(client, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 123
    page = client.get(INDEX).content.decode()
    assert re.search(r'<script src="/static/chat/chat\.js"></script>', page)
    config = re.search(r'<script id="chat-config" type="application/json">(.*?)</script>', page)
    assert config and json.loads(config.group(1)) == {"maxMessageChars": 123, "maxRoomChars": 64}


def test_page_shows_a_logged_in_user_by_username(client, alice):
    client.force_login(alice)
    response = client.get(INDEX)
    assert shown_name(response) == "alice"
    assert "(guest)" not in response.content.decode()
    assert GUEST_NAME_SESSION_KEY not in client.session


def test_without_guests_visitors_are_sent_to_log_in(client, settings, alice):
    settings.CHAT_ALLOW_GUESTS = False
    response = client.get(INDEX)
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next={INDEX}"
    assert GUEST_NAME_SESSION_KEY not in client.session
    client.force_login(alice)
    assert shown_name(client.get(INDEX)) == "alice"


# --- logging in ----------------------------------------------------------------


def csrf_token(response) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.content.decode())
    assert match, response.content.decode()
    return match.group(1)


def test_login_works_with_its_csrf_token(alice):
    browser = Client(enforce_csrf_checks=True)
    form = browser.get(LOGIN)
    assert form.status_code == 200
    token = csrf_token(form)
    response = browser.post(LOGIN, {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == INDEX
    assert shown_name(browser.get(INDEX)) == "alice"


def test_login_without_csrf_token_is_refused(alice):
    browser = Client(enforce_csrf_checks=True)
    browser.get(LOGIN)
    response = browser.post(LOGIN, {"username": "alice", "password": PASSWORD})
    assert response.status_code == 403
    assert "_auth_user_id" not in browser.session


def test_login_with_a_wrong_password_shows_the_form_again(alice):
    browser = Client(enforce_csrf_checks=True)
    token = csrf_token(browser.get(LOGIN))
    response = browser.post(LOGIN, {"username": "alice", "password": "wrong", "csrfmiddlewaretoken": token})
    assert response.status_code == 200 and response.context["form"].errors


def test_login_returns_to_the_page_asked_for(client, settings, alice):
    settings.CHAT_ALLOW_GUESTS = False
    login_url = client.get(INDEX)["Location"]
    form = client.get(login_url)
    assert f'name="next" value="{INDEX}"' in form.content.decode()
    response = client.post(login_url, {"username": "alice", "password": PASSWORD, "next": INDEX})
    assert response.status_code == 302 and response["Location"] == INDEX


def test_logout_is_a_post_and_returns_to_the_chat(client, alice):
    client.force_login(alice)
    page = client.get(INDEX).content.decode()
    assert f'action="{reverse("logout")}"' in page
    response = client.post(reverse("logout"))
    assert response.status_code == 302 and response["Location"] == INDEX
    assert shown_name(client.get(INDEX)).startswith("guest-")


# --- signing up ------------------------------------------------------------------


def test_sign_up_creates_the_account_logs_it_in_and_returns_to_the_chat(django_user_model):
    browser = Client(enforce_csrf_checks=True)
    form = browser.get(SIGNUP)
    assert form.status_code == 200 and "no-cache" in form["Cache-Control"]
    response = browser.post(
        SIGNUP,
        {
            "username": "carol",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "csrfmiddlewaretoken": csrf_token(form),
        },
    )
    assert response.status_code == 302 and response["Location"] == INDEX
    assert django_user_model.objects.get(username="carol").check_password(PASSWORD)
    page = browser.get(INDEX)
    assert shown_name(page) == "carol" and "(guest)" not in page.content.decode()


def test_sign_up_without_csrf_token_is_refused(django_user_model):
    browser = Client(enforce_csrf_checks=True)
    browser.get(SIGNUP)
    response = browser.post(SIGNUP, {"username": "carol", "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 403
    assert not django_user_model.objects.filter(username="carol").exists()


@pytest.mark.parametrize(
    ("username", "password1", "password2"),
    [
        ("alice", PASSWORD, PASSWORD),
        ("ALICE", PASSWORD, PASSWORD),
        ("dave", PASSWORD, "different-horse"),
        ("dave", "1234", "1234"),
    ],
    ids=["taken", "taken-other-case", "mismatch", "weak"],
)
def test_sign_up_with_a_bad_form_shows_it_again(
    client, alice, django_user_model, username, password1, password2
):
    response = client.post(SIGNUP, {"username": username, "password1": password1, "password2": password2})
    assert response.status_code == 200 and response.context["form"].errors
    assert django_user_model.objects.count() == 1
    assert "_auth_user_id" not in client.session


def test_sign_up_when_logged_in_goes_back_to_the_chat(client, alice):
    client.force_login(alice)
    response = client.get(SIGNUP)
    assert response.status_code == 302 and response["Location"] == INDEX


def test_visitors_are_offered_sign_up_and_log_in(client):
    page = client.get(INDEX).content.decode()
    assert f'href="{SIGNUP}"' in page and f'href="{LOGIN}"' in page
    assert f'href="{SIGNUP}"' in client.get(LOGIN).content.decode()


# --- Content-Security-Policy ------------------------------------------------------


@pytest.mark.parametrize("path", [INDEX, LOGIN, SIGNUP, HEALTHZ])
def test_every_response_carries_a_strict_content_security_policy(client, path):
    policy = client.get(path)["Content-Security-Policy"]
    directives = dict(
        (name, sources) for name, _, sources in (part.strip().partition(" ") for part in policy.split(";"))
    )
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self' ws://testserver wss://testserver"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert "unsafe" not in policy


def test_content_security_policy_of_a_refused_host_names_no_host(client):
    response = client.get(INDEX, HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert "evil" not in response["Content-Security-Policy"]
    assert "connect-src 'self';" in response["Content-Security-Policy"]


def test_pages_need_no_inline_script_or_style(client, alice):
    """What the policy forbids is not there: no inline code, no style attributes, no other hosts."""
    pages = [client.get(INDEX), client.get(LOGIN), client.get(SIGNUP)]
    client.force_login(alice)
    pages.append(client.get(INDEX))
    for response in pages:
        html = response.content.decode()
        assert "<style" not in html
        for tag in re.findall(r"<[a-zA-Z][^>]*>", html):
            assert not re.search(r"\s(on[a-z]+|style)=", tag), tag
        for script in re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S):
            attributes, body = script
            assert (
                'src="/static/' in attributes and not body.strip()
            ) or 'type="application/json"' in attributes
        assert "http://" not in html and "https://" not in html
