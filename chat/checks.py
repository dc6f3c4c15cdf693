"""System checks for deployments that would silently misbehave."""

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.compatibility, deploy=False)
def check_channel_layer(app_configs, **kwargs):
    if settings.DEBUG or not isinstance(get_channel_layer(), InMemoryChannelLayer):
        return []
    return [
        Error(
            "The in-memory channel layer cannot serve more than one process.",
            hint="Set REDIS_URL (for example redis://127.0.0.1:6379/0), or DEBUG=true for development.",
            id="chat.E001",
        )
    ]


@register(Tags.database)
def check_database(app_configs, databases=None, **kwargs):
    """Messages are stored with INSERT ... RETURNING (chat/services.py)."""
    from django.db import connections

    errors = []
    for alias in databases or ():
        features = connections[alias].features
        if not features.can_return_columns_from_insert:
            errors.append(
                Error(
                    f"The database {alias!r} cannot return columns from INSERT.",
                    hint="Use PostgreSQL, or SQLite 3.35 or newer (Python's sqlite3.sqlite_version).",
                    id="chat.E002",
                )
            )
    return errors
