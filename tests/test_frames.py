"""Unit tests for the WebSocket frames: client frames (web/frames.py) and server frames (terminal.py)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis.strategies import binary, integers

from cloudshell_fog.terminal import exit_frame, stdout_frame
from cloudshell_fog.web.frames import (
    INVALID_DATA,
    MAX_DIMENSION,
    POLICY_VIOLATION,
    BadFrame,
    Resize,
    Stdin,
    parse_client_frame,
)


def text(obj) -> bytes:
    """C{obj} as a UTF-8 JSON text frame payload."""
    return json.dumps(obj).encode("utf-8")


# ---------------------------------------------------------------- valid client frames


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(text({"type": "stdin", "data_b64": "aGVsbG8="}), Stdin(b"hello"), id="stdin"),
        pytest.param(text({"type": "stdin", "data_b64": ""}), Stdin(b""), id="stdin-empty"),
        pytest.param(text({"type": "stdin", "data_b64": "AP8="}), Stdin(b"\x00\xff"), id="stdin-binary-bytes"),
        pytest.param(text({"type": "stdin", "data_b64": "YQ=="}), Stdin(b"a"), id="stdin-padded"),
        pytest.param(
            text({"type": "stdin", "data_b64": "YQ==", "extra": 1}), Stdin(b"a"), id="stdin-extra-field-ignored"
        ),
        pytest.param(b' {"type":"stdin","data_b64":"eA=="} ', Stdin(b"x"), id="stdin-whitespace-around"),
        pytest.param(text({"type": "resize", "cols": 80, "rows": 24}), Resize(80, 24), id="resize"),
        pytest.param(text({"type": "resize", "cols": 1, "rows": 1}), Resize(1, 1), id="resize-min"),
        pytest.param(text({"type": "resize", "cols": 1000, "rows": 1000}), Resize(1000, 1000), id="resize-max"),
        pytest.param(text({"type": "resize", "cols": 1, "rows": 1000}), Resize(1, 1000), id="resize-mixed"),
    ],
)
def test_parse_valid(payload, expected):
    """A valid client frame parses into its Stdin or Resize value."""
    assert parse_client_frame(payload, False) == expected


@given(binary())
def test_stdin_round_trip(data):
    """Any bytes sent base64-encoded in a stdin frame come back exactly."""
    payload = text({"type": "stdin", "data_b64": base64.b64encode(data).decode("ascii")})
    assert parse_client_frame(payload, False) == Stdin(data)


@given(integers(min_value=1, max_value=MAX_DIMENSION), integers(min_value=1, max_value=MAX_DIMENSION))
def test_resize_in_range(cols, rows):
    """Every cols and rows from 1 to MAX_DIMENSION is accepted."""
    assert parse_client_frame(text({"type": "resize", "cols": cols, "rows": rows}), False) == Resize(cols, rows)


# ---------------------------------------------------------------- bad client frames


def resize(cols, rows) -> bytes:
    """A resize frame with the given (possibly bad) values."""
    return text({"type": "resize", "cols": cols, "rows": rows})


BAD_FRAMES = [
    # id, payload, is_binary, close code
    ("binary", text({"type": "stdin", "data_b64": ""}), True, POLICY_VIOLATION),
    ("binary-garbage", b"\x00\x01\x02", True, POLICY_VIOLATION),
    ("empty", b"", False, INVALID_DATA),
    ("not-json", b"hello", False, INVALID_DATA),
    ("truncated-json", b'{"type":"stdin"', False, INVALID_DATA),
    ("invalid-utf8", b"\xff\xfe\xfd", False, INVALID_DATA),
    ("invalid-utf8-in-object", b'{"type":"stdin","data_b64":"\xc3\x28"}', False, INVALID_DATA),
    ("lone-continuation-byte", b"\x80", False, INVALID_DATA),
    ("json-array", b"[]", False, POLICY_VIOLATION),
    ("json-array-of-frame", text([{"type": "stdin", "data_b64": ""}]), False, POLICY_VIOLATION),
    ("json-string", b'"stdin"', False, POLICY_VIOLATION),
    ("json-number", b"42", False, POLICY_VIOLATION),
    ("json-null", b"null", False, POLICY_VIOLATION),
    ("unknown-type", text({"type": "exec", "cmd": "ls"}), False, POLICY_VIOLATION),
    ("server-type-stdout", text({"type": "stdout", "data_b64": ""}), False, POLICY_VIOLATION),
    ("type-wrong-case", text({"type": "STDIN", "data_b64": ""}), False, POLICY_VIOLATION),
    ("missing-type", text({"data_b64": "eA=="}), False, POLICY_VIOLATION),
    ("type-null", text({"type": None}), False, POLICY_VIOLATION),
    ("type-list", text({"type": ["stdin"]}), False, POLICY_VIOLATION),
    ("empty-object", b"{}", False, POLICY_VIOLATION),
    ("stdin-no-data", text({"type": "stdin"}), False, POLICY_VIOLATION),
    ("stdin-data-number", text({"type": "stdin", "data_b64": 5}), False, POLICY_VIOLATION),
    ("stdin-data-null", text({"type": "stdin", "data_b64": None}), False, POLICY_VIOLATION),
    ("stdin-data-list", text({"type": "stdin", "data_b64": ["eA=="]}), False, POLICY_VIOLATION),
    ("stdin-wrong-field", text({"type": "stdin", "data": "eA=="}), False, POLICY_VIOLATION),
    ("base64-bad-padding", text({"type": "stdin", "data_b64": "YQ"}), False, INVALID_DATA),
    ("base64-bad-padding-3", text({"type": "stdin", "data_b64": "YWJ"}), False, INVALID_DATA),
    ("base64-excess-padding", text({"type": "stdin", "data_b64": "YQ==="}), False, INVALID_DATA),
    ("base64-illegal-chars", text({"type": "stdin", "data_b64": "ab$%"}), False, INVALID_DATA),
    ("base64-urlsafe-alphabet", text({"type": "stdin", "data_b64": "-_-_"}), False, INVALID_DATA),
    ("base64-whitespace", text({"type": "stdin", "data_b64": "YW Jj"}), False, INVALID_DATA),
    ("base64-newline", text({"type": "stdin", "data_b64": "YWJj\n"}), False, INVALID_DATA),
    ("base64-non-ascii", text({"type": "stdin", "data_b64": "\u00e9\u00e9\u00e9\u00e9"}), False, INVALID_DATA),
    ("base64-only-padding", text({"type": "stdin", "data_b64": "===="}), False, INVALID_DATA),
    ("resize-zero-cols", resize(0, 24), False, POLICY_VIOLATION),
    ("resize-zero-rows", resize(80, 0), False, POLICY_VIOLATION),
    ("resize-1001-cols", resize(1001, 24), False, POLICY_VIOLATION),
    ("resize-1001-rows", resize(80, 1001), False, POLICY_VIOLATION),
    ("resize-negative", resize(-1, 24), False, POLICY_VIOLATION),
    ("resize-strings", resize("80", "24"), False, POLICY_VIOLATION),
    ("resize-floats", resize(80.0, 24.0), False, POLICY_VIOLATION),
    ("resize-fractional", resize(80.5, 24), False, POLICY_VIOLATION),
    ("resize-booleans", resize(True, True), False, POLICY_VIOLATION),
    ("resize-bool-rows", resize(80, True), False, POLICY_VIOLATION),
    ("resize-huge-int", resize(10**30, 24), False, POLICY_VIOLATION),
    ("resize-huge-negative", resize(80, -(10**30)), False, POLICY_VIOLATION),
    ("resize-null", resize(None, None), False, POLICY_VIOLATION),
    ("resize-list", resize([80], [24]), False, POLICY_VIOLATION),
    ("resize-missing-rows", text({"type": "resize", "cols": 80}), False, POLICY_VIOLATION),
    ("resize-missing-cols", text({"type": "resize", "rows": 24}), False, POLICY_VIOLATION),
    ("resize-missing-both", text({"type": "resize"}), False, POLICY_VIOLATION),
    ("resize-nan", b'{"type":"resize","cols":NaN,"rows":24}', False, POLICY_VIOLATION),
    ("resize-infinity", b'{"type":"resize","cols":Infinity,"rows":24}', False, POLICY_VIOLATION),
]

BAD_FRAMES += [
    pytest.param(
        '{"type":"resize","cols":1,"rows":1}'.encode("utf-16"),
        False,
        INVALID_DATA,
        id="utf16-with-bom",
    ),
    pytest.param(
        '{"type":"stdin","data_b64":""}'.encode("utf-16-le"),
        False,
        INVALID_DATA,
        id="utf16le-no-bom",
    ),
    pytest.param(
        '{"type":"stdin","data_b64":""}'.encode("utf-32"),
        False,
        INVALID_DATA,
        id="utf32",
    ),
]


@pytest.mark.parametrize(
    ("payload", "is_binary", "code"),
    [case if hasattr(case, "marks") else pytest.param(*case[1:], id=case[0]) for case in BAD_FRAMES],
)
def test_parse_invalid(payload, is_binary, code):
    """A bad frame raises BadFrame with the close code and a reason that fits in a close frame."""
    with pytest.raises(BadFrame) as info:
        parse_client_frame(payload, is_binary)
    error = info.value
    assert error.code == code
    assert isinstance(error.reason, str) and error.reason
    assert len(error.reason.encode("utf-8")) <= 123
    assert str(error) == error.reason


# ---------------------------------------------------------------- server frames


@pytest.mark.parametrize(
    ("data", "expected_b64"),
    [
        (b"", ""),
        (b"hello", "aGVsbG8="),
        (b"\x00\xff\n", "AP8K"),
        (b"\x1b[0m\r\n$ ", base64.b64encode(b"\x1b[0m\r\n$ ").decode()),
    ],
)
def test_stdout_frame(data, expected_b64):
    """stdout_frame is the API's {"type":"stdout","data_b64":...} JSON object."""
    frame = stdout_frame(data)
    assert isinstance(frame, bytes)
    assert json.loads(frame.decode("utf-8")) == {"type": "stdout", "data_b64": expected_b64}


