"""
Client -> server WebSocket frames (JSON text):

  {"type":"stdin","data_b64":"<base64>"}     terminal input bytes
  {"type":"resize","cols":C,"rows":R}         window size, 1..1000 each

A frame that breaks these rules raises L{BadFrame} carrying the close code:
1007 (invalid payload data: not JSON, not base64) or 1008 (policy: a binary
frame, not an object, an unknown type, a missing or out-of-range field).
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass

MAX_DIMENSION = 1000
INVALID_DATA = 1007
POLICY_VIOLATION = 1008


class BadFrame(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class Stdin:
    data: bytes


@dataclass(frozen=True)
class Resize:
    cols: int
    rows: int


def _dimension(frame: dict, name: str) -> int:
    value = frame.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIMENSION:
        raise BadFrame(POLICY_VIOLATION, f"resize needs integer cols and rows from 1 to {MAX_DIMENSION}")
    return value


def parse_client_frame(payload: bytes, is_binary: bool) -> Stdin | Resize:
    if is_binary:
        raise BadFrame(POLICY_VIOLATION, "binary frames are not accepted; send JSON text frames")
    try:
        frame = json.loads(payload.decode("utf-8"))  # bytes would let json guess UTF-16/32
    except (ValueError, UnicodeDecodeError):
        raise BadFrame(INVALID_DATA, "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise BadFrame(POLICY_VIOLATION, "frame must be a JSON object with a type")
    kind = frame.get("type")
    if kind == "stdin":
        data = frame.get("data_b64")
        if not isinstance(data, str):
            raise BadFrame(POLICY_VIOLATION, "stdin frame needs data_b64 as a string")
        try:
            return Stdin(binascii.a2b_base64(data, strict_mode=True) if data else b"")
        except (binascii.Error, ValueError):
            raise BadFrame(INVALID_DATA, "data_b64 is not valid base64") from None
    if kind == "resize":
        return Resize(_dimension(frame, "cols"), _dimension(frame, "rows"))
    raise BadFrame(POLICY_VIOLATION, "unknown frame type; expected stdin or resize")
