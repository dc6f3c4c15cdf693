"""The chat page in Chromium: two people, every action of the demo, against a real server."""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from pathlib import Path

import pytest

from tests.integration.servers import free_port, fresh_database, stop

from .conftest import Person, start_server

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails, in CI) and says why
    expect = None

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct-horse-battery-staple"
XSS = "<img src=x onerror=alert(1)>"
FOR_README = os.environ.get("CHAT_SCREENSHOT", "")
LATENCY_POINTS = 30 if FOR_README else 3


def unique(prefix: str) -> str:
    """A room name of this test's own: the server is shared by the whole module."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_echo_counts_from_the_connect_echo(people):
    """Like the demo, the page echoes "I'm connected!" as #1; each echo counts on, Enter included."""
    alice = people()
    expect(alice.log("system")).to_have_text(["Received #0: Connected"])
    expect(alice.log("echo")).to_have_text(["Received #1: I'm connected!"])
    alice.submit("echo-form", data="second")
    alice.fill("echo-form", data="third")
    alice.page.locator("#echo-data").press("Enter")
    expect(alice.log("echo")).to_have_text(
        ["Received #1: I'm connected!", "Received #2: second", "Received #3: third"]
    )
    expect(alice.page.locator("#echo-data")).to_have_value("")  # ready for the next one
    expect(alice.page.locator("#status")).to_have_text("connected")


def test_broadcast_from_one_person_reaches_the_other(people):
    alice, bob = people(), people()
    alice.submit("broadcast-form", data="hello, everyone")
    entry = bob.page.locator("#log li[data-kind='broadcast']", has_text="hello, everyone")
    expect(entry.locator(".text")).to_have_text(re.compile(r"Received #\d+: hello, everyone"))
    expect(entry).to_have_attribute("data-sender", alice.name)
    expect(entry.locator(".meta")).to_contain_text(f"from {alice.name}")
    expect(alice.log("broadcast")).to_have_text(["Received #2: hello, everyone"])


def test_rooms_join_talk_leave_and_close(people):
    """Join, presence counts, send to room, leave, and a close refused to one and done by its creator."""
    alice, bob = people(), people()
    room = unique("lobby")
    alice.join(room)
    expect(alice.page.locator(f"#rooms li[data-room='{room}'] .members")).to_have_text("1 connected")
    bob.join(room)
    for person in (alice, bob):
        expect(person.page.locator(f"#rooms li[data-room='{room}'] .members")).to_have_text("2 connected")
    expect(alice.log("presence", room).last).to_have_text(f"{bob.name} joined room {room}; 2 connected.")

    # Joining filled the other room inputs, so sending needs only the message.
    expect(alice.page.locator("#room-message-room")).to_have_value(room)
    alice.submit("room-message-form", data="hi bob")
    bob.submit("room-message-form", data="hi alice")
    for person in (alice, bob):
        expect(person.log("room", room)).to_have_text(["Received #2: hi bob", "Received #2: hi alice"])
    expect(bob.page.locator(f"#log li[data-kind='room'][data-sender='{alice.name}']")).to_have_count(1)
    alice.submit("broadcast-form", data="and everyone else")
    expect(bob.log("broadcast").last).to_have_text("Received #3: and everyone else")

    bob.submit("leave-form", room=room)
    expect(bob.page.locator("#rooms li")).to_have_count(0)
    expect(alice.page.locator(f"#rooms li[data-room='{room}'] .members")).to_have_text("1 connected")
    alice.submit("room-message-form", data="bob has gone")
    expect(alice.log("room", room).last).to_have_text("Received #4: bob has gone")

    bob.join(room)
    bob.submit("close-room-form", room=room)
    refusal = bob.page.locator("#log li[data-kind='error'][data-code='forbidden']")
    expect(refusal.locator(".text")).to_contain_text("Error (close room")
    expect(bob.page.locator(f"#rooms li[data-room='{room}']")).to_have_count(1)

    alice.submit("close-room-form", room=room)
    for person in (alice, bob):
        expect(person.log("system", room).last).to_have_text(f"Room {room} was closed by {alice.name}.")
        expect(person.page.locator("#rooms li")).to_have_count(0)
    # Joining again showed, as history, only what bob had not seen.
    expect(bob.log("room", room)).to_have_text(
        ["Received #2: hi bob", "Received #2: hi alice", "History: bob has gone"]
    )


def test_disconnect_stays_disconnected_until_asked(people):
    alice = people()
    alice.submit("echo-form", data="before")
    alice.page.locator("#disconnect-form button").click()
    expect(alice.log("system").last).to_have_text("Received #2: Disconnected")
    expect(alice.page.locator("#status")).to_have_text("disconnected")
    assert alice.page.evaluate("[window.chatClient.ready, window.chatClient.attempts]") == [False, 0]
    alice.page.get_by_role("button", name="Connect", exact=True).click()
    alice.wait_ready()
    expect(alice.page.locator("#status")).to_have_text("connected")
    expect(alice.log("echo").last).to_have_text("Received #1: I'm connected!")  # a new connection counts anew


