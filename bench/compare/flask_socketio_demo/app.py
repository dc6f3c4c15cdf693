"""The Flask-SocketIO demo application (the project's example/app.py), in gevent mode.

The event handlers behave as the demo's: a per-session receive counter, `my_response`
for everything, rooms through join_room/leave_room/close_room, a background task that
emits a server-generated event every 10 seconds. Two deliberate differences, both so
that the benchmark measures the framework rather than the terminal:

- async_mode is "gevent" (the demo picks the best installed mode; this venv has gevent
  and gevent-websocket, so the demo would pick the same);
- the demo turns on per-packet logging (logger=True, engineio_logger=True); here it is
  off unless DEMO_LOGGER=1.

Run: .venv/bin/python app.py --host 127.0.0.1 --port 5000
"""

import argparse
import os
from threading import Lock

from flask import Flask, copy_current_request_context, render_template, request, session
from flask_socketio import SocketIO, close_room, disconnect, emit, join_room, leave_room, rooms

async_mode = "gevent"
verbose = os.environ.get("DEMO_LOGGER") == "1"

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "secret!")
socketio = SocketIO(app, async_mode=async_mode, logger=verbose, engineio_logger=verbose)
thread = None
thread_lock = Lock()


def background_thread():
    """Server-generated events, as in the demo."""
    count = 0
    while True:
        socketio.sleep(10)
        count += 1
        socketio.emit("my_response", {"data": "Server generated event", "count": count})


def bump():
    session["receive_count"] = session.get("receive_count", 0) + 1
    return session["receive_count"]


@app.route("/")
def index():
    return render_template("index.html", async_mode=socketio.async_mode)


@socketio.event
def my_event(message):
    emit("my_response", {"data": message["data"], "count": bump()})


@socketio.event
def my_broadcast_event(message):
    emit("my_response", {"data": message["data"], "count": bump()}, broadcast=True)


@socketio.event
def join(message):
    join_room(message["room"])
    emit("my_response", {"data": "In rooms: " + ", ".join(rooms()), "count": bump()})


@socketio.event
def leave(message):
    leave_room(message["room"])
    emit("my_response", {"data": "In rooms: " + ", ".join(rooms()), "count": bump()})


@socketio.on("close_room")
def on_close_room(message):
    emit(
        "my_response",
        {"data": "Room " + message["room"] + " is closing.", "count": bump()},
        to=message["room"],
    )
    close_room(message["room"])


@socketio.event
def my_room_event(message):
    emit("my_response", {"data": message["data"], "count": bump()}, to=message["room"])


@socketio.on("*")
def catch_all(event, data):
    emit("my_response", {"data": [event, data], "count": bump()})


@socketio.event
def disconnect_request():
    @copy_current_request_context
    def can_disconnect():
        disconnect()

    # The callback fires once the client acknowledged the message: then it is safe to go.
    emit("my_response", {"data": "Disconnected!", "count": bump()}, callback=can_disconnect)


@socketio.event
def my_ping():
    emit("my_pong")


@socketio.event
def connect():
    global thread
    with thread_lock:
        if thread is None:
            thread = socketio.start_background_task(background_thread)
    emit("my_response", {"data": "Connected", "count": 0})


@socketio.on("disconnect")
def test_disconnect(reason):
    if verbose:
        print("Client disconnected", request.sid, reason)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    socketio.run(app, host=args.host, port=args.port, log_output=verbose)
