from django.urls import re_path

from . import consumers

websocket_urlpatterns = [
    re_path(r"ws/chat/(?P<room_name>\w+)/$", consumers.ChatConsumer.as_asgi()),
    # Not in the tutorial: the same consumer style, answering only the sender, for the
    # echo scenario of the benchmark.
    re_path(r"ws/echo/$", consumers.EchoConsumer.as_asgi()),
]
