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
