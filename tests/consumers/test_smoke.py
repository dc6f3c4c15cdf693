import pytest

from tests.conftest import connect

pytestmark = pytest.mark.django_db(transaction=True)


async def test_room_flow():
    alice, hello = await connect()
    assert hello["type"] == "message" and hello["kind"] == "system" and hello["count"] == 0
    bob, _ = await connect()
    await alice.send_json_to({"type": "join", "room": "salle café 🚀", "ref": 1})
    joined = await alice.receive_json_from()
    assert joined["type"] == "joined" and joined["ref"] == 1, joined
    presence = await alice.receive_json_from()
    assert presence["members"] == 1, presence
    await bob.send_json_to({"type": "join", "room": "salle café 🚀"})
    print(await bob.receive_json_from())
    print(await bob.receive_json_from())
    print(await alice.receive_json_from())
    await alice.send_json_to({"type": "room_message", "room": "salle café 🚀", "data": "hi", "ref": "a"})
    own = await alice.receive_json_from()
    other = await bob.receive_json_from()
    print(own, other)
    assert own["ref"] == "a" and "ref" not in other and own["id"] == other["id"]
    await bob.send_json_to({"type": "broadcast", "data": "all"})
    print(await bob.receive_json_from(), await alice.receive_json_from())
    await alice.send_json_to({"type": "history", "room": "salle café 🚀", "since": 0})
    print(await alice.receive_json_from())
    await alice.send_json_to({"type": "close_room", "room": "salle café 🚀"})
    print(await alice.receive_json_from(), await bob.receive_json_from())
    await bob.send_json_to({"type": "echo", "data": "x"})
    print(await bob.receive_json_from())
    assert await alice.receive_nothing()
    await alice.disconnect()
    await bob.disconnect()
