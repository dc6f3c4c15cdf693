"""Limits on one client: a token bucket for its message rate, a count of its open sockets."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)


# A connection's frames are handled one at a time, so those a client sends while one of
# its requests waits on the server (a locked or slow database) queue up and then arrive
# at the limiter all at once: a client that kept to the rate would be refused, then closed
# as a flood. A wait longer than this many seconds (the burst absorbs shorter ones) lets
# through as many extra frames as the rate allows for the time waited, within as long again.
EXCUSED_WAIT_SECONDS = 1.0


class TokenBucket:
    """Allows `rate` events a second on average and bursts of `burst`; rate 0 allows everything.

    `excuse(waited)` lets through, on top, the events that queued while the server kept
    the client waiting.
    """

    __slots__ = ("burst", "clock", "credit", "credit_until", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, clock=time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.clock = clock
        self.updated = clock()
        self.credit = 0.0  # events allowed beyond the bucket, until credit_until
        self.credit_until = 0.0

    def allow(self) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        if self.credit >= 1 and now < self.credit_until:
            self.credit -= 1
            return True
        return False

    def excuse(self, waited: float) -> None:
        """The server kept the client waiting `waited` seconds: what it sent meanwhile is no flood."""
        if self.rate <= 0 or waited <= EXCUSED_WAIT_SECONDS:
            return
        now = self.clock()
        if now >= self.credit_until:
            self.credit = 0.0
        self.credit += waited * self.rate
        self.credit_until = now + waited


class ConnectionCounter:
    """Open sockets per identity in this process: the limit on connections per user or session.

    Used without Redis (one process), and as the fallback while Redis cannot be reached.
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


# One sorted set per identity: its connection ids, each scored by when it expires (Redis's
# own clock, so that workers' clocks need not agree). Dead entries go before counting.
_ACQUIRE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
# XX: renew only entries that still exist, so that a socket released meanwhile is not revived.
_REFRESH = """
local now = tonumber(redis.call('TIME')[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('EXPIRE', key, ARGV[1])
end
return #KEYS
"""


class SharedConnectionCounter:
    """Open sockets per identity across every process, in Redis: the limit holds behind N workers.

    Each process renews its own sockets' entries every `ttl / 3` seconds; the entries of a
    process that died expire after `ttl`, so its sockets stop counting within a minute.
    While Redis cannot be reached, each process counts for itself (and logs it).
    """

    def __init__(self, url: str, prefix: str, *, ttl: int = 60) -> None:
        self.url = url
        self.prefix = prefix
        self.ttl = ttl
        self.local = ConnectionCounter()
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._per_loop.get(loop)
        if state is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
            state = self._per_loop[loop] = _LoopState(client)
            state.renewer = loop.create_task(self._renew_forever(state), name="chat-connection-counts")
        return state

    def _key(self, identity: str) -> str:
        return f"{self.prefix}:connections:{identity}"

    async def acquire(self, identity: str, connection: str, limit: int) -> bool:
        state = self._state()
        try:
            allowed = await state.client.eval(_ACQUIRE, 1, self._key(identity), limit, self.ttl, connection)
        except Exception as error:
            log.warning("connection count in Redis failed (%r); counting in this process", error)
            if not self.local.acquire(identity, limit):
                return False
            state.local[connection] = identity
            return True
        if allowed:
            state.counted[connection] = identity
        return bool(allowed)

    async def release(self, identity: str, connection: str) -> None:
        state = self._state()
        if state.local.pop(connection, None) is not None:
            self.local.release(identity)
            return
        if state.counted.pop(connection, None) is None:
            return
        try:
            await state.client.zrem(self._key(identity), connection)
        except Exception as error:  # the entry expires by itself
            log.warning("could not uncount connection %s in Redis (%r)", connection, error)

    async def _renew_forever(self, state: _LoopState) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            entries = list(state.counted.items())
            if not entries:
                continue
            try:
                keys = [self._key(identity) for _connection, identity in entries]
                await state.client.eval(_REFRESH, len(keys), *keys, self.ttl, *(c for c, _i in entries))
            except Exception as error:
                log.warning("could not renew connection counts in Redis (%r); retrying", error)


class _LoopState:
    """One event loop's Redis client and the sockets it counted there."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.counted: dict[str, str] = {}  # connection id -> identity, counted in Redis
        self.local: dict[str, str] = {}  # connection id -> identity, counted in this process
        self.renewer: asyncio.Task[None] | None = None


class ConnectionLimit:
    """The limit on open sockets per identity: in Redis when the deployment has it, else per process."""

    def __init__(self) -> None:
        self._shared: SharedConnectionCounter | None = None
        self._shared_for: str | None = None
        self.local = ConnectionCounter()

    def _backend(self) -> SharedConnectionCounter | None:
        url = settings.REDIS_URL
        if not url:
            return None
        if self._shared is None or self._shared_for != url:
            prefix = str(settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "chat")).rstrip(":")
            self._shared, self._shared_for = SharedConnectionCounter(url, prefix), url
        return self._shared

    async def acquire(self, identity: str, connection: str, limit: int) -> bool:
        shared = self._backend()
        if shared is None:
            return self.local.acquire(identity, limit)
        return await shared.acquire(identity, connection, limit)

    async def release(self, identity: str, connection: str) -> None:
        shared = self._backend()
        if shared is None:
            self.local.release(identity)
        else:
            await shared.release(identity, connection)


open_connections = ConnectionLimit()