@given(binary())
def test_stdout_frame_round_trip(data):
    """Any output bytes round-trip exactly through a stdout frame."""
    frame = stdout_frame(data)
    decoded = json.loads(frame.decode("utf-8"))
    assert set(decoded) == {"type", "data_b64"}
    assert decoded["type"] == "stdout"
    assert base64.b64decode(decoded["data_b64"], validate=True) == data
    assert b"\n" not in frame


@given(binary())
def test_stdout_frame_parses_as_client_stdin(data):
    """The data_b64 of a stdout frame is accepted by the client-frame parser's strict base64."""
    decoded = json.loads(stdout_frame(data))
    payload = text({"type": "stdin", "data_b64": decoded["data_b64"]})
    assert parse_client_frame(payload, False) == Stdin(data)


@pytest.mark.parametrize("code", [0, 1, 2, 127, 130, 255, -1, -15])
def test_exit_frame(code):
    """exit_frame is the API's {"type":"exit","code":N} JSON object."""
    frame = exit_frame(code)
    assert isinstance(frame, bytes)
    decoded = json.loads(frame.decode("utf-8"))
    assert decoded == {"type": "exit", "code": code}
    assert isinstance(decoded["code"], int)


@given(integers(min_value=-(2**31), max_value=2**31))
def test_exit_frame_any_int(code):
    """exit_frame is valid JSON for any integer code."""
    assert json.loads(exit_frame(code)) == {"type": "exit", "code": code}
