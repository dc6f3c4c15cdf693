"""The soak run's machinery (bench/soak.py), kept from rotting: a short run, and its checker."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from .servers import ROOT

SOAK = ROOT / "bench" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["soak"]


def test_short_soak_run_passes_every_check(tmp_path):
    """20 seconds, 20 clients, 3 rooms: every stored message reached every member once."""
    out = tmp_path / "soak.json"
    short = ["--minutes", "0.33", "--clients", "20", "--rooms", "3", "--think", "0.5", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, str(SOAK), *short],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["ok"] and report["server_alive"] and report["failure"] is None
    delivery = report["delivery"]
    assert delivery["stored_messages"] == delivery["acknowledged"] > 50
    assert delivery["deliveries_required"] > delivery["stored_messages"]
    assert delivery["missing"] == delivery["duplicated"] == delivery["out_of_order"] == 0
    stats = report["stats"]
    assert stats["joins"] > 20 and stats["leaves"] > 0  # rooms were joined and left over time
    assert len(report["memory_samples"]) >= 5 and report["memory"]["flat"] is not None
    assert "soak: OK" in result.stdout


def stay(soak, room, floor, received, *, end=None, own=()):
    return soak.Interval(room, floor, end=end, received=list(received), own=set(own))


def run_with(soak, intervals, acked):
    run = soak.Run(soak.parse_args(["--clients", "1", "--rooms", "3"]), "ws://unused")
    run.intervals = intervals
    run.acked = acked
    return run


def test_checker_finds_lost_repeated_and_undue_messages(soak):
    """The checker is what makes the soak's verdict: it must see each kind of fault."""
    stored = {"a": [1, 2, 3, 4], "b": [5]}
    acked = {1: ("a", 10.0), 2: ("a", 11.0), 3: ("a", 12.0), 4: ("a", 20.0), 5: ("b", 10.0)}
    clean = soak.check(run_with(soak, [stay(soak, "a", 0, [1, 2, 3, 4])], acked), stored)
    assert clean["missing"] == clean["duplicated"] == clean["not_stored_or_before_join"] == 0
    assert clean["deliveries_required"] == 4

    lost = soak.check(run_with(soak, [stay(soak, "a", 1, [2, 4])], acked), stored)
    assert lost["missing"] == 1 and lost["missing_examples"] == [{"room": "a", "id": 3, "floor": 1}]
    twice = soak.check(run_with(soak, [stay(soak, "a", 0, [1, 2, 2, 3, 4])], acked), stored)
    assert twice["duplicated"] == 1 and twice["out_of_order"] == 1
    before_join = soak.check(run_with(soak, [stay(soak, "a", 2, [2, 3, 4])], acked), stored)
    assert before_join["not_stored_or_before_join"] == 1
    wrong_room = soak.check(run_with(soak, [stay(soak, "b", 0, [5, 1])], acked), stored)
    assert wrong_room["not_stored_or_before_join"] == 1

    # Left at t=15: 1-3 (acknowledged by t=12 < 15 - grace) were due, 4 raced the leave.
    left = soak.check(run_with(soak, [stay(soak, "a", 0, [1, 2, 3], end=15.0)], acked), stored)
    assert left["missing"] == 0 and left["deliveries_required"] == 3
    left_early = soak.check(run_with(soak, [stay(soak, "a", 0, [1], end=14.0)], acked), stored)
    assert left_early["missing"] == 2  # 2 and 3 were acknowledged by 12 = 14 - grace

    unstored = soak.check(run_with(soak, [], acked | {9: ("a", 1.0)}), stored)
    assert unstored["acknowledged_not_stored"] == 1
    own_first = soak.check(run_with(soak, [stay(soak, "a", 0, [1, 3, 2, 4], own=[3])], acked), stored)
    assert own_first["out_of_order"] == 0 and own_first["after_a_newer_own_ack"] == 1


def test_memory_verdict_compares_the_end_with_the_middle(soak):
    flat = [{"t": t, "rss_kib": 100_000 + (t if t < 50 else 50)} for t in range(100)]
    assert soak.memory_verdict(flat, 0.05)["flat"] is True
    growing = [{"t": t, "rss_kib": 100_000 + 200 * t} for t in range(100)]
    verdict = soak.memory_verdict(growing, 0.05)
    assert verdict["flat"] is False and verdict["second_half_growth_pct"] > 5
