"""uvicorn's WebSocket protocol, plus a way to write a prepared frame straight to the socket.

The ASGI path for one outgoing message goes through the consumer, Channels' session
wrapper, uvicorn's `send` and the websockets library's framing. For fan-out, where the
same frame goes to hundreds of sockets, this protocol offers the application a scope
extension, `chat.frames`, whose `write(frame)` queues bytes made once (see chat/wire.py)
for the socket. Applications that don't know the extension use plain ASGI.

Queued frames leave together, one write per socket, at the end of the event loop's
turn, or up to FLUSH_DELAY later while the server is busy: under load, when several
messages reach a socket close together, that is one system call (and one TCP segment
on the kernel's side) for all of them instead of one each.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

FRAMES_EXTENSION = "chat.frames"
# While flushes follow each other closely, wait this long to gather more frames per
# write; an idle server writes at once. A chat reader does not notice a millisecond.
FLUSH_DELAY = float(os.environ.get("CHAT_FLUSH_DELAY", "0.001"))


class _Flusher:
    """The sockets with queued frames, written out by one callback per flush."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[ChatWebSocketProtocol] = []
        self.scheduled = False
        self.last_flush = 0.0

    def mark(self, protocol: ChatWebSocketProtocol) -> None:
        self.dirty.append(protocol)
        if not self.scheduled:
            self.scheduled = True
            now = self.loop.time()
            if now - self.last_flush < FLUSH_DELAY:
                self.loop.call_at(self.last_flush + FLUSH_DELAY, self.flush)
            else:
                self.loop.call_soon(self.flush)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        self.scheduled = False
        self.last_flush = self.loop.time()
        for protocol in dirty:
            protocol.flush_frames()


_flushers: dict[asyncio.AbstractEventLoop, _Flusher] = {}


class ChatWebSocketProtocol(WebSocketsSansIOProtocol):
    _queued: list[bytes] | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # None when the handshake itself was refused
            scope["extensions"][FRAMES_EXTENSION] = {"write": self.write_frame}
            flusher = _flushers.get(self.loop)
            if flusher is None:
                flusher = _flushers[self.loop] = _Flusher(self.loop)
            self._flusher = flusher

    def write_frame(self, frame: bytes) -> bool:
        """Queue a complete server frame; False when the socket can no longer take it."""
        if self.close_sent or self.disconnected or not self.handshake_complete:
            return False
        if self._queued is None:
            self._queued = [frame]
            self._flusher.mark(self)
        else:
            self._queued.append(frame)
        return True

    def flush_frames(self) -> None:
        queued, self._queued = self._queued, None
        if queued and not self.transport.is_closing():
            self.transport.write(queued[0] if len(queued) == 1 else b"".join(queued))

    async def send(self, message: Any) -> None:
        # Frames queued before a close (or any ASGI send) must go out before it.
        self.flush_frames()
        await super().send(message)
