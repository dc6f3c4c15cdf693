"""daphne's development server, with the project's WebSocket close on oversized frames."""

from daphne.management.commands.runserver import Command as DaphneRunserverCommand

from chat.server import ChatServer


class Command(DaphneRunserverCommand):
    server_cls = ChatServer
