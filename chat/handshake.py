"""uvicorn's HTTP protocol with a deadline for the request that opens a connection.

uvicorn times out idle keep-alive connections, but not a new connection whose request
never completes: a client that opens sockets and sends its handshake a byte at a time
(slowloris) holds each of them for as long as it likes. Here the request's headers must
be complete within CHAT_HANDSHAKE_TIMEOUT seconds of the connection, or it is closed.
"""

from __future__ import annotations

import asyncio

from django.conf import settings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HandshakeDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose first request is not in on time."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(settings.CHAT_HANDSHAKE_TIMEOUT, self._too_slow)

    def on_headers_complete(self) -> None:
        self._cancel_deadline()  # before an upgrade hands the connection to the WebSocket protocol
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()
