"""The server stack passes the Autobahn WebSocket test cases, through a test-only echo route."""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator

from chatproject.asgi import application

from .autobahn import run, summary

SIXTEEN_MIB = 16 * 1024 * 1024


async def test_the_production_stack_passes_every_case_it_implements(tmp_path):
    """`manage.py serve` (uvicorn) with the production frame limit: no failure but the explained ones."""
    outcomes = await run(server="uvicorn", max_frame_bytes=None, cases=None, workdir=tmp_path)
    report = summary(outcomes)
    assert len(outcomes) == 517, report
    assert not [o for o in outcomes if not o.passed and o.explanation is None], report
    # The explained failures are exactly these, so a new one shows up as a change here.
    assert sum(o.passed for o in outcomes) == 260, report


async def test_large_messages_pass_under_a_16_mib_limit(tmp_path):
    """The 9.x cases fail above only because of CHAT_MAX_FRAME_BYTES: lifted, they pass."""
    outcomes = await run(
        server="uvicorn", max_frame_bytes=SIXTEEN_MIB + 1024, cases=["9.*"], workdir=tmp_path
    )
    assert outcomes and all(o.passed for o in outcomes), summary(outcomes)


@pytest.mark.django_db(transaction=True)
async def test_the_echo_route_does_not_exist_by_default():
    """Without CHAT_ECHO_ROUTE there is no /ws/echo/: the router refuses the path."""
    communicator = WebsocketCommunicator(application, "/ws/echo/")
    with pytest.raises(ValueError, match="No route found"):
        await communicator.connect()
