"""`manage.py serve --server daphne`: the limits it gives daphne's command line."""

from __future__ import annotations

from daphne.cli import CommandLineInterface
from django.core.management import call_command


def test_daphne_gets_the_frame_limit_the_handshake_deadline_and_no_socket_lifetime(monkeypatch, settings):
    settings.CHAT_MAX_FRAME_BYTES = 4096
    settings.CHAT_HANDSHAKE_TIMEOUT = 7
    seen: list[list[str]] = []
    monkeypatch.setattr(CommandLineInterface, "run", lambda self, argv: seen.append(argv))

    call_command("serve", "--server", "daphne", "--host", "127.0.0.1", "--port", "8123")

    [argv] = seen
    options = dict(zip(argv[:-1:2], argv[1:-1:2], strict=False))
    assert options["--websocket-max-message-size"] == options["--websocket-max-frame-size"] == "4096"
    assert options["--websocket_connect_timeout"] == "7"
    assert options["--websocket_timeout"] == "-1"  # daphne's default closes every socket after a day
    assert argv[-1] == "chatproject.asgi:application"
