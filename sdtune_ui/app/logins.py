"""Passwords of the app (--auth, --auth-file) and the brake on guessing them.

After a few wrong passwords for one user from one address, that pair must wait before the next try, twice as long
after each further failure (up to a cap); many failures for one user from any addresses lock that user the same
way (an attacker can rotate addresses). A right password clears the pair's count. No gradio here.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

FREE_FAILURES = 5          # wrong passwords per user and address before any wait
USER_FREE_FAILURES = 20    # wrong passwords per user from all addresses before the user waits
FIRST_WAIT_S = 30.0        # the first wait; doubles with each further failure
MAX_WAIT_S = 15 * 60.0
FORGET_AFTER_S = 60 * 60.0  # failures older than this no longer count


class TooManyAttempts(Exception):
    """A login refused without checking the password: wait `wait_s` seconds."""

    def __init__(self, wait_s: float):
        self.wait_s = wait_s
        super().__init__(f"Too many wrong passwords: try again in {math.ceil(wait_s)} s.")


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0


@dataclass
class LoginThrottle:
    free_failures: int = FREE_FAILURES
    user_free_failures: int = USER_FREE_FAILURES
    first_wait_s: float = FIRST_WAIT_S
    max_wait_s: float = MAX_WAIT_S
    forget_after_s: float = FORGET_AFTER_S
    clock: Callable[[], float] = time.monotonic
    _seen: dict[tuple[str, str], _Failures] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, user: str, client: str) -> float:
        """Seconds before `user` may try again from `client` (0: now)."""
        now = self.clock()
        with self._lock:
            return max(self._wait(user, client, self.free_failures, now),
                       self._wait(user, "*", self.user_free_failures, now))

    def record(self, user: str, client: str, ok: bool) -> None:
        now = self.clock()
        with self._lock:
            if ok:
                self._seen.pop((user, client), None)
                return
            for key in ((user, client), (user, "*")):
                failures = self._seen.setdefault(key, _Failures())
                if now - failures.last > self.forget_after_s:
                    failures.count = 0
                failures.count += 1
                failures.last = now
            if len(self._seen) > 100_000:  # a flood of made-up names must not grow memory for ever
                self._forget_old(now)

    def _wait(self, user: str, client: str, free: int, now: float) -> float:
        failures = self._seen.get((user, client))
        if failures is None or failures.count < free or now - failures.last > self.forget_after_s:
            return 0.0
        wait = min(self.max_wait_s, self.first_wait_s * 2 ** (failures.count - free))
        return max(0.0, failures.last + wait - now)

    def _forget_old(self, now: float) -> None:
        for key in [key for key, failures in self._seen.items() if now - failures.last > self.max_wait_s]:
            del self._seen[key]


def password_checker(credentials: list[tuple[str, str]], throttle: LoginThrottle,
                     client_of_request: Callable[[], str]) -> Callable[[str, str], bool]:
    """`check(user, password)` for the app's login: compares in constant time, raises TooManyAttempts while the
    user (from the address `client_of_request()` names) must wait."""
    passwords = dict(credentials)

    def check(user: str, password: str) -> bool:
        client = client_of_request()
        wait = throttle.wait_s(user, client)
        if wait > 0:
            raise TooManyAttempts(wait)
        expected = passwords.get(user)
        # Compared even for an unknown user, so the time taken does not say which users exist.
        ok = hmac.compare_digest((expected or "\0").encode(), (password or "").encode()) and expected is not None
        throttle.record(user, client, ok)
        return ok

    return check
