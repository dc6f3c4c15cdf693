"""Rooms, their stored messages, and who is in them right now."""

from django.conf import settings
from django.db import models

from .protocol import ROOM_NAME_MAX_CHARS


class Room(models.Model):
    """A chat room, created by its first join; closing it keeps its log."""

    # Case-sensitive and unnormalised: the protocol says 'Lobby' and 'lobby' differ.
    name = models.CharField(max_length=ROOM_NAME_MAX_CHARS, unique=True)
    # The identity that created the room: "user:<pk>", "session:<digest>" or "conn:<id>".
    creator_key = models.CharField(max_length=80)
    creator_name = models.CharField(max_length=150)
    creator_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    closed = models.DateTimeField(null=True, blank=True)
    closed_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def group_name(self) -> str:
        """The channel-layer group; built from the pk because names are arbitrary Unicode."""
        return f"chat.room.{self.pk}"


class Message(models.Model):
    """A stored room message, or a broadcast when `room` is empty."""

    room = models.ForeignKey(Room, null=True, blank=True, on_delete=models.CASCADE, related_name="messages")
    sender = models.CharField(max_length=150)
    sender_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    body = models.TextField()
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["room", "id"], name="chat_message_room_id")]

    def __str__(self) -> str:
        where = self.room.name if self.room_id else "broadcast"
        return f"#{self.pk} {self.sender} in {where}"


class Worker(models.Model):
    """A server process that holds sockets; its heartbeat tells whether it still lives."""

    id = models.CharField(max_length=32, primary_key=True)
    started = models.DateTimeField(auto_now_add=True)
    heartbeat = models.DateTimeField()

    def __str__(self) -> str:
        return self.id


class Membership(models.Model):
    """One connection's presence in one room (the count behind `presence.members`)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    connection = models.CharField(max_length=64)
    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="memberships")
    user = models.CharField(max_length=150)
    joined = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "connection"], name="chat_membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.room_id}"
