"""
Audit events: one JSON object per line, C{{ts, event, session_id, subject,
placement, details}}, to C{AUDIT_LOG} when set, else to the gateway's log.
Never token values, never stdin bytes.
"""

from __future__ import annotations

import json
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


def rfc3339(seconds: float, millis: bool = False) -> str:
    stamp = datetime.fromtimestamp(seconds, timezone.utc)
    if millis:
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


class Audit:
    _log = Logger()

    def __init__(self, clock, path: str | None = None):
        self._clock = clock
        self._path = path
        self._file = None

    def open(self) -> None:
        if self._path and self._file is None:
            self._file = open(self._path, "a", encoding="utf-8", buffering=1)

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
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        else:
            self._log.info("audit {audit_event} {audit_json}", audit_event=event,
                           audit_json=json.dumps(record, separators=(",", ":")), audit=record)
        return record
