#!/usr/bin/env python3
"""A deliberately minimal server for the chat protocol's benchmark subset, in picows.

Not a chat server: no storage, no identities, no validation beyond what the benchmark
sends. It exists to calibrate the load generator: fanned out by this server (one
encoded frame handed to every member's transport), the generator's own CPU and loop
lag show how many deliveries/s the generator can absorb on its core, i.e. the
ceiling above which a measurement would say more about the generator than the server.

Handles: hello (`message` kind system "Connected"), `echo`, `join` (`joined` and a
`presence` to the room), `room_message` (to every member, the sender included).

Run: python bench/compare/reference/server.py --port 8001
"""

import argparse
import asyncio
import json

from picows import WSListener, WSMsgType, WSUpgradeRequest, ws_create_server

try:
    import uvloop
except ImportError:
    uvloop = None

ROOMS: dict[str, set] = {}


class Conn(WSListener):
    def __init__(self) -> None:
        self.count = 0
        self.rooms: set[str] = set()
        self.transport = None

    def on_ws_connected(self, transport) -> None:
        self.transport = transport
        transport.send(
            WSMsgType.TEXT, b'{"type":"message","kind":"system","data":"Connected","count":0,"user":"ref"}'
        )

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        event = json.loads(frame.get_payload_as_bytes())
        kind = event.get("type")
        if kind == "echo":
            self.count += 1
            reply = {"type": "message", "kind": "echo", "data": event["data"], "count": self.count}
            transport.send(WSMsgType.TEXT, json.dumps(reply, separators=(",", ":")).encode())
        elif kind == "join":
            room = event["room"]
            members = ROOMS.setdefault(room, set())
            members.add(self)
            self.rooms.add(room)
            joined = {"type": "joined", "room": room, "rooms": sorted(self.rooms), "history": []}
            transport.send(WSMsgType.TEXT, json.dumps(joined, separators=(",", ":")).encode())
            presence = {
                "type": "presence",
                "room": room,
                "event": "join",
                "user": "ref",
                "members": len(members),
            }
            self.fan_out(room, json.dumps(presence, separators=(",", ":")).encode())
        elif kind == "room_message":
            room = event["room"]
            self.count += 1
            out = {
                "type": "message",
                "kind": "room",
                "room": room,
                "data": event["data"],
                "count": self.count,
            }
            self.fan_out(room, json.dumps(out, separators=(",", ":")).encode())

    @staticmethod
    def fan_out(room: str, payload: bytes) -> None:
        for member in ROOMS.get(room, ()):
            member.transport.send(WSMsgType.TEXT, payload)

    def on_ws_disconnected(self, transport) -> None:
        for room in self.rooms:
            ROOMS.get(room, set()).discard(self)


async def main(host: str, port: int) -> None:
    def factory(request: WSUpgradeRequest):
        return Conn()

    server = await ws_create_server(factory, host, port, read_buffer_init_size=4096)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    (uvloop.run if uvloop else asyncio.run)(main(args.host, args.port))
