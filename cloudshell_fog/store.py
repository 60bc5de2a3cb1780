"""
Durable session state: L{ISessionStore}, and SQLite as the embedded default.

The store keeps what a restarted gateway needs to answer truthfully for
every session it had: who owns it, where it ran, when it ends, and how it
ended.  Writes are committed before they return, so a client is never told
about a session the store does not hold.  SQLite runs in WAL mode with
C{synchronous=NORMAL}: a committed write survives the gateway's crash or
restart (not necessarily the host losing power).

Schema changes are numbered migrations applied in order at open; the
database records its version in C{PRAGMA user_version}.
"""

from __future__ import annotations

import json
import os
import sqlite3

from zope.interface import Interface, implementer

MIGRATIONS = [
    # 1: the first schema.
    """
    CREATE TABLE sessions (
        id           TEXT PRIMARY KEY,
        subject      TEXT NOT NULL,
        profile      TEXT NOT NULL,
        ttl_seconds  INTEGER NOT NULL,
        image_ref    TEXT,
        created_at   REAL NOT NULL,
        seq          INTEGER NOT NULL,
        status       TEXT NOT NULL,
        placement    TEXT,
        termination  TEXT,
        ended_at     REAL
    );
    CREATE INDEX sessions_by_subject ON sessions (subject, seq);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = ("id", "subject", "profile", "ttl_seconds", "image_ref", "created_at", "seq", "status",
            "placement", "termination", "ended_at")
_JSON = ("placement", "termination")


class StoreError(Exception):
    """The store cannot be used (unreadable, newer schema than this gateway knows, ...)."""


class ISessionStore(Interface):
    def save(record: dict) -> None:
        """Insert or replace one session record; committed when this returns."""

    def remove(session_id: str) -> None:
        """Forget a session; committed when this returns."""

    def load() -> list:
        """Every stored session record, oldest first."""

    def ping() -> bool:
        """True when the store answers."""

    def close() -> None:
        """Release the store."""


@implementer(ISessionStore)
class SqliteSessionStore:
    def __init__(self, path: str):
        self.path = path
        if path != ":memory:":
            directory = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create {directory}: {e.strerror}") from None
        old_umask = os.umask(0o077)  # the database, its -wal and -shm files: the gateway's alone
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            if path != ":memory:":
                os.chmod(path, 0o600)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {path}: {e}") from None
        except OSError as e:
            raise StoreError(f"cannot use {path}: {e.strerror}") from None
        finally:
            os.umask(old_umask)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"the database has schema version {version}, newer than this gateway's "
                             f"{SCHEMA_VERSION}; upgrade the gateway or use another STATE_DB")
        for number in range(version, SCHEMA_VERSION):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @property
    def version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def save(self, record: dict) -> None:
        values = [json.dumps(record[c]) if c in _JSON and record.get(c) is not None else record.get(c)
                  for c in _COLUMNS]
        self._db.execute(
            f"INSERT OR REPLACE INTO sessions ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            values,
        )

    def remove(self, session_id: str) -> None:
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def load(self) -> list[dict]:
        rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM sessions ORDER BY seq").fetchall()
        records = []
        for row in rows:
            record = dict(zip(_COLUMNS, row))
            for column in _JSON:
                if record[column] is not None:
                    record[column] = json.loads(record[column])
            records.append(record)
        return records

    def ping(self) -> bool:
        try:
            self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        self._db.close()