def test_latency_figure_and_chart_update(people):
    """One ping a second: the average and the chart's line appear and move on."""
    alice = people()
    alice.wait_for("window.chatClient.latencies.length >= 2")
    figure = alice.page.locator("#ping-pong")
    expect(figure).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(alice.page.locator("p", has=figure)).to_have_text(
        re.compile(r"Average ping/pong latency: \d+\.\d ms")
    )
    line = alice.page.locator("#latency-line")
    points = line.get_attribute("points")
    assert len(points.split()) >= 2
    pongs = alice.page.evaluate("window.chatClient.latencies.length")
    alice.wait_for(f"window.chatClient.latencies.length > {pongs}")
    expect(line).not_to_have_attribute("points", points)
    assert alice.page.locator("#latency-chart").is_visible()


def test_server_events_arrive(people):
    alice = people()
    events = alice.page.locator("#log li[data-kind='server'] .text")
    expect(events.nth(1)).to_have_text(re.compile(r"Received #\d+: Server generated event"), timeout=10_000)
    first, second = (int(re.search(r"#(\d+)", text).group(1)) for text in events.all_text_contents()[:2])
    assert second > first


def test_sign_up_log_out_and_log_in_chat_under_the_username(people):
    bob = people()
    carol = people(path="")
    username = unique("carol")
    carol.page.goto(carol.base_url + "/")
    carol.page.get_by_role("link", name="Sign up").first.click()
    carol.page.get_by_label("Username").fill(username)
    carol.page.get_by_label("Password:", exact=True).fill(PASSWORD)
    carol.page.get_by_label("Password confirmation").fill(PASSWORD)
    carol.page.get_by_role("button", name="Sign up").click()
    carol.wait_ready()
    expect(carol.page.locator("#display-name")).to_have_text(username)
    expect(carol.page.locator("#identity-kind")).to_have_text("(your username)")
    expect(carol.page.locator("header.site")).to_contain_text(f"Logged in as {username}")
    carol.submit("broadcast-form", data="signed up")
    expect(bob.page.locator(f"#log li[data-kind='broadcast'][data-sender='{username}']")).to_have_count(1)

    other_tab = Person(page=carol.page.context.new_page(), base_url=carol.base_url).open().page
    expect(other_tab.locator("#display-name")).to_have_text(username)  # the same session
    carol.page.get_by_role("button", name="Log out").click()
    # The server closes the session's other sockets (4401): that tab reloads as a guest.
    expect(other_tab.locator("#display-name")).to_have_text(re.compile(r"^guest-"), timeout=10_000)
    expect(other_tab.locator("#status")).to_have_text("connected")
    carol.wait_ready()
    expect(carol.page.locator("#display-name")).to_have_text(re.compile(r"^guest-"))  # back to the chat
    carol.page.get_by_role("link", name="Log in").first.click()
    carol.page.get_by_label("Username").fill(username)
    carol.page.get_by_label("Password").fill(PASSWORD)
    carol.page.get_by_role("button", name="Log in").click()
    carol.wait_ready()
    expect(carol.page.locator("#display-name")).to_have_text(username)
    assert carol.name == username


def test_guest_is_told_they_are_a_guest(people):
    alice = people()
    expect(alice.page.locator("#display-name")).to_have_text(re.compile(r"^guest-[0-9a-f]{6}$"))
    expect(alice.page.locator("#identity-kind")).to_have_text("(guest)")
    expect(alice.page.locator("section.identity")).to_contain_text("sign up to chat under your username")


def test_user_text_shows_as_text_and_runs_nothing(people):
    """Messages and room names are text: the markup shows literally and no image or script loads."""
    alice, bob = people(), people()
    room = f"<b>{unique('room')}</b>"
    alice.join(room)
    bob.join(room)
    alice.submit("broadcast-form", data=XSS)
    alice.submit("room-message-form", data=XSS)
    alice.submit("echo-form", data=XSS)
    expect(bob.log("broadcast").last).to_have_text(re.compile(rf"Received #\d+: {re.escape(XSS)}$"))
    expect(bob.log("room", room).last).to_have_text(f"Received #3: {XSS}")
    expect(alice.log("echo").last).to_have_text(f"Received #4: {XSS}")
    expect(bob.page.locator(f"#rooms li[data-room='{room}'] .room-name")).to_have_text(room)
    for person in (alice, bob):
        assert person.page.locator("#log img, #log b, #rooms b").count() == 0
    # An alert() would have been recorded as a dialog and failed the test at teardown.


