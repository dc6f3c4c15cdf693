"""Coalescing a stored batch's events: fewer channel-layer messages, the same frames in order."""

from __future__ import annotations

from chat.services import close_sockets_event, coalesce, fanout_event


def frames_by_group(events):
    return [(event["group"], [text for text, _, _ in event["frames"]]) for event in events]


def test_a_run_of_events_to_one_group_becomes_one_event():
    events = [fanout_event(group="room.1", text=f"m{i}", exclude=f"c{i}", message_id=i) for i in range(1, 4)]
    [joined] = coalesce(events)
    assert joined["frames"] == [["m1", "c1", 1], ["m2", "c2", 2], ["m3", "c3", 3]]
    assert joined["closes"] is None


def test_only_consecutive_events_join_so_no_frame_overtakes_another():
    events = [
        fanout_event(group="room.1", text="a1"),
        fanout_event(group="chat.all", text="b1"),
        fanout_event(group="room.1", text="a2"),
        fanout_event(group="room.1", text="a3"),
    ]
    assert frames_by_group(coalesce(events)) == [
        ("room.1", ["a1"]),
        ("chat.all", ["b1"]),
        ("room.1", ["a2", "a3"]),
    ]


def test_an_event_that_closes_its_room_joins_nothing():
    events = [
        fanout_event(group="room.1", text="last"),
        fanout_event(group="room.1", text="closed", closes_room=1),
        fanout_event(group="room.1", text="after"),
    ]
    joined = coalesce(events)
    assert frames_by_group(joined) == [("room.1", ["last"]), ("room.1", ["closed"]), ("room.1", ["after"])]
    assert [event["closes"] for event in joined] == [None, 1, None]


def test_coalescing_leaves_the_events_it_was_given_alone():
    events = [fanout_event(group="room.1", text="a"), fanout_event(group="room.1", text="b")]
    coalesce(events)
    assert [event["frames"] for event in events] == [[["a", None, None]], [["b", None, None]]]


def test_nothing_to_coalesce():
    assert coalesce([]) == []


def test_an_event_that_closes_sockets_joins_nothing():
    events = [
        fanout_event(group="chat.session.x", text="a"),
        close_sockets_event(group="chat.session.x", code=4401),
        close_sockets_event(group="chat.session.x", code=4401),
    ]
    joined = coalesce(events)
    assert [event.get("close_code") for event in joined] == [None, 4401, 4401]
    assert [event["frames"] for event in joined] == [[["a", None, None]], [], []]
