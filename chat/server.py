"""The daphne server, as every command of this project starts it."""

from daphne.server import Server


class ChatServer(Server):
    """Daphne that closes on an oversized frame with 1009 instead of cutting the TCP connection.

    Autobahn, under daphne, "fails by drop" by default: a frame over the limit aborts
    the connection and the client sees 1006 with no reason, although the protocol
    promises 1009. Failing with a close frame costs no memory: once it has failed,
    autobahn discards the rest of the frame, and drops a peer that does not answer
    the close within its close-handshake timeout.
    """

    @property
    def ws_factory(self):
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory):
        # Server.run() creates the factory, sets the size limits on it, then listens.
        factory.setProtocolOptions(failByDrop=False)
        self._ws_factory = factory
