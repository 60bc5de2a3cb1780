"""
Audit events: one JSON object per line, C{{ts, event, session_id, subject,
placement, details}}, to C{AUDIT_LOG} when set, else to the gateway's log.
Never token values, never stdin bytes.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from twisted.logger import Logger

SESSION_CREATED = "session.created"
PLACEMENT_DECIDED = "placement.decided"
RUNTIME_ALLOCATED = "runtime.allocated"
RUNTIME_FAILED = "runtime.allocate_failed"
SESSION_ATTACHED = "session.attached"
SESSION_DETACHED = "session.detached"
PTY_RESIZE = "pty.resize"
POLICY_DENIED = "policy.denied"
SESSION_TERMINATED = "session.terminated"
CONFIG_RELOADED = "config.reloaded"
CONFIG_RELOAD_FAILED = "config.reload_failed"


def rfc3339(seconds: float, millis: bool = False) -> str:
    stamp = datetime.fromtimestamp(seconds, timezone.utc)
    if millis:
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


class Audit:
    """
    Writes events as JSON lines.  With C{max_bytes}, the file is rotated
    before a line would take it past that size: C{audit.log} becomes
    C{audit.log.1} (and so on, C{backups} files kept).  Writes and rotation
    happen in one thread, one line at a time, so no line is lost or split.
    """

    _log = Logger()

    def __init__(self, clock, path: str | None = None, max_bytes: int = 0, backups: int = 5):
        self._clock = clock
        self._path = path
        self._max_bytes, self._backups = max_bytes, backups
        self._file = None
        self._size = 0

    def open(self) -> None:
        if self._path and self._file is None:
            self._file = open(self._path, "a", encoding="utf-8", buffering=1)
            self._size = self._file.tell()

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self._backups - 1, 0, -1):
            older = f"{self._path}.{n}"
            if os.path.exists(older):
                os.replace(older, f"{self._path}.{n + 1}")
        if self._backups:
            os.replace(self._path, f"{self._path}.1")
        else:
            os.remove(self._path)
        self._file = open(self._path, "a", encoding="utf-8", buffering=1)
        self._size = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def emit(self, event: str, session_id=None, subject=None, placement=None, **details) -> dict:
        record = {
            "ts": rfc3339(self._clock.seconds(), millis=True),
            "event": event,
            "session_id": session_id,
            "subject": subject,
            "placement": placement,
            "details": details,
        }
        if self._file is not None:
            line = json.dumps(record, separators=(",", ":")) + "\n"
            size = len(line.encode("utf-8"))
            if self._max_bytes and self._size and self._size + size > self._max_bytes:
                self._rotate()
            self._file.write(line)
            self._size += size
        else:
            self._log.info("audit {audit_event} {audit_json}", audit_event=event,
                           audit_json=json.dumps(record, separators=(",", ":")), audit=record)
        return record
