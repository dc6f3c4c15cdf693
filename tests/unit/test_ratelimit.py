"""The per-connection token bucket, driven by a fake clock."""

import pytest

from chat.ratelimit import TokenBucket


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


def allowed(bucket: TokenBucket, attempts: int) -> int:
    return sum(bucket.allow() for _ in range(attempts))


def test_a_full_bucket_allows_a_burst_then_refuses(clock):
    """At 5 a second with a burst of 10, ten quick events pass and the eleventh does not."""
    bucket = TokenBucket(rate=5, burst=10, clock=clock)
    assert [bucket.allow() for _ in range(11)] == [True] * 10 + [False]
    assert not bucket.allow()


def test_the_bucket_refills_at_the_rate(clock):
    """A fifth of a second at 5 a second earns exactly one more event."""
    bucket = TokenBucket(rate=5, burst=10, clock=clock)
    allowed(bucket, 10)
    clock.advance(0.1)
    assert not bucket.allow()
    clock.advance(0.1)
    assert bucket.allow()
    assert not bucket.allow()


def test_refused_events_cost_nothing(clock):
    """Being refused does not push the next allowed event further away."""
    bucket = TokenBucket(rate=5, burst=10, clock=clock)
    allowed(bucket, 10)
    assert allowed(bucket, 50) == 0
    clock.advance(0.2)
    assert bucket.allow()


def test_a_long_pause_refills_only_up_to_the_burst(clock):
    """Idle time is not banked beyond the burst."""
    bucket = TokenBucket(rate=5, burst=10, clock=clock)
    allowed(bucket, 10)
    clock.advance(3600)
    assert allowed(bucket, 20) == 10


def test_a_steady_rate_at_the_limit_is_always_allowed(clock):
    """A client that keeps to the rate is never refused, even with an empty bucket."""
    bucket = TokenBucket(rate=16, burst=32, clock=clock)
    allowed(bucket, 32)
    for _ in range(100):
        clock.advance(1 / 16)  # exact in binary, so the test measures the bucket, not rounding
        assert bucket.allow()


def test_over_a_long_run_the_average_is_the_rate(clock):
    """Trying 100 times a second for 10 seconds at 20 a second lets through 20 a second plus the burst."""
    bucket = TokenBucket(rate=20, burst=40, clock=clock)
    passed = 0
    for _ in range(1000):
        passed += bucket.allow()
        clock.advance(0.01)
    assert 40 + 199 <= passed <= 40 + 200


def test_a_fractional_rate_works(clock):
    """Half an event a second with a burst of one: one now, the next after two seconds."""
    bucket = TokenBucket(rate=0.5, burst=1, clock=clock)
    assert bucket.allow()
    clock.advance(1.9)
    assert not bucket.allow()
    clock.advance(0.1)
    assert bucket.allow()


@pytest.mark.parametrize("rate", [0, -1])
def test_a_rate_of_zero_allows_everything(clock, rate):
    """Rate 0 turns the limit off."""
    bucket = TokenBucket(rate=rate, burst=0, clock=clock)
    assert allowed(bucket, 10_000) == 10_000


def test_the_real_clock_is_the_default():
    """Without a clock the bucket uses the monotonic clock and starts full."""
    bucket = TokenBucket(rate=1, burst=3)
    assert allowed(bucket, 4) == 3


def test_a_wait_on_the_server_lets_the_frames_queued_meanwhile_through(clock):
    """3 s of waiting at 10/s: the 30 frames sent meanwhile pass, for 3 s, and no more."""
    bucket = TokenBucket(rate=10, burst=20, clock=clock)
    assert allowed(bucket, 20) == 20
    bucket.excuse(3.0)
    assert allowed(bucket, 40) == 30
    clock.advance(3.0)
    bucket.excuse(0.5)  # a short wait is what the burst is for: no credit
    assert allowed(bucket, 40) == 20  # refilled up to the burst, nothing beyond


def test_an_excuse_expires(clock):
    bucket = TokenBucket(rate=10, burst=20, clock=clock)
    assert allowed(bucket, 20) == 20
    bucket.excuse(2.0)
    clock.advance(2.0)
    assert allowed(bucket, 60) == 20  # the refill only; the credit's time is over
