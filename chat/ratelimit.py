"""Limits on one client: a token bucket for its message rate, a count of its open sockets."""

from __future__ import annotations

import time


class TokenBucket:
    """Allows `rate` events a second on average and bursts of `burst`; rate 0 allows everything."""

    __slots__ = ("burst", "clock", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, clock=time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.clock = clock
        self.updated = clock()

    def allow(self) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class ConnectionCounter:
    """Open sockets per identity in this process: the limit on connections per user or session.

    Per process: behind several workers an identity can hold the limit on each of them
    (docs/protocol.md says so). A shared count would need a store every worker reaches on
    every connect and a way to forget the sockets of a worker that died.
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def acquire(self, key: str, limit: int) -> bool:
        """Count one more socket for `key`, unless it already has `limit` open."""
        count = self.counts.get(key, 0)
        if count >= limit:
            return False
        self.counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self.counts.get(key, 0) - 1
        if count > 0:
            self.counts[key] = count
        else:
            self.counts.pop(key, None)


open_connections = ConnectionCounter()
