"""How many failed authentications one client address may make.

Tokens carry 256 random bits, so guessing one is hopeless at any rate; the
limit is there so that a client hammering the server with bad tokens (a script
with a revoked token in a loop, or someone trying their luck) is told to stop,
with ``429`` and ``Retry-After``, and shows up once in the server log. Only
failures are counted, and a request with a valid token is always served, even
from an address that is limited: one misbehaving client behind a shared address
(a reverse proxy, a NAT) does not lock out its neighbours.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["DEFAULT_AUTH_FAILURES", "FailureLimiter"]

DEFAULT_AUTH_FAILURES = 30  # a minute, per client address: a person mistyping a token never gets near it


class FailureLimiter:
    """At most ``limit`` failures per key in any ``window`` seconds; ``limit`` 0 means no limit.

    Memory stays bounded: a key keeps at most ``limit`` timestamps, and keys
    whose failures have all left the window are forgotten every ``window``.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_limit: Callable[[str], None] | None = None,
    ):
        self.limit, self.window, self.clock = limit, window, clock
        self.on_limit = on_limit  # called once when a key starts being refused (e.g. to log it)
        self._failures: dict[str, deque[float]] = {}
        self._announced: dict[str, float] = {}
        self._lock = threading.Lock()  # the server authenticates on worker threads
        self._pruned = clock()

    def failed(self, key: str) -> float | None:
        """Record a failure of ``key``; seconds it must wait when it is over the limit, else None."""
        if self.limit <= 0:
            return None
        now = self.clock()
        with self._lock:
            self._prune(now)
            times = self._failures.setdefault(key, deque(maxlen=self.limit + 1))
            self._drop_old(times, now)
            times.append(now)
            if len(times) <= self.limit:
                return None
            times.popleft()  # keep the last ``limit``: the wait is until the oldest of them leaves the window
            wait = max(1.0, math.ceil(times[0] + self.window - now))
            announce = self._announced.get(key, -math.inf) <= now - self.window
            if announce:
                self._announced[key] = now
        if announce and self.on_limit is not None:
            self.on_limit(key)
        return wait

    def _drop_old(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def _prune(self, now: float) -> None:
        if now - self._pruned < self.window:
            return
        self._pruned = now
        for key in [k for k, times in self._failures.items() if not times or times[-1] <= now - self.window]:
            del self._failures[key]
            self._announced.pop(key, None)
