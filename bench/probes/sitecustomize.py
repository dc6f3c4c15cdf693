"""Report the garbage collector's pauses of a server process (a benchmark probe).

Put this directory on the server's PYTHONPATH and Python imports it at start-up:

    PYTHONPATH=bench/probes python manage.py serve ...

Every GC_PROBE_SECONDS (default 5) it prints one line to stderr: how many collections
ran, their total and longest pause, and the generation of the longest. A pause stops
every socket of the process, so the longest one shows up directly in p99 latency.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time

_window = {"count": 0, "total": 0.0, "longest": 0.0, "generation": -1}
_started = 0.0


def _on_gc(phase: str, info: dict) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    pause = time.perf_counter() - _started
    _window["count"] += 1
    _window["total"] += pause
    if pause > _window["longest"]:
        _window["longest"], _window["generation"] = pause, info["generation"]


def _report(every: float) -> None:
    while True:
        time.sleep(every)
        w = dict(_window)
        _window.update(count=0, total=0.0, longest=0.0, generation=-1)
        print(
            f"gc-probe pid={os.getpid()} collections={w['count']} total_ms={w['total'] * 1e3:.1f}"
            f" longest_ms={w['longest'] * 1e3:.1f} longest_gen={w['generation']}"
            f" tracked={len(gc.get_objects())} frozen={gc.get_freeze_count()}",
            file=sys.stderr,
            flush=True,
        )


gc.callbacks.append(_on_gc)
threading.Thread(
    target=_report, args=(float(os.environ.get("GC_PROBE_SECONDS", "5")),), daemon=True, name="gc-probe"
).start()
