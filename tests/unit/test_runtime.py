"""The server's garbage-collector policy (chat/runtime.py)."""

from __future__ import annotations

import asyncio
import gc

from chat import runtime


async def test_full_collections_run_on_a_clock_and_free_what_young_ones_leave(monkeypatch):
    """Cycles that reached the oldest generation are freed by the periodic full collection."""

    class Node:
        pass

    def make_old_cycle() -> None:
        node = Node()
        node.self = node  # a reference cycle: only the cycle collector frees it
        gc.collect()  # promoted to the oldest generation while still in use

    collections: list[int] = []
    real_collect = gc.collect
    monkeypatch.setattr(
        gc, "collect", lambda *args: collections.append(real_collect(*args)) or collections[-1]
    )
    make_old_cycle()
    collections.clear()
    task = asyncio.create_task(runtime.collect_periodically(every=0.05))
    try:
        await asyncio.sleep(0.18)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(collections) >= 2
    assert collections[0] >= 1  # the old cycle was unreachable, and freed


def test_tuning_freezes_start_up_and_collects_young_objects_less_often(monkeypatch):
    before = gc.get_threshold()
    try:
        runtime.tune_gc()
        assert gc.get_threshold() == runtime.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
