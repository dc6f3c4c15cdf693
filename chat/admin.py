"""Room logs in the Django admin: read-only, searchable, newest first."""

from django.contrib import admin
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html

from .models import Message, Room


class ReadOnlyAdmin(admin.ModelAdmin):
    """A log is a record: staff read it, nobody edits it through the admin."""

    list_per_page = 100

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Room)
class RoomAdmin(ReadOnlyAdmin):
    list_display = ["name", "creator_name", "created", "closed", "message_count", "log"]
    list_filter = [("created", admin.DateFieldListFilter), ("closed", admin.EmptyFieldListFilter)]
    search_fields = ["name", "creator_name"]
    date_hierarchy = "created"
    ordering = ["-created"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(message_total=Count("messages"))

    @admin.display(description="messages", ordering="message_total")
    def message_count(self, room):
        return room.message_total

    @admin.display(description="log")
    def log(self, room):
        url = reverse("admin:chat_message_changelist") + f"?room__id__exact={room.pk}"
        return format_html('<a href="{}">view log</a>', url)


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ["id", "created", "room", "sender", "body"]
    list_display_links = ["id"]
    list_filter = [("created", admin.DateFieldListFilter), "room"]
    list_select_related = ["room"]
    search_fields = ["body", "sender", "room__name"]
    date_hierarchy = "created"
    ordering = ["-created", "-id"]
    show_full_result_count = False  # a count over millions of rows costs more than the page
