"""The periodic server-event emitter, shared by the server process and its command."""

from __future__ import annotations

import asyncio
import logging

from . import services

log = logging.getLogger(__name__)

DEFAULT_MESSAGE = "Server generated event"  # the classic demo's text


async def emit_server_events(
    *,
    interval: float,
    count: int | None = None,
    message: str = DEFAULT_MESSAGE,
    stop: asyncio.Event | None = None,
) -> int:
    """Publish a server event every `interval` seconds until `count` are sent or `stop` is set.

    Returns how many were sent. A failed publish (say, Redis restarting) is logged
    and retried on the next tick rather than ending the loop.
    """
    stop = stop or asyncio.Event()
    sent = 0
    while count is None or sent < count:
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
            break  # stop was set
        except TimeoutError:
            pass
        try:
            await services.server_event_publish(data=message, count=sent + 1)
        except Exception:
            log.exception("could not publish server event #%d; retrying next tick", sent + 1)
            continue
        sent += 1
    return sent
