"""Web security: logging out closes sockets, CSRF on every form, cookies, headers, `check --deploy`.

Two other rules have their tests where their code is: only staff reach the admin
(tests/unit/test_admin.py) and only a room's creator or staff close it
(tests/consumers/test_rooms.py).
"""

from __future__ import annotations

import re
import secrets

import pytest
from django.conf import settings as django_settings
from django.test import AsyncClient, Client
from django.urls import NoReverseMatch, reverse

from tests.conftest import connect
from tests.consumers.helpers import cookie_header, logged_in_session, login_session, new_session
from tests.integration.servers import run_manage, server_env

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(username="alice", password=PASSWORD)


# --- logging out closes that session's sockets ------------------------------------


async def log_out(session_key: str) -> None:
    """Log out through the real view (over Django's ASGI handler), as the page's form does."""
    client = AsyncClient()
    client.cookies[django_settings.SESSION_COOKIE_NAME] = session_key
    response = await client.post(reverse("logout"))
    assert response.status_code == 302


@pytest.mark.django_db(transaction=True)
async def test_logging_out_closes_the_sessions_sockets_with_4401():
    """Every socket of the session that logs out is closed; the user's other sessions stay."""
    session = await logged_in_session("alice")
    other_session = await login_session("alice")
    first, hello = await connect(headers=cookie_header(session))
    assert hello["user"] == "alice"
    second, _ = await connect(headers=cookie_header(session))
    elsewhere, _ = await connect(headers=cookie_header(other_session))
    guest, _ = await connect(headers=cookie_header(await new_session()))
    try:
        await log_out(session)
        for socket in (first, second):
            assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
        for socket in (elsewhere, guest):
            await socket.send_json_to({"type": "ping", "id": 1})
            assert await socket.receive_json_from() == {"type": "pong", "id": 1}
    finally:
        for socket in (first, second, elsewhere, guest):
            await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_reconnect_after_logging_out_is_a_guest():
    session = await logged_in_session("alice")
    socket, _ = await connect(headers=cookie_header(session))
    await log_out(session)
    assert (await socket.receive_output(timeout=5))["code"] == 4401
    await socket.disconnect()
    again, hello = await connect(headers=cookie_header(session))
    assert hello["user"].startswith("guest-")
    await again.disconnect()


# --- CSRF on every form -------------------------------------------------------------

POST_FORM = re.compile(r"<form\b[^>]*\bmethod=\"post\"[^>]*>(.*?)</form>", re.S | re.I)


def form_pages() -> list[tuple[str, bool]]:
    """Pages with a form that posts, and whether the visitor must be logged in (staff for the admin)."""
    pages = [(reverse("login"), False), (reverse("chat:index"), True), (reverse("admin:login"), False)]
    try:
        pages.append((reverse("signup"), False))
    except NoReverseMatch:  # accounts are made in the admin where sign-up is not offered
        pass
    pages.append((reverse("password_change"), True))
    return pages


@pytest.mark.django_db
@pytest.mark.parametrize("path, logged_in", form_pages())
def test_every_form_that_posts_carries_a_csrf_token(alice, path, logged_in):
    browser = Client(enforce_csrf_checks=True)
    if logged_in:
        browser.force_login(alice)
    page = browser.get(path)
    assert page.status_code == 200, path
    forms = POST_FORM.findall(page.content.decode())
    assert forms, f"{path} has no form that posts"
    for form in forms:
        assert 'name="csrfmiddlewaretoken"' in form, (path, form[:200])


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["login", "logout", "password_change", "admin:login"])
def test_a_post_without_the_token_is_refused(alice, name):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    response = browser.post(reverse(name), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 403


# --- cookies and headers ------------------------------------------------------------


@pytest.mark.django_db
def test_session_and_csrf_cookies_are_httponly_samesite_and_secure(client):
    """With DEBUG off (as the tests run): Secure, SameSite=Lax, and the session cookie HttpOnly."""
    response = client.get(reverse("chat:index"))
    session = response.cookies[django_settings.SESSION_COOKIE_NAME]
    assert session["httponly"] and session["secure"] and session["samesite"] == "Lax"
    csrf = client.get(reverse("login")).cookies[django_settings.CSRF_COOKIE_NAME]
    assert csrf["secure"] and csrf["samesite"] == "Lax"


@pytest.mark.django_db
def test_the_page_sends_the_security_headers(client):
    response = client.get(reverse("chat:index"))
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


@pytest.mark.django_db
def test_the_page_sends_a_content_security_policy(client):
    """The policy itself is chat/security.py's; here only that the page has one that forbids framing."""
    if "chat.security.ContentSecurityPolicyMiddleware" not in django_settings.MIDDLEWARE:
        pytest.skip("no Content-Security-Policy middleware installed yet")
    policy = client.get(reverse("chat:index"))["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy


@pytest.mark.django_db
def test_https_responses_carry_hsts_and_plain_http_does_not(client):
    secure = client.get(reverse("chat:index"), secure=True)
    assert secure["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert "Strict-Transport-Security" not in client.get(reverse("chat:index"))


@pytest.mark.django_db
def test_the_https_redirect_spares_the_health_check(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    page = client.get(reverse("chat:index"))
    assert page.status_code == 301 and page["Location"].startswith("https://")
    assert client.get(reverse("chat:healthz")).status_code in {200, 503}


# --- the deployment check -------------------------------------------------------------


def production_env(tmp_path, **overrides: str) -> dict[str, str]:
    """What docs/deployment.md tells a production deployment to set; DEBUG unset."""
    env = server_env(tmp_path / "db.sqlite3")
    env |= {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "ALLOWED_HOSTS": "chat.example.com",
        "SECURE_SSL_REDIRECT": "true",
    }
    return env | overrides


def test_check_deploy_is_clean_in_production(tmp_path):
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (1 silenced)." in result.stdout, result.stdout


def test_check_deploy_names_what_production_left_unset(tmp_path):
    """Leaving the HTTPS redirect off (the default) is the one warning, so nobody misses it."""
    env = production_env(tmp_path)
    del env["SECURE_SSL_REDIRECT"]
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0
    assert "security.W008" in result.stderr and result.stderr.count("?: (security.") == 1, result.stderr
