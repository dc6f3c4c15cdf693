"""WebSocket frames built once and written to many sockets.

A server's frames are not masked (RFC 6455, section 5.1), so one room message is the
same bytes for every recipient: build them once and hand each socket the same object.
"""

from __future__ import annotations

import struct

_TEXT_FIN = 0x81  # FIN bit and opcode 1 (text)

# The scope extension through which a server offers `write(frame) -> bool` for such
# frames (chat/uvicorn_ws.py); without it, the application sends through plain ASGI.
FRAMES_EXTENSION = "chat.frames"


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame carrying `payload` (UTF-8)."""
    size = len(payload)
    if size < 126:
        header = bytes((_TEXT_FIN, size))
    elif size < 65_536:
        header = struct.pack("!BBH", _TEXT_FIN, 126, size)
    else:
        header = struct.pack("!BBQ", _TEXT_FIN, 127, size)
    return header + payload


class Outgoing:
    """A frame's text and its wire bytes, made once and shared by every recipient."""

    __slots__ = ("frame", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.frame = text_frame(text.encode())
