"""Who is on the other end of a socket, and whether their page may connect at all."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

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
