"""Sessions, CSRF tokens and login throttling of the console process, kept in a small sqlite file.

Owns: ``Sessions`` (random 256-bit ids in an HttpOnly, SameSite=Strict cookie; a new id at
login; idle and absolute expiry; a CSRF token per session) and ``Throttle`` (the pure
lockout machine of ``appliance.format.console`` applied per technician name *and* per client
address, so neither guessing one name from many clients nor many names from one client
works). Does not own passwords (``credentials``) or HTTP (``app``).

State survives a console restart (``STATE/console.sqlite``, mode 0600 in the 0700 state
directory; docs/design.md §7.1): restarting the console neither unlocks a locked-out name
nor logs technicians out. Nothing secret is stored in clear: a session is stored under the
SHA-256 of its id (a read of the file does not give a usable cookie), and the CSRF token is
derived from the id (HMAC-SHA256), so it is not stored at all. Times come from ``clock``
(wall-clock seconds by default, so they mean the same after a restart).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ConsoleAccessError
from appliance.format import console as rules

COOKIE = "appliance_console"
MAX_SESSIONS = 64
MAX_THROTTLE_KEYS = 4096
DB_NAME = "console.sqlite"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sessions (id_hash TEXT PRIMARY KEY, created REAL, last_seen REAL, technician TEXT)",
    "CREATE TABLE IF NOT EXISTS throttle (key TEXT PRIMARY KEY, failures TEXT, locked_until REAL)",
)


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    created: float
    last_seen: float
    technician: str | None = None  # None: a pre-login session (carries the login form's CSRF token)


def id_hash(sid: str) -> str:
    """What the file keeps of a session id (SHA-256, hex)."""
    return hashlib.sha256(b"appliance-console-session:" + sid.encode()).hexdigest()


def csrf_of(sid: str) -> str:
    """The session's CSRF token: derived from its id, so only the cookie's holder can compute it."""
    return hmac.new(sid.encode(), b"appliance-console-csrf", hashlib.sha256).hexdigest()


class StateDb:
    """The console's state file: one sqlite database, mode 0600, one connection shared under a lock."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
        try:
            self.db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
            for statement in _SCHEMA:
                self.db.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise ConsoleAccessError(
                f"console state {path} is unreadable: {exc}", remedy=f"remove {path}: every technician logs in again"
            ) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")


class Sessions:
    def __init__(self, policy: rules.SessionPolicy | None = None, clock: Callable[[], float] = time.time,
                 db: StateDb | None = None) -> None:  # fmt: skip
        self.policy = policy or rules.SessionPolicy()
        self.clock = clock
        self.state = db or StateDb(None)

    def new(self, technician: str | None = None) -> Session:
        now = self.clock()
        sid = secrets.token_urlsafe(32)
        with self.state.transaction() as db:
            self._expire(db, now)
            (count,) = db.execute("SELECT COUNT(*) FROM sessions").fetchone()
            if count >= MAX_SESSIONS:  # oldest pre-login sessions go first
                db.execute("DELETE FROM sessions WHERE id_hash = (SELECT id_hash FROM sessions ORDER BY "
                           "technician IS NOT NULL, last_seen LIMIT 1)")  # fmt: skip
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (id_hash(sid), now, now, technician))
        return Session(sid, csrf_of(sid), now, now, technician)

    def get(self, sid: str | None) -> Session | None:
        if not sid or len(sid) > 128:
            return None
        now, key = self.clock(), id_hash(sid)
        with self.state.transaction() as db:
            row = db.execute("SELECT created, last_seen, technician FROM sessions WHERE id_hash = ?", (key,)).fetchone()
            if row is None:
                return None
            created, last_seen, technician = row
            if not rules.session_alive(created, last_seen, now, self.policy):
                db.execute("DELETE FROM sessions WHERE id_hash = ?", (key,))
                return None
            db.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?", (now, key))
        return Session(sid, csrf_of(sid), created, now, technician)

    def drop(self, sid: str | None) -> None:
        with self.state.transaction() as db:
            db.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash(sid or ""),))

    def _expire(self, db: sqlite3.Connection, now: float) -> None:
        db.execute("DELETE FROM sessions WHERE ? - last_seen >= ? OR ? - created >= ?",
                   (now, self.policy.idle_s, now, self.policy.absolute_s))  # fmt: skip


class Throttle:
    def __init__(self, policy: rules.LockoutPolicy | None = None, clock: Callable[[], float] = time.time,
                 db: StateDb | None = None) -> None:  # fmt: skip
        self.policy = policy or rules.LockoutPolicy()
        self.clock = clock
        self.state = db or StateDb(None)

    @staticmethod
    def _get(db: sqlite3.Connection, key: str) -> rules.LoginRecord:
        row = db.execute("SELECT failures, locked_until FROM throttle WHERE key = ?", (key,)).fetchone()
        if row is None:
            return rules.LoginRecord()
        try:
            failures = tuple(float(t) for t in json.loads(row[0]))
        except (ValueError, TypeError):
            failures = ()
        return rules.LoginRecord(failures, float(row[1]))

    @staticmethod
    def _put(db: sqlite3.Connection, key: str, rec: rules.LoginRecord) -> None:
        db.execute(
            "INSERT OR REPLACE INTO throttle VALUES (?, ?, ?)", (key, json.dumps(rec.failures), rec.locked_until)
        )

    def retry_after(self, *keys: str) -> float:
        """Seconds until every key is unlocked (0: a login may be tried)."""
        now = self.clock()
        with self.state.transaction() as db:
            return max((self._get(db, k).retry_after(now) for k in keys), default=0.0)

    def failed(self, *keys: str) -> list[str]:
        """Record a failure for each key; returns the keys that became locked by it."""
        now, locked = self.clock(), []
        with self.state.transaction() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM throttle").fetchone()
            if count > MAX_THROTTLE_KEYS:  # keep locks and recent failures, forget the rest
                db.execute("DELETE FROM throttle WHERE locked_until <= ? AND failures = '[]'", (now,))
            for k in keys:
                before = self._get(db, k)
                after = rules.after_failure(before, now, self.policy)
                self._put(db, k, after)
                if after.locked(now) and not before.locked(now):
                    locked.append(k)
        return locked

    def succeeded(self, *keys: str) -> None:
        with self.state.transaction() as db:
            for k in keys:
                self._put(db, k, rules.after_success(self._get(db, k)))
