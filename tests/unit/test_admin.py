"""Room logs in the admin: staff read them, search them and page through them; nobody edits them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from chat.models import Message, Room

pytestmark = pytest.mark.django_db

ROOMS = reverse("admin:chat_room_changelist")
MESSAGES = reverse("admin:chat_message_changelist")


def make_room(name: str, creator: str = "alice") -> Room:
    return Room.objects.create(name=name, creator_key=f"conn:{creator}", creator_name=creator)


def post(room: Room | None, sender: str, body: str, *, days_ago: int = 0) -> Message:
    message = Message.objects.create(room=room, sender=sender, body=body)
    if days_ago:
        # `created` is auto_now_add: only an update can move it into the past.
        Message.objects.filter(pk=message.pk).update(created=timezone.now() - timedelta(days=days_ago))
        message.refresh_from_db()
    return message


def listed(response) -> list[int]:
    """The ids of the rows on a changelist page, in the order shown."""
    assert response.status_code == 200
    return [obj.pk for obj in response.context["cl"].result_list]


@pytest.fixture
def lobby() -> Room:
    room = make_room("Lobby")
    post(room, "alice", "hello everyone")
    post(room, "bob", "hi alice, the deploy is green")
    post(room, "carol", "café ☕ time")
    return room


def test_room_changelist_links_each_room_to_its_log(admin_client, lobby):
    """Staff see every room with its message count and a link to its log."""
    make_room("salle 🚀", creator="bob")
    response = admin_client.get(ROOMS)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Lobby" in page and "salle 🚀" in page
    rows = {room.name: room for room in response.context["cl"].result_list}
    assert rows["Lobby"].message_total == 3 and rows["salle 🚀"].message_total == 0
    log = f"{MESSAGES}?room__id__exact={lobby.pk}"
    assert f'href="{log}"' in page


def test_room_log_lists_that_rooms_messages_newest_first(admin_client, lobby):
    other = make_room("elsewhere")
    post(other, "dave", "not in the lobby")
    post(None, "erin", "a broadcast")
    response = admin_client.get(MESSAGES, {"room__id__exact": lobby.pk})
    expected = list(lobby.messages.order_by("-id").values_list("pk", flat=True))
    assert listed(response) == expected
    assert "not in the lobby" not in response.content.decode()


def test_newest_first_follows_time_not_id(admin_client, lobby):
    """The log is ordered by when a message was written."""
    newest = lobby.messages.order_by("-id").first()
    Message.objects.filter(pk=newest.pk).update(created=timezone.now() - timedelta(days=3))
    ids = listed(admin_client.get(MESSAGES, {"room__id__exact": lobby.pk}))
    assert ids[-1] == newest.pk


def test_messages_are_searchable_by_text_and_sender(admin_client, lobby):
    by_text = listed(admin_client.get(MESSAGES, {"q": "deploy"}))
    assert by_text == list(Message.objects.filter(body__contains="deploy").values_list("pk", flat=True))
    by_sender = listed(admin_client.get(MESSAGES, {"q": "carol"}))
    assert by_sender == list(Message.objects.filter(sender="carol").values_list("pk", flat=True))
    assert listed(admin_client.get(MESSAGES, {"q": "café ☕"})) == by_sender
    assert listed(admin_client.get(MESSAGES, {"q": "nobody said this"})) == []


def test_rooms_are_searchable_by_name_and_creator(admin_client, lobby):
    make_room("salle 🚀", creator="bob")
    names = [room.name for room in admin_client.get(ROOMS, {"q": "bob"}).context["cl"].result_list]
    assert names == ["salle 🚀"]


def test_date_filter_keeps_recent_messages(admin_client, lobby):
    """The sidebar's "Past 7 days" and the date hierarchy both narrow the log."""
    old = post(lobby, "alice", "from last month", days_ago=30)
    changelist = admin_client.get(MESSAGES).context["cl"]
    created = next(spec for spec in changelist.filter_specs if spec.field_path == "created")
    past_week = dict(created.links)["Past 7 days"]
    recent = listed(admin_client.get(MESSAGES, past_week))
    assert old.pk not in recent and len(recent) == 3
    month = {"created__year": old.created.year, "created__month": old.created.month}
    assert old.pk in listed(admin_client.get(MESSAGES, month))


def test_long_logs_are_paginated(admin_client):
    room = make_room("busy")
    Message.objects.bulk_create(Message(room=room, sender="bot", body=f"line {n}") for n in range(130))
    first = admin_client.get(MESSAGES, {"room__id__exact": room.pk})
    second = admin_client.get(MESSAGES, {"room__id__exact": room.pk, "p": 2})
    assert len(listed(first)) == 100 and len(listed(second)) == 30
    assert set(listed(first)).isdisjoint(listed(second))


def test_logs_cannot_be_added_changed_or_deleted(admin_client, lobby):
    message = lobby.messages.first()
    for model in ("room", "message"):
        assert admin_client.get(reverse(f"admin:chat_{model}_add")).status_code == 403
    assert admin_client.get(reverse("admin:chat_message_delete", args=[message.pk])).status_code == 403
    assert admin_client.get(reverse("admin:chat_room_delete", args=[lobby.pk])).status_code == 403
    change = reverse("admin:chat_message_change", args=[message.pk])
    assert admin_client.get(change).status_code == 200  # a read-only view
    response = admin_client.post(change, {"sender": "mallory", "body": "rewritten"})
    assert response.status_code == 403
    message.refresh_from_db()
    assert message.body != "rewritten"
    changelist = admin_client.get(MESSAGES)
    assert "delete_selected" not in changelist.context["cl"].model_admin.get_actions(changelist.wsgi_request)
    bulk_delete = {"action": "delete_selected", "_selected_action": [message.pk], "post": "yes"}
    admin_client.post(MESSAGES, bulk_delete)
    assert Message.objects.filter(pk=message.pk).exists()


def test_anonymous_visitors_are_sent_to_the_admin_login(client, lobby):
    for url in (ROOMS, MESSAGES):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


def test_users_who_are_not_staff_cannot_read_logs(client, django_user_model, lobby):
    user = django_user_model.objects.create_user(username="visitor", password="a-long-password-123")
    client.force_login(user)
    response = client.get(MESSAGES)
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert "hello everyone" not in client.get(MESSAGES, follow=True).content.decode()


def test_staff_need_the_view_permission(client, django_user_model, lobby):
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user(username="moderator", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get(MESSAGES).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_message"))
    assert len(listed(client.get(MESSAGES))) == 3