def test_the_page_keeps_to_its_content_security_policy(people, chat_server):
    """The policy is strict, and the page runs under it (any violation fails at teardown)."""
    status, headers, _body = chat_server.get("/")
    assert status == 200
    policy = headers["content-security-policy"][0]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in policy
    assert "unsafe-inline" not in policy and "http" not in policy.replace("ws://", "").replace("wss://", "")
    alice = people()
    scripts = alice.page.eval_on_selector_all(
        "script[src], link[rel=stylesheet]", "els => els.map(e => e.src || e.href)"
    )
    assert scripts and all(url.startswith(chat_server.http_url + "/static/") for url in scripts)
    assert alice.page.evaluate("getComputedStyle(document.querySelector('.status')).borderRadius") != "0px"
    assert alice.page.evaluate("window.chatClient.url") == chat_server.ws_url  # ws: under http


def test_every_input_is_labelled_and_the_page_fits_a_phone(people, tmp_path):
    alice = people(viewport={"width": 360, "height": 740})
    inputs = alice.page.locator("main input")
    assert inputs.count() == 7
    for index in range(inputs.count()):
        field = inputs.nth(index)
        label = alice.page.locator(f"label[for='{field.get_attribute('id')}']")
        expect(label).to_have_count(1)
        assert label.is_visible()
    for button in (
        "Echo",
        "Broadcast",
        "Join Room",
        "Leave Room",
        "Send to Room",
        "Close Room",
        "Disconnect",
    ):
        expect(alice.page.get_by_role("button", name=button, exact=True)).to_be_visible()
    assert alice.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    clipped = alice.page.evaluate(
        "[...document.querySelectorAll('button')].filter(b => b.scrollWidth > b.clientWidth).map(b => b.textContent)"
    )
    assert clipped == []
    alice.page.screenshot(path=tmp_path / "phone.png", full_page=True)  # for a person to look at


@pytest.fixture(scope="module")
def screenshot_path(tmp_path_factory) -> Path:
    """Where the mid-conversation screenshot goes: CHAT_SCREENSHOT=docs/screenshot.png refreshes
    the README's picture; otherwise pytest's temporary directory, so a run leaves the tree clean."""
    if FOR_README:
        return ROOT / FOR_README
    return tmp_path_factory.mktemp("screenshots") / "screenshot.png"


def test_page_reconnects_after_a_restart_and_shows_what_it_missed(people, tmp_path, migrated_database):
    """The server stops and comes back on the same port and database: the page reconnects by
    itself, rejoins, and shows every message sent while it was away, once each, in order."""
    database = fresh_database(migrated_database, tmp_path)
    port = free_port()
    server = start_server(tmp_path, database, port)
    try:
        alice, bob = people(server), people(server)
        room = unique("restart")
        alice.join(room)
        bob.join(room)
        bob.submit("room-message-form", data="before the restart")
        expect(alice.log("room", room)).to_have_text(["Received #2: before the restart"])

        stop(server.process)
        for person in (alice, bob):
            person.wait_for("window.chatClient.state === 'reconnecting'")
            expect(person.page.locator("#status")).to_contain_text("reconnecting…")
        # Alice's network drops too, so she is away while Bob talks and must catch up.
        alice.page.context.set_offline(True)
        server = start_server(tmp_path, database, port)

        bob.wait_ready(timeout=30_000)
        bob.wait_for(f"window.chatClient.members[{json.dumps(room)}] !== undefined")  # rejoined
        missed = [f"missed {n}" for n in range(1, 4)]
        for text in missed:
            bob.submit("room-message-form", data=text)
        expect(bob.log("room", room)).to_have_text(
            ["Received #2: before the restart", *(f"Received #{n + 1}: {t}" for n, t in enumerate(missed, 1))]
        )
        assert alice.page.evaluate("window.chatClient.state") == "reconnecting"
        # What Alice sends meanwhile waits for the connection, and goes after the catch-up.
        alice.submit("room-message-form", data="typed while away")
        expect(alice.log("system").last).to_have_text(
            re.compile("^Not connected: your room message will be sent")
        )

        alice.page.context.set_offline(False)
        alice.wait_ready(timeout=30_000)
        expect(alice.page.locator("#status")).to_have_text("connected")
        expected = [
            "Received #2: before the restart",
            *(f"Missed: {text}" for text in missed),
            "Received #2: typed while away",
        ]
        expect(alice.log("room", room)).to_have_text(expected)
        expect(bob.log("room", room).last).to_have_text("Received #2: typed while away")
        bob.submit("room-message-form", data="after")
        expect(alice.log("room", room)).to_have_text([*expected, "Received #5: after"])
        assert alice.page.evaluate("[window.chatClient.reconnects, window.chatClient.recovered]")[0] == 1
        expect(alice.page.locator(f"#rooms li[data-room='{room}']")).to_have_count(1)
    finally:
        stop(server.process)


