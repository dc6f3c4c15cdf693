"""Serve the chat with daphne, its WebSocket limits taken from the settings."""

from daphne.cli import CommandLineInterface
from django.conf import settings
from django.core.management.base import BaseCommand

from chat.server import ChatServer


class ChatCommandLine(CommandLineInterface):
    server_class = ChatServer


class Command(BaseCommand):
    help = (
        "Run the production ASGI server (daphne) on HOST:PORT. Unlike `runserver` it does "
        "not reload code or serve static files itself (WhiteNoise does)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
        parser.add_argument(
            "--proxy-headers",
            action="store_true",
            help="trust X-Forwarded-For/-Proto from a reverse proxy in front",
        )

    def handle(self, *args, host, port, proxy_headers, **options):
        limit = str(settings.CHAT_MAX_FRAME_BYTES)
        argv = [
            "--bind",
            host,
            "--port",
            str(port),
            # Larger frames close the socket with 1009, before the application sees them.
            "--websocket-max-message-size",
            limit,
            "--websocket-max-frame-size",
            limit,
        ]
        if proxy_headers:
            argv.append("--proxy-headers")
        self.stdout.write(f"Chat at http://{host}:{port}/ (daphne; Ctrl-C stops)")
        module, _, attribute = settings.ASGI_APPLICATION.rpartition(".")
        ChatCommandLine().run([*argv, f"{module}:{attribute}"])
