"""A real daphne on a free port, started by `manage.py serve` (production) or `runserver`.

Each server is a subprocess in its own process group. It dies with the test run
even when pytest itself is killed: the kernel sends it SIGKILL when its parent
goes (PR_SET_PDEATHSIG), and the fixture's finalizer stops the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable  # the virtualenv's python that runs pytest
STARTUP_TIMEOUT = 20.0  # seconds; daphne imports Django and Twisted in about one
POLL_SECONDS = 0.05
TIMEOUT = 5  # seconds for any one reply from a local server
SECRET_KEY = "integration-test-secret-key-not-for-production-0123456789"

# Settings the test process may carry (from pytest-env or the shell) that must not
# leak into a server that is meant to run like production.
_SCRUBBED_PREFIXES = ("CHAT_", "DJANGO_", "DAPHNE_")
_SCRUBBED = {"DEBUG", "SECRET_KEY", "REDIS_URL", "DATABASE_URL", "ALLOWED_HOSTS", "SECURE_COOKIES"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Runs first in the child and then becomes the real command. PR_SET_PDEATHSIG makes the
# kernel SIGKILL the child when the test process goes (it survives exec); checking the
# parent afterwards closes the race where the parent died before prctl ran.
_WATCHDOG = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
if os.getppid() != parent:
    os._exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def server_env(database: Path, **overrides: str) -> dict[str, str]:
    """The environment of a production-like server process (DEBUG unset)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _SCRUBBED and not name.startswith(_SCRUBBED_PREFIXES)
    }
    env |= {
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "SECRET_KEY": SECRET_KEY,
        "DATABASE_URL": f"sqlite:///{database}",
        "CHAT_SERVER_EVENTS_INTERVAL": "0",
        "ALLOWED_HOSTS": "localhost,127.0.0.1",
        "CHAT_MAX_FRAME_BYTES": str(settings.CHAT_MAX_FRAME_BYTES),
        "PYTHONUNBUFFERED": "1",
    }
    return env | overrides


def run_manage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn(args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a child that stops by itself if this process dies."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [PYTHON, "-c", _WATCHDOG, str(os.getpid()), *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@dataclass(frozen=True)
class Server:
    """A running daphne and how to reach it."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, body: str | None = None
    ) -> tuple[int, dict[str, list[str]], bytes]:
        """One HTTP request, redirects not followed: status, headers (lower-cased names, every value kept), body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            found: dict[str, list[str]] = {}
            for name, value in response.getheaders():
                found.setdefault(name.lower(), []).append(value)
            return response.status, found, response.read()
        finally:
            connection.close()

    def get(self, path: str, *, cookie: str | None = None) -> tuple[int, dict[str, list[str]], bytes]:
        return self.request("GET", path, headers={"Cookie": cookie} if cookie else None)


def cookie_value(headers: dict[str, list[str]], name: str) -> str:
    """A cookie's value from a response's Set-Cookie headers.

    Read by hand: with DEBUG off the cookies are `Secure`, and a cookie jar would
    never send them back over plain HTTP.
    """
    for header in headers.get("set-cookie", []):
        cookie = SimpleCookie()
        cookie.load(header)
        if name in cookie:
            return cookie[name].value
    raise AssertionError(f"no {name} cookie in {headers.get('set-cookie')}")


def session_cookie(headers: dict[str, list[str]]) -> str:
    """The `sessionid=...` pair to send back, from a response's Set-Cookie headers."""
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={cookie_value(headers, name)}"


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"daphne exited with {server.process.returncode}:\n{server.output()}", pytrace=False)
        try:
            with urllib.request.urlopen(server.http_url + "/healthz", timeout=1) as response:
                if response.status == 200 and json.load(response)["status"] == "ok":
                    return
        except (OSError, ValueError):
            pass  # not listening yet, or not healthy yet
        time.sleep(POLL_SECONDS)
    pytest.fail(f"daphne was not healthy after {STARTUP_TIMEOUT:g} s:\n{server.output()}", pytrace=False)


def daphne_command(port: int, *, launcher: str, check: bool) -> list[str]:
    """How to start the server: `manage.py serve` (production) or `manage.py runserver` (make run)."""
    if launcher == "serve":
        command = [PYTHON, str(ROOT / "manage.py"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    else:
        assert launcher == "runserver", launcher
        command = [PYTHON, str(ROOT / "manage.py"), "runserver", "--noreload", f"127.0.0.1:{port}"]
    return command if check else [*command, "--skip-checks"]


@contextlib.contextmanager
def daphne_server(
    workdir: Path, database: Path, *, launcher: str = "serve", **env_overrides: str
) -> Iterator[Server]:
    """Run the chat on a free port until the block ends.

    Without REDIS_URL, `manage.py serve` gets --skip-checks: chat.E001 rightly refuses
    a production start on the in-memory layer, which is what these tests want to run.
    """
    port = free_port()
    check = "REDIS_URL" in env_overrides
    log = workdir / f"{launcher}-{port}.log"
    env = server_env(database, **env_overrides)
    process = spawn(daphne_command(port, launcher=launcher, check=check), env=env, log=log)
    server = Server(port=port, process=process, log=log)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        stop(process)


def fresh_database(template: Path, workdir: Path) -> Path:
    database = workdir / "db.sqlite3"
    shutil.copyfile(template, database)
    return database


async def receive(socket, wait: float = TIMEOUT) -> dict:
    """The next frame from a `websockets` client, decoded."""
    return json.loads(await asyncio.wait_for(socket.recv(), wait))


async def hello(socket) -> dict:
    """Read the `Connected` message every socket gets first."""
    message = await receive(socket)
    assert message["type"] == "message" and message["kind"] == "system", message
    assert message["data"] == "Connected" and message["count"] == 0, message
    return message
