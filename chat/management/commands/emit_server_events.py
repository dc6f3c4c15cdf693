"""Run the periodic server-event emitter as its own process."""

import asyncio
import contextlib
import math
import signal

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chat.emitter import DEFAULT_MESSAGE, emit_server_events


class Command(BaseCommand):
    help = (
        "Publish a `message` with kind 'server' and an increasing count to every connected "
        "client, every --interval seconds, until Ctrl-C, SIGTERM or --count events."
    )

    def add_arguments(self, parser):
        default_interval = settings.CHAT_SERVER_EVENTS_INTERVAL or 10
        parser.add_argument(
            "--interval",
            type=float,
            default=default_interval,
            help=f"seconds between events (default {default_interval:g}, from CHAT_SERVER_EVENTS_INTERVAL)",
        )
        parser.add_argument("--count", type=int, default=None, help="stop after this many events")
        parser.add_argument("--message", default=DEFAULT_MESSAGE, help="the events' text")

    def handle(self, *args, interval, count, message, **options):
        if not (math.isfinite(interval) and interval > 0):
            raise CommandError("--interval must be a number of seconds more than 0.")
        if count is not None and count < 1:
            raise CommandError("--count must be at least 1.")
        if not message:
            raise CommandError("--message must not be empty.")
        if isinstance(get_channel_layer(), InMemoryChannelLayer):
            raise CommandError(
                "The in-memory channel layer reaches no other process, so these events would reach "
                "nobody. Set REDIS_URL to the Redis the server uses (without Redis, the server emits "
                "by itself every CHAT_SERVER_EVENTS_INTERVAL seconds)."
            )
        sent = asyncio.run(self._run(interval=interval, count=count, message=message))
        self.stdout.write(f"Sent {sent} server event(s).")

    async def _run(self, *, interval, count, message):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Only the main thread can take signals (and Windows cannot at all); from
            # call_command in another thread, --count or the caller ends the loop.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        self.stdout.write(f"Emitting a server event every {interval:g} s; Ctrl-C stops.")
        return await emit_server_events(interval=interval, count=count, message=message, stop=stop)
