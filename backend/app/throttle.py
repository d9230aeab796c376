"""Failed-login limits: per user and per client address, in memory (one process)."""
import math
import threading
import time
from collections import defaultdict, deque
from typing import Callable, Deque, Dict

from fastapi import Request

MAX_FAILURES = 5
WINDOW_SECONDS = 15 * 60
SWEEP_ABOVE = 10_000  # tracked keys; beyond that, expired ones are dropped on the next check


class LoginThrottle:
    """A key (user or address) with `max_failures` failed logins within the last
    `window` seconds is blocked until fewer than that many are that recent."""

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: Dict[str, Deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()  # sync handlers run in a thread pool

    def retry_after(self, *keys: str) -> int:
        """Seconds until none of `keys` is blocked; 0 if none is."""
        with self._lock:
            now = self._clock()
            self._forget_old(now, keys if len(self._failures) <= SWEEP_ABOVE else list(self._failures))
            waits = [
                self._failures[key][-self.max_failures] + self.window - now
                for key in keys
                if len(self._failures.get(key, ())) >= self.max_failures
            ]
        return max(1, math.ceil(max(waits))) if waits else 0

    def failed(self, *keys: str) -> None:
        with self._lock:
            now = self._clock()
            for key in keys:
                self._failures[key].append(now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _forget_old(self, now: float, keys) -> None:
        for key in keys:
            times = self._failures.get(key)
            if times is None:
                continue
            while times and times[0] <= now - self.window:
                times.popleft()
            if not times:
                del self._failures[key]


def client_address(request: Request) -> str:
    """The address the gateway saw: nginx appends it as the last X-Forwarded-For entry
    (earlier entries are whatever the client sent). Without the header, the peer."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[-1].strip()
    return request.client.host if request.client else "unknown"
