"""Serve the chat in production: uvicorn (the default) or daphne, limits from the settings."""

from django.conf import settings
from django.core.management.base import BaseCommand

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
            "--proxy-headers",
            action="store_true",
            help="trust X-Forwarded-For/-Proto from a reverse proxy in front",
        )

    def handle(self, *args, host, port, server, proxy_headers, **options):
        module, _, attribute = settings.ASGI_APPLICATION.rpartition(".")
        application = f"{module}:{attribute}"
        self.stdout.write(f"Chat at http://{host}:{port}/ ({server}; Ctrl-C stops)")
        if server == "daphne":
            run_daphne(application, host=host, port=port, proxy_headers=proxy_headers)
        else:
            run_uvicorn(application, host=host, port=port, proxy_headers=proxy_headers)


def run_uvicorn(application: str, *, host: str, port: int, proxy_headers: bool) -> None:
    import uvicorn

    uvicorn.run(
        application,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
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
    if proxy_headers:
        argv.append("--proxy-headers")
    ChatCommandLine().run([*argv, application])
