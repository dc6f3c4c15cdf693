"""Serve the chat in production: uvicorn (the default) or daphne, limits from the settings."""

import os

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

SERVERS = ("uvicorn", "daphne")


class Command(BaseCommand):
    help = (
        "Run the production ASGI server on HOST:PORT. Unlike `runserver` it does not reload "
        "code or serve static files itself (WhiteNoise does). See docs/performance.md for "
        "why uvicorn is the default."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
        parser.add_argument(
            "--server", choices=SERVERS, default="uvicorn", help="ASGI server (default uvicorn)"
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=int(os.environ.get("WEB_CONCURRENCY") or 1),
            help="worker processes sharing the port, each its own part of the chat through Redis "
            "(default $WEB_CONCURRENCY or 1; about one per core; uvicorn only)",
        )
        parser.add_argument(
            "--proxy-headers",
            action="store_true",
            help="trust X-Forwarded-For/-Proto from a reverse proxy in front",
        )

    def handle(self, *args, host, port, server, workers, proxy_headers, **options):
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        if workers > 1 and server != "uvicorn":
            raise CommandError(
                "--workers needs uvicorn; to serve with daphne, start one `serve --server daphne` "
                "per worker, each on its own port, behind the reverse proxy."
            )
        if workers > 1 and isinstance(get_channel_layer(), InMemoryChannelLayer):
            raise CommandError(
                "Several workers need REDIS_URL: with the in-memory channel layer each worker "
                "would be a chat of its own."
            )
        module, _, attribute = settings.ASGI_APPLICATION.rpartition(".")
        application = f"{module}:{attribute}"
        plural = "s" if workers > 1 else ""
        self.stdout.write(f"Chat at http://{host}:{port}/ ({server}, {workers} worker{plural}; Ctrl-C stops)")
        if server == "daphne":
            run_daphne(application, host=host, port=port, proxy_headers=proxy_headers)
        else:
            run_uvicorn(application, host=host, port=port, workers=workers, proxy_headers=proxy_headers)


def run_uvicorn(application: str, *, host: str, port: int, workers: int, proxy_headers: bool) -> None:
    import uvicorn

    uvicorn.run(
        application,
        host=host,
        port=port,
        # More than one: a supervisor process starts them on one shared socket and
        # restarts any that dies; each is a separate chat process (hub, heartbeat).
        workers=workers,
        loop="uvloop",
        # httptools, with a deadline for the handshake request (CHAT_HANDSHAKE_TIMEOUT).
        http="chat.handshake:HandshakeDeadlineProtocol",
        ws="chat.uvicorn_ws:ChatWebSocketProtocol",
        # Larger messages close the socket with 1009, before the application sees them.
        ws_max_size=settings.CHAT_MAX_FRAME_BYTES,
        # Compression would cost CPU per recipient and a zlib context per socket; chat
        # messages are short, and fan-out shares one uncompressed frame among sockets.
        ws_per_message_deflate=False,
        lifespan="off",
        proxy_headers=proxy_headers,
        forwarded_allow_ips="*" if proxy_headers else None,
        access_log=False,
        log_level="warning",  # one line per WebSocket at "info" is noise at thousands of sockets
    )


def run_daphne(application: str, *, host: str, port: int, proxy_headers: bool) -> None:
    from daphne.cli import CommandLineInterface

    from chat.server import ChatServer

    class ChatCommandLine(CommandLineInterface):
        server_class = ChatServer

    limit = str(settings.CHAT_MAX_FRAME_BYTES)
    argv = ["--bind", host, "--port", str(port)]
    # Larger frames close the socket with 1009, before the application sees them.
    argv += ["--websocket-max-message-size", limit, "--websocket-max-frame-size", limit]
    # Seconds from the connection to an accepted WebSocket (whole seconds: daphne's flag is an int).
    argv += ["--websocket_connect_timeout", str(max(1, round(settings.CHAT_HANDSHAKE_TIMEOUT)))]
    # Daphne closes every WebSocket after a day by default; a chat socket lives until it leaves.
    argv += ["--websocket_timeout", "-1"]
    if proxy_headers:
        argv.append("--proxy-headers")
    ChatCommandLine().run([*argv, application])
