"""Chromium, driven by Playwright, against a real server subprocess (as `make run` starts it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.integration.servers import (
    Server,
    daphne_command,
    free_port,
    fresh_database,
    server_env,
    spawn,
    stop,
    wait_until_healthy,
)

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# The system Chromium (`playwright install` cannot download here), quiet and headless.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1100, "height": 900}
POLL_MS = 25  # how often a wait_for() looks at the page's state
READY = "window.chatClient && window.chatClient.ready === true"
# Server events once a second, so a test sees several without waiting the default ten.
SERVER_EVENTS_INTERVAL = "1"
# A page whose server went away logs its failed attempts; nothing else may reach the console.
EXPECTED_CONSOLE = ("WebSocket connection to", "Failed to load resource: net::ERR_CONNECTION_REFUSED")


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """Replaces the suite's async fixture: these tests are sync, and use no in-process layer."""
    yield


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium, for one module at a time.

    Not for the session: while sync Playwright runs, its event loop counts as running in
    this thread, and every async test after it would fail with "Cannot run the event
    loop while another loop is running".
    """
    if sync_playwright is None:
        skip_or_fail("the browser tests need playwright: pip install -r requirements-dev.txt")
    if not Path(CHROMIUM).exists():
        skip_or_fail(f"the browser tests need Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def start_server(
    workdir: Path, database: Path, port: int, *, events_interval: str = SERVER_EVENTS_INTERVAL
) -> Server:
    """`manage.py runserver` as `make run` starts it (DEBUG on), on the given port."""
    env = server_env(database, DEBUG="true", CHAT_SERVER_EVENTS_INTERVAL=events_interval)
    log = workdir / f"runserver-{port}-{len(list(workdir.glob('*.log')))}.log"
    process = spawn(daphne_command(port, launcher="runserver", check=False), env=env, log=log)
    server = Server(port=port, process=process, log=log)
    try:
        wait_until_healthy(server)
    except BaseException:
        stop(process)
        raise
    return server


@pytest.fixture(scope="session")
def chat_server(tmp_path_factory, migrated_database) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("browser-server")
    server = start_server(workdir, fresh_database(migrated_database, workdir), free_port())
    try:
        yield server
    finally:
        stop(server.process)


@dataclass
class Person:
    """One person: a browser context of their own (own cookies, own guest name) and a page."""

    page: Page
    base_url: str
    problems: list[str] = field(default_factory=list)

    def open(self, path: str = "/") -> Person:
        self.page.goto(self.base_url + path)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10_000) -> None:
        self.wait_for(READY, timeout=timeout)

    @property
    def name(self) -> str:
        self.wait_for("window.chatClient.user !== null")
        return self.page.evaluate("window.chatClient.user")

    def fill(self, form: str, **fields: str) -> None:
        for name, value in fields.items():
            self.page.locator(f"#{form} input[name='{name}']").fill(value)

    def submit(self, form: str, **fields: str) -> None:
        """Fill a form's inputs and press its button."""
        self.fill(form, **fields)
        self.page.locator(f"#{form} button[type='submit']").click()

    def log(self, kind: str | None = None, room: str | None = None):
        selector = "#log li"
        if kind:
            selector += f"[data-kind='{kind}']"
        if room:
            selector += f"[data-room='{room}']"
        return self.page.locator(selector + " .text")

    def texts(self, kind: str | None = None, room: str | None = None) -> list[str]:
        return self.log(kind, room).all_text_contents()

    def join(self, room: str) -> None:
        self.submit("join-form", room=room)
        self.wait_for(f"window.chatClient.rooms.includes({json.dumps(room)})")

    def wait_for(self, expression: str, timeout: float = 5_000) -> None:
        """Wait until a JavaScript expression about the page's state is true.

        Polled with page.evaluate(), which the page's Content-Security-Policy allows;
        Playwright's wait_for_function polls with eval(), which that policy rightly refuses.
        """
        deadline = time.monotonic() + timeout / 1000
        while not self.page.evaluate(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout / 1000:g} s: {expression}")
            self.page.wait_for_timeout(POLL_MS)


@pytest.fixture
def people(browser, chat_server) -> Iterator[Callable[..., Person]]:
    """Open the chat as a new person (a fresh browser context) on `server` (default: the shared one)."""
    contexts = []
    everyone: list[Person] = []

    def open_person(server: Server | None = None, *, path: str = "/", viewport=None) -> Person:
        context = browser.new_context(viewport=viewport or VIEWPORT)
        contexts.append(context)
        page = context.new_page()
        person = Person(page=page, base_url=(server or chat_server).http_url)

        def console(message: ConsoleMessage) -> None:
            if message.type in {"error", "warning"} and not message.text.startswith(EXPECTED_CONSOLE):
                person.problems.append(f"console {message.type}: {message.text}")

        page.on("console", console)
        page.on("pageerror", lambda error: person.problems.append(f"page error: {error}"))
        page.on(
            "dialog", lambda dialog: (person.problems.append(f"dialog: {dialog.message}"), dialog.dismiss())
        )
        everyone.append(person)
        return person.open(path) if path else person

    yield open_person
    problems = [problem for person in everyone for problem in person.problems]
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()
    # Script errors, CSP violations and alert() calls fail the test that caused them.
    assert not problems, "\n".join(problems)
