"""Process-wide tuning for a server process (called once, from chatproject/asgi.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

# Python's default collects the youngest generation every 700 allocations. Under fan-out
# load, frames and events that live a few milliseconds survive those collections, are
# promoted, and soon trigger a full collection over every object of the process: 50 to
# 110 ms with 1,000 sockets, a pause for every socket at once (docs/performance.md). A
# larger young generation lets them die young; full collections become rare.
GC_THRESHOLDS = (50_000, 20, 100)

# What rare full collections leave behind: a closed socket's objects (its transport,
# protocol and parser refer to each other) have lived long enough to reach the oldest
# generation, so only a full collection frees them, about 18 KB a socket. One on a clock
# bounds that to what the sockets closed in this long leave, for one pause this often.
FULL_COLLECTION_SECONDS = 300


def tune_gc() -> None:
    """Freeze what start-up loaded (it lives as long as the process) and collect less often."""
    gc.collect()
    gc.freeze()  # modules, settings, URL patterns: never scanned again
    gc.set_threshold(*GC_THRESHOLDS)


async def collect_periodically(every: float = FULL_COLLECTION_SECONDS) -> None:
    """A full collection every `every` seconds, for the garbage that rare ones would leave."""
    while True:
        await asyncio.sleep(every)
        started = time.perf_counter()
        found = gc.collect()
        log.debug(
            "full collection: %d unreachable objects in %.1f ms", found, (time.perf_counter() - started) * 1e3
        )
