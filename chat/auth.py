"""Who is on the other end of a socket, and whether their page may connect at all."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver
from django.http.request import split_domain_port, validate_host

log = logging.getLogger(__name__)

GUEST_NAME_SESSION_KEY = "chat_guest_name"


@dataclass(frozen=True, slots=True)
class Actor:
    """The identity behind a connection, as rooms and messages record it."""

    key: str  # stable identity: "user:<pk>", "session:<digest>" or "conn:<id>"
    name: str  # the display name everyone sees
    user_id: int | None = None
    is_staff: bool = False


def new_guest_name() -> str:
    # Six hex digits: 16 million names, so two guests rarely look alike.
    return f"guest-{secrets.token_hex(3)}"


def guest_name_for_session(session: Any) -> str:
    """The session's guest name, created on first use. The caller saves the session."""
    name = session.get(GUEST_NAME_SESSION_KEY)
    if not name:
        name = new_guest_name()
        session[GUEST_NAME_SESSION_KEY] = name
    return name


def _session_digest(session_key: str) -> str:
    # The raw key is a credential; rooms store only a digest of it.
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


def session_group(session_key: str) -> str:
    """The channel-layer group where the end of a logged-in session is announced."""
    return f"chat.session.{_session_digest(session_key)}"


def _guest_actor_sync(session: Any, connection_id: str) -> Actor:
    if session is not None:
        name = session.get(GUEST_NAME_SESSION_KEY)  # loads the session, dropping unknown keys
        if session.session_key:
            if not name:
                name = guest_name_for_session(session)
                # Sessions are never saved automatically inside a consumer.
                session.save()
            return Actor(key=f"session:{_session_digest(session.session_key)}", name=name)
    return Actor(key=f"conn:{connection_id}", name=new_guest_name())


async def actor_for_scope(scope: dict[str, Any], connection_id: str) -> Actor | None:
    """The connection's actor, or None when guests are off and nobody logged in."""
    user = scope.get("user")
    if user is not None and user.is_authenticated:
        return Actor(key=f"user:{user.pk}", name=user.get_username(), user_id=user.pk, is_staff=user.is_staff)
    if not settings.CHAT_ALLOW_GUESTS:
        return None
    return await database_sync_to_async(_guest_actor_sync)(scope.get("session"), connection_id)


def origin_allowed(origin: bytes | None) -> bool:
    """A missing Origin (a non-browser client) is fine; otherwise its host must be allowed."""
    if origin is None:
        return True
    try:
        host = urlsplit(origin.decode("latin-1").strip()).netloc.lower()
    except ValueError:
        return False
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


class OriginValidator:
    """Refuse WebSocket handshakes from pages on hosts outside ALLOWED_HOSTS (HTTP 403)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            origin = next((value for name, value in scope.get("headers", []) if name == b"origin"), None)
            if not origin_allowed(origin):
                return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


# --- Logging out closes the session's sockets ---------------------------------
# Connected when this module is imported: chat.views imports it, and every logout
# happens in a request, after the URLconf (and so chat.views) has been loaded.


@receiver(user_logged_out, dispatch_uid="chat.close_sockets_of_session")
def close_sockets_on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Close every socket of the session that logs out, on every worker, with 4401."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if not session_key:
        return
    from . import services  # services imports the models; this module must not at import
    from .protocol import CloseCode

    event = services.close_sockets_event(group=session_group(session_key), code=CloseCode.LOGIN_REQUIRED)
    try:
        async_to_sync(services.publish)(event)
    except Exception:  # logging out must work even when the channel layer does not
        log.exception("could not close the sockets of a session that logged out")
