"""The chat page and the health check."""

from __future__ import annotations

import asyncio
import logging
import weakref

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.views import redirect_to_login
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters

from . import protocol
from .auth import guest_name_for_session

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0  # seconds; a load balancer's probe usually allows a few


@never_cache
def index(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        display_name, is_guest = request.user.get_username(), False
    elif not settings.CHAT_ALLOW_GUESTS:
        return redirect_to_login(request.get_full_path())
    else:
        # Saved with the response, so the socket finds the same name on every reconnect.
        display_name, is_guest = guest_name_for_session(request.session), True
    return render(
        request,
        "chat/index.html",
        {
            "display_name": display_name,
            "is_guest": is_guest,
            "chat_config": {
                "maxMessageChars": settings.CHAT_MAX_MESSAGE_CHARS,
                "maxRoomChars": protocol.ROOM_NAME_MAX_CHARS,
            },
        },
    )


@sensitive_post_parameters("password1", "password2")
@csrf_protect
@never_cache
def signup(request: HttpRequest) -> HttpResponse:
    """Create an account with Django's own form, log it in, and go to the chat."""
    if request.user.is_authenticated:
        return redirect(settings.LOGIN_REDIRECT_URL)
    form = UserCreationForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        user = form.save()
        login(request, user)
        return redirect(settings.LOGIN_REDIRECT_URL)
    return render(request, "registration/signup.html", {"form": form})


def _database_ok() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


# The health probe's channel, one per event loop (process), made again after a failure.
_probe_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, str] = weakref.WeakKeyDictionary()


async def _channel_layer_ok() -> bool:
    """Send a message to this process's probe channel and read it back.

    A fresh channel per probe leaked: the pub/sub layer keeps a Redis subscription for
    every channel it makes until a receive on it is cancelled. The hub's prefix puts the
    core layer's read of this channel on the hub's own blocking read of Redis, instead of
    waiting up to 5 s behind it.
    """
    layer = get_channel_layer()
    loop = asyncio.get_running_loop()
    # Taken out while in use: a probe that fails or times out leaves no channel behind
    # (the pub/sub layer drops a channel whose receive is cancelled), and the next makes one.
    channel = _probe_channels.pop(loop, None) or await layer.new_channel(prefix="chat.worker")
    await layer.send(channel, {"type": "health.probe"})
    ok = (await layer.receive(channel)).get("type") == "health.probe"
    _probe_channels[loop] = channel
    return ok


async def _probe(check) -> str:
    try:
        ok = await asyncio.wait_for(check(), timeout=HEALTH_TIMEOUT)
    except Exception as error:  # a health check reports failures, it does not raise them
        log.warning("health check %s failed: %r", getattr(check, "__name__", check), error)
        return "unavailable"
    return "ok" if ok else "unavailable"


@never_cache
async def healthz(request: HttpRequest) -> JsonResponse:
    checks = {
        "database": await _probe(sync_to_async(_database_ok)),
        "channel_layer": await _probe(_channel_layer_ok),
    }
    healthy = all(state == "ok" for state in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", **checks}, status=200 if healthy else 503
    )
