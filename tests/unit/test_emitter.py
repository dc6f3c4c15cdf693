"""Server-generated events: the emitter loop, its command, and the server's own emitter."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.management import CommandError, call_command

from chat import emitter, services
from chat.emitter import DEFAULT_MESSAGE, emit_server_events
from chat.management.commands import emit_server_events as emit_command
from tests.conftest import connect

pytestmark = pytest.mark.django_db(transaction=True)


def assert_server_events(events: list[dict], counts: list[int], data: str = DEFAULT_MESSAGE) -> None:
    for event in events:
        assert event["type"] == "message" and event["kind"] == "server", event
        assert event["data"] == data and event["ts"].endswith("Z"), event
        assert "ref" not in event and "id" not in event
    assert [event["count"] for event in events] == counts


async def test_emitter_reaches_connected_clients():
    alice, _ = await connect()
    bob, _ = await connect()
    try:
        assert await emit_server_events(interval=0.01, count=3) == 3
        for socket in (alice, bob):
            assert_server_events([await socket.receive_json_from() for _ in range(3)], [1, 2, 3])
            assert await socket.receive_nothing()
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_emitter_carries_its_message():
    alice, _ = await connect()
    try:
        await emit_server_events(interval=0.01, count=1, message="maintenance at noon")
        assert_server_events([await alice.receive_json_from()], [1], data="maintenance at noon")
    finally:
        await alice.disconnect()


async def test_stop_ends_the_emitter():
    """Setting `stop` ends the loop at once; it reports how many events went out."""
    alice, _ = await connect()
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(emit_server_events(interval=0.01, stop=stop))
        first = await alice.receive_json_from()
        stop.set()
        sent = await asyncio.wait_for(task, 1)
        later = [await alice.receive_json_from() for _ in range(sent - 1)]
        assert_server_events([first, *later], list(range(1, sent + 1)))
        assert await alice.receive_nothing()
    finally:
        await alice.disconnect()


async def test_stop_before_the_first_tick_sends_nothing():
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(emit_server_events(interval=10, stop=stop), 1) == 0


async def test_failed_publish_is_retried_with_the_same_count(monkeypatch, caplog):
    """A publish that fails (say, Redis restarting) is logged; the count has no gap."""
    real_publish = services.server_event_publish
    failures = iter([True, False, False, True, False])

    async def flaky(*, data, count):
        if next(failures):
            raise ConnectionError("Redis is restarting")
        await real_publish(data=data, count=count)

    monkeypatch.setattr(emitter.services, "server_event_publish", flaky)
    alice, _ = await connect()
    try:
        with caplog.at_level(logging.ERROR, logger="chat.emitter"):
            assert await emit_server_events(interval=0.01, count=3) == 3
        assert_server_events([await alice.receive_json_from() for _ in range(3)], [1, 2, 3])
        assert len([r for r in caplog.records if "could not publish" in r.getMessage()]) == 2
    finally:
        await alice.disconnect()


# --- the command ---------------------------------------------------------------


@pytest.fixture
def shared_layer(monkeypatch):
    """Let the command believe the layer reaches other processes (as Redis would)."""
    monkeypatch.setattr(emit_command, "get_channel_layer", lambda: object())


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["--interval", "0"], "--interval"),
        (["--interval", "-1"], "--interval"),
        (["--interval", "nan"], "--interval"),
        (["--interval", "inf"], "--interval"),
        (["--count", "0"], "--count"),
        (["--count", "-3"], "--count"),
        (["--message", ""], "--message"),
    ],
)
def test_command_refuses_bad_arguments(shared_layer, arguments, problem):
    with pytest.raises(CommandError, match=problem):
        call_command("emit_server_events", *arguments)


@pytest.mark.parametrize("arguments", [["--interval", "soon"], ["--count", "many"]])
def test_command_refuses_values_that_are_not_numbers(shared_layer, arguments):
    with pytest.raises(CommandError):
        call_command("emit_server_events", *arguments)


def test_command_refuses_a_layer_that_reaches_no_other_process():
    """Without REDIS_URL the command's events could reach nobody: it says so instead of pretending."""
    with pytest.raises(CommandError, match="Set REDIS_URL"):
        call_command("emit_server_events", "--count", "1")


def test_command_sends_count_events_and_says_so(shared_layer, capsys):
    call_command("emit_server_events", "--interval", "0.01", "--count", "2", "--message", "hi")
    assert "Sent 2 server event(s)." in capsys.readouterr().out


def test_command_runs_outside_the_main_thread(shared_layer, capsys):
    """Only the main thread can take signals; elsewhere the command still runs to --count."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(call_command, "emit_server_events", "--interval", "0.01", "--count", "1").result(
            timeout=5
        )
    assert "Sent 1 server event(s)." in capsys.readouterr().out


# --- the server's own emitter ----------------------------------------------------


async def test_server_emits_by_itself_without_redis(settings):
    """With the in-memory layer, the process's hub emits every CHAT_SERVER_EVENTS_INTERVAL seconds."""
    settings.CHAT_SERVER_EVENTS_INTERVAL = 0.05
    alice, _ = await connect()  # the first socket of this event loop starts its hub
    try:
        events = [await alice.receive_json_from() for _ in range(2)]
        assert_server_events(events, [1, 2])
    finally:
        await alice.disconnect()


async def test_server_events_off_by_default_in_tests(settings):
    """CHAT_SERVER_EVENTS_INTERVAL=0 turns the server's own emitter off."""
    settings.CHAT_SERVER_EVENTS_INTERVAL = 0
    alice, _ = await connect()
    try:
        assert await alice.receive_nothing(timeout=0.2)
    finally:
        await alice.disconnect()
