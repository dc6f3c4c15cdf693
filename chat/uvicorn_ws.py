"""uvicorn's WebSocket protocol, plus a way to write a prepared frame straight to the socket.

The ASGI path for one outgoing message goes through the consumer, Channels' session
wrapper, uvicorn's `send` and the websockets library's framing. For fan-out, where the
same frame goes to hundreds of sockets, this protocol offers the application a scope
extension, `chat.frames`, whose `write(frame)` queues bytes made once (see chat/wire.py)
for the socket. Applications that don't know the extension use plain ASGI.

Queued frames leave together, one write per socket. Each write is a system call
(about 12 microseconds on loopback on a small VM), so at fan-out rates the calls, not
the Python, are the cost: a message to 1,000 sockets is 1,000 calls. The flusher
therefore waits, after each flush, as long as that flush took before it starts the
next (capped at MAX_FLUSH_WAIT): an idle server writes at once, and a busy one gathers
more frames into each write, spending at most about half its time writing.

A client that stops reading cannot make the server hold its messages without bound:
once more than CHAT_MAX_SEND_BUFFER_BYTES wait for it (beyond what the kernel holds),
it is closed with 4408 and dropped SLOW_READER_GRACE seconds later if it does not read
the close. It reconnects and catches up with `history since`; the others notice nothing.

The protocol also makes an idle socket cheaper to hold (thousands of them are the
common case): once the scope has the handshake's headers, the request and the sent
101 response are dropped instead of living as long as the socket (4.3 KB a socket
with the benchmark's 11 headers; browsers send more).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from django.conf import settings
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .protocol import CloseCode
from .wire import FRAMES_EXTENSION

log = logging.getLogger(__name__)

# After a flush, wait this many times as long as it took: the flusher writes at most
# 1 / (1 + factor) of the time, and a frame waits at most (1 + factor) flushes.
FLUSH_WAIT_FACTOR = 1.0
# The longest a frame waits for company; far below what a reader notices in a chat.
MAX_FLUSH_WAIT = 0.025
# A slow reader gets this long to read its close frame before the connection is cut.
SLOW_READER_GRACE = 5.0


class _Flusher:
    """The sockets with queued frames, written out by one callback per flush."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[ChatWebSocketProtocol] = []
        self.scheduled = False
        self.next_flush = 0.0  # loop time before which a new flush waits

    def mark(self, protocol: ChatWebSocketProtocol) -> None:
        self.dirty.append(protocol)
        if not self.scheduled:
            self.scheduled = True
            if self.next_flush > self.loop.time():
                self.loop.call_at(self.next_flush, self.flush)
            else:
                self.loop.call_soon(self.flush)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        self.scheduled = False
        started = time.perf_counter()
        for protocol in dirty:
            protocol.flush_frames()
        took = time.perf_counter() - started
        self.next_flush = self.loop.time() + min(took * FLUSH_WAIT_FACTOR, MAX_FLUSH_WAIT)


_flushers: dict[asyncio.AbstractEventLoop, _Flusher] = {}


class ChatWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's protocol with the frame extension, and less memory per idle socket."""

    _queued: list[bytes] | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The scope has its own copy of the request's headers, and nothing reads these
        # again; but the request lives on, in the websockets parser's suspended frame, for
        # as long as the socket does (about 2 KB from a benchmark client, more from a browser).
        event.headers.clear()
        scope = getattr(self, "scope", None)
        if scope is not None:  # None when the handshake itself was refused
            scope["extensions"][FRAMES_EXTENSION] = {"write": self.write_frame}
            flusher = _flushers.get(self.loop)
            if flusher is None:
                flusher = _flushers[self.loop] = _Flusher(self.loop)
            self._flusher = flusher

    def write_frame(self, frame: bytes) -> bool:
        """Queue a complete server frame; False when the socket can no longer take it."""
        if self.close_sent or self.disconnected or not self.handshake_complete or self.transport.is_closing():
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
            if self.transport.get_write_buffer_size() > settings.CHAT_MAX_SEND_BUFFER_BYTES:
                self.drop_slow_reader()

    def drop_slow_reader(self) -> None:
        """Close a socket that stopped reading, so its backlog stops growing."""
        log.warning(
            "closing %s:%s with %s: %d bytes wait for a client that stopped reading",
            *(self.client or ("?", "?")),
            CloseCode.TOO_SLOW,
            self.transport.get_write_buffer_size(),
        )
        self.conn.fail(CloseCode.TOO_SLOW, "too slow: reconnect and catch up with history")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()  # once the backlog and the close frame are out
        self.loop.call_later(SLOW_READER_GRACE, self.transport.abort)  # or now, if they never are

    async def send(self, message: Any) -> None:
        # Frames queued before a close (or any ASGI send) must go out before it.
        self.flush_frames()
        await super().send(message)
        if self.handshake_complete:
            self.response = None  # the handshake response, sent: nothing reads it again