def test_a_message_that_arrives_late_is_shown_once_not_dropped(people):
    """With several server processes, two messages of a room can arrive out of id order
    (each process publishes its own): the page shows the late one, and a repeat of either
    nothing. The frames are slipped in between the real server and the page."""
    alice = people(path="")
    routes = []

    def relay(ws) -> None:
        ws.connect_to_server()  # everything else passes through untouched
        routes.append(ws)

    alice.page.route_web_socket(re.compile(r"/ws/chat/$"), relay)
    alice.open()
    room = unique("late")
    alice.join(room)
    [ws] = routes

    def message(message_id: int, text: str) -> str:
        return json.dumps(
            {
                "type": "message",
                "kind": "room",
                "id": message_id,
                "room": room,
                "sender": "guest-0ther5",
                "data": text,
                "count": 1,
                "ts": "2026-11-25T10:00:00.000Z",
            }
        )

    newer, older = 10**12 + 2, 10**12 + 1
    ws.send(message(newer, "newer"))
    ws.send(message(older, "older, arriving late"))
    ws.send(message(newer, "newer"))  # the same message again: not shown twice
    expect(alice.log("room", room)).to_have_text(["Received #1: newer", "Received #1: older, arriving late"])


def test_screenshot_mid_conversation(people, tmp_path, migrated_database, screenshot_path):
    """The page as a person sees it after `make run` (server events every 10 s), saved as an image."""
    database = fresh_database(migrated_database, tmp_path)
    server = start_server(tmp_path, database, free_port(), events_interval="10")
    try:
        alice, bob = people(server), people(server)
        # A chart with a line worth looking at; a full one for the README's picture.
        alice.wait_for(f"window.chatClient.latencies.length >= {LATENCY_POINTS}", timeout=40_000)
        alice.join("lobby")
        bob.join("lobby")
        bob.submit("echo-form", data="testing, testing")
        alice.submit("broadcast-form", data="Hello, everyone!")
        bob.submit("room-message-form", data="Hi Alice, the lobby is quiet today.")
        alice.submit("room-message-form", data=f"Try this: {XSS}")
        expect(alice.log("room", "lobby")).to_have_count(2)
        expect(alice.page.locator("#rooms li .members")).to_have_text("2 connected")
        alice.page.screenshot(path=screenshot_path)
        assert screenshot_path.stat().st_size > 10_000
    finally:
        stop(server.process)


def test_a_server_that_stops_answering_is_noticed_and_left(people, tmp_path, migrated_database):
    """A socket that stays open but answers no ping (a frozen server, a dead NAT entry) is
    given up after ten seconds; the page reconnects once the server answers again."""
    database = fresh_database(migrated_database, tmp_path)
    server = start_server(tmp_path, database, free_port())
    try:
        alice, bob = people(server), people(server)
        alice.join("frozen")
        bob.join("frozen")
        os.killpg(server.process.pid, signal.SIGSTOP)  # TCP stays up; nothing answers
        try:
            alice.wait_for("window.chatClient.state === 'reconnecting'", timeout=20_000)
        finally:
            os.killpg(server.process.pid, signal.SIGCONT)
        alice.wait_ready(timeout=30_000)
        alice.wait_for("window.chatClient.members['frozen'] !== undefined")  # rejoined
        bob.wait_ready(timeout=30_000)
        bob.submit("room-message-form", data="still here?")
        expect(alice.log("room", "frozen")).to_have_text(
            [re.compile(r"(Received #\d+|Missed): still here\?")]
        )
    finally:
        stop(server.process)


# The WCAG contrast ratio of each element's text against the first opaque background behind it.
CONTRAST = """
selector => [...document.querySelectorAll(selector)].filter(e => e.offsetParent).map(element => {
  const rgb = c => c.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => [r, g, b].map(v => {
    v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  }).reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  let back = element;
  while (back && rgb(getComputedStyle(back).backgroundColor)[3] === 0) back = back.parentElement;
  const bg = luminance(rgb(back ? getComputedStyle(back).backgroundColor : "rgb(255, 255, 255)"));
  const fg = luminance(rgb(getComputedStyle(element).color));
  return [element.textContent.trim().slice(0, 30), (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05)];
})
"""


def test_text_has_readable_contrast(people):
    """Every kind of text on the page reaches WCAG AA's 4.5:1 against its background."""
    alice = people()
    room = unique("contrast")
    alice.join(room)
    alice.submit("room-message-form", data="hello")
    alice.submit("leave-form", room="not-joined")
    expect(alice.log("error")).to_have_count(1)
    selectors = "label, button, a, #status, .meta, .text, .members, .room-name, p, h2, header strong"
    ratios = alice.page.evaluate(CONTRAST, selectors)
    assert len(ratios) > 20
    low = [(text, round(ratio, 2)) for text, ratio in ratios if ratio < 4.5]
    assert low == []
