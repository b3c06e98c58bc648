"""The failed-authentication limiter and the free-space reserve, on their own (the server's use of
them is tested against a real server in tests/security/test_server_hardening.py)."""

from __future__ import annotations

import pytest

from ncaas.server.ratelimit import FailureLimiter
from ncaas.server.space import Reserve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_limited_after_its_failures_and_free_again_once_they_age():
    clock, limited = Clock(), []
    limiter = FailureLimiter(3, window=60, clock=clock, on_limit=limited.append)
    assert [limiter.failed("a") for _ in range(3)] == [None, None, None]
    assert limiter.failed("a") == 60  # the oldest of the last three leaves the window in 60 s
    clock.now += 20
    assert limiter.failed("a") == 40  # still failing: still limited, the wait follows the window
    assert limiter.failed("b") is None  # another address is not touched
    assert limited == ["a"]  # announced once
    clock.now += 61
    assert limiter.failed("a") is None  # its failures aged out of the window


def test_no_limit_and_bounded_memory():
    clock = Clock()
    assert all(FailureLimiter(0, clock=clock).failed("a") is None for _ in range(1000))
    limiter = FailureLimiter(2, window=10, clock=clock)
    for i in range(500):
        limiter.failed(f"10.0.{i // 250}.{i % 250}")
    assert all(len(times) <= 3 for times in limiter._failures.values())
    clock.now += 11
    limiter.failed("x")  # old addresses are forgotten once their failures left the window
    assert list(limiter._failures) == ["x"]


@pytest.mark.parametrize(
    ("text", "disk", "expected"),
    [("1GiB", 10 << 30, 1 << 30), ("0", 10 << 30, 0), ("5%", 1000, 50), ("12.5%", 800, 100)],
)
def test_a_reserve_is_a_size_or_a_share_of_the_disk(text, disk, expected):
    assert Reserve.parse(text).bytes_of(disk) == expected


@pytest.mark.parametrize("text", ["lots", "100%", "-1%", "x%"])
def test_a_bad_reserve_says_what_to_write(text):
    with pytest.raises(ValueError, match="write e.g."):
        Reserve.parse(text)
