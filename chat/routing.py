from django.conf import settings
from django.urls import path

from .consumers import ChatConsumer, EchoConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
]

if settings.CHAT_ECHO_ROUTE:
    # Test only: the Autobahn cases run through the production server stack (docs/reliability.md).
    websocket_urlpatterns.append(path("ws/echo/", EchoConsumer.as_asgi()))
