"""Sessions, CSRF tokens and login throttling of the console process (state in memory).

Owns: ``Sessions`` (random 256-bit ids in an HttpOnly, SameSite=Strict cookie; a new id at
login; idle and absolute expiry; a CSRF token per session) and ``Throttle`` (the pure
lockout machine of ``appliance.format.console`` applied per technician name *and* per client
address, so neither guessing one name from many clients nor many names from one client
works). Does not own passwords (``credentials``) or HTTP (``app``).

State is in memory on purpose: a console restart logs everyone out; locks do not survive a
restart, which only root (who can read the technician file anyway) can cause.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from appliance.format import console as rules

COOKIE = "appliance_console"
MAX_SESSIONS = 64
MAX_THROTTLE_KEYS = 4096


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    created: float
    last_seen: float
    technician: str | None = None  # None: a pre-login session (carries the login form's CSRF token)


class Sessions:
    def __init__(self, policy: rules.SessionPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or rules.SessionPolicy()
        self.clock = clock
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new(self, technician: str | None = None) -> Session:
        now = self.clock()
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now, technician)
        with self._lock:
            self._expire(now)
            if len(self._by_id) >= MAX_SESSIONS:  # oldest pre-login sessions go first
                oldest = min(self._by_id.values(), key=lambda x: (x.technician is not None, x.last_seen))
                del self._by_id[oldest.id]
            self._by_id[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = self.clock()
        with self._lock:
            s = self._by_id.get(sid)
            if s is None:
                return None
            if not rules.session_alive(s.created, s.last_seen, now, self.policy):
                del self._by_id[sid]
                return None
            s = replace(s, last_seen=now)
            self._by_id[sid] = s
            return s

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)

    def _expire(self, now: float) -> None:
        dead = [k for k, s in self._by_id.items() if not rules.session_alive(s.created, s.last_seen, now, self.policy)]
        for k in dead:
            del self._by_id[k]


class Throttle:
    def __init__(self, policy: rules.LockoutPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or rules.LockoutPolicy()
        self.clock = clock
        self._records: dict[str, rules.LoginRecord] = {}
        self._lock = threading.Lock()

    def retry_after(self, *keys: str) -> float:
        """Seconds until every key is unlocked (0: a login may be tried)."""
        now = self.clock()
        with self._lock:
            return max((self._records.get(k, rules.LoginRecord()).retry_after(now) for k in keys), default=0.0)

    def failed(self, *keys: str) -> list[str]:
        """Record a failure for each key; returns the keys that became locked by it."""
        now, locked = self.clock(), []
        with self._lock:
            if len(self._records) > MAX_THROTTLE_KEYS:
                self._records = {k: r for k, r in self._records.items() if r.locked(now) or r.failures}
            for k in keys:
                before = self._records.get(k, rules.LoginRecord())
                after = rules.after_failure(before, now, self.policy)
                self._records[k] = after
                if after.locked(now) and not before.locked(now):
                    locked.append(k)
        return locked

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._records[k] = rules.after_success(self._records.get(k, rules.LoginRecord()))
