"""Process-wide tuning for a server process (called once, from chatproject/asgi.py)."""

from __future__ import annotations

import gc

# Python's default collects the youngest generation every 700 allocations. Under fan-out
# load, frames and events that live a few milliseconds survive those collections, are
# promoted, and soon trigger a full collection over every object of the process: 50 to
# 110 ms with 1,000 sockets, a pause for every socket at once (docs/performance.md). A
# larger young generation lets them die young; full collections become rare.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Freeze what start-up loaded (it lives as long as the process) and collect less often."""
    gc.collect()
    gc.freeze()  # modules, settings, URL patterns: never scanned again
    gc.set_threshold(*GC_THRESHOLDS)
