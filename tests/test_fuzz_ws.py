"""
Hypothesis-generated WebSocket frames against the live gateway: random JSON,
wrong types, huge numbers, invalid base64, binary frames and fragments.  The
gateway never fails, other attachments are unaffected, and each socket closes
exactly as the frame rules say (1007/1008/1009) or stays open.
"""

import base64
import json

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher
from websockets.exceptions import ConnectionClosed

from cloudshell_fog.web.frames import BadFrame, parse_client_frame
from support import WORK_ROOT, Gateway, WsClient, in_thread, node

EXAMPLES = 80

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
frames = st.one_of(
    st.builds(lambda v: json.dumps(v), json_values),
    st.builds(lambda d: json.dumps({"type": "stdin", "data_b64": d}), st.text(max_size=40)),
    st.builds(lambda b: json.dumps({"type": "stdin", "data_b64": base64.b64encode(b).decode()}),
              st.binary(max_size=64)),
    st.builds(lambda c, r: json.dumps({"type": "resize", "cols": c, "rows": r}),
              json_values, json_values),
    st.builds(lambda c, r: json.dumps({"type": "resize", "cols": c, "rows": r}),
              st.integers(-5, 1005), st.integers(-5, 1005)),
    st.binary(max_size=64),  # binary frames
    st.text(max_size=64),  # not JSON at all
)


def _expected_close(frame) -> int | None:
    payload = frame if isinstance(frame, bytes) else frame.encode("utf-8")
    try:
        parse_client_frame(payload, isinstance(frame, bytes))
    except BadFrame as e:
        return e.code
    return None


def fuzz(url: str, bystander: WsClient) -> int:
    closed = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    @given(frame=frames, fragmented=st.booleans())
    def one(frame, fragmented):
        ws = WsClient(url)
        try:
            if fragmented and len(frame) > 1:
                half = len(frame) // 2
                ws.ws.send([frame[:half], frame[half:]])  # one message in two fragments
            else:
                ws.ws.send(frame)
            expected = _expected_close(frame)
            if expected is None:
                ws.ws.ping().wait(5)  # still open and answering
            else:
                assert ws.wait_close(5) == expected
                closed.append(expected)
        except ConnectionClosed as e:
            raise AssertionError(f"unexpected close {e.rcvd} for {frame!r}") from None
        finally:
            ws.close()

    one()
    bystander.type("still-here\r")
    bystander.read_until(b"still-here")
    return len(closed)


@pytest_twisted.ensureDeferred
async def test_random_frames_never_hurt_the_gateway_or_other_attachments(tmp_path):
    """Random and malformed frames close only their own socket with the documented code."""
    # The shell is `cat`: fuzzed stdin reaches a harmless program, never an interactive shell.
    gw = Gateway(tmp_path, nodes=[node("fog-local", "fog", shell=["/bin/cat"], work_root=WORK_ROOT)],
                 env={"MAX_ATTACHMENTS_PER_SESSION": "4"})
    gw.start()
    failures = []
    observer = lambda event: failures.append(event) if event.get("log_failure") else None  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        created = await gw.create()
        url = f"{created['attach']['ws_url']}?token={created['attach']['token']}"
        bystander = await in_thread(lambda: WsClient(url))
        closes = await in_thread(fuzz, url, bystander, seconds=240)
        assert closes > 10  # the strategies do reach the refusals
        assert (await gw.request("GET", f"/v1/sessions/{created['session_id']}")).json["status"] == "running"
        await in_thread(bystander.close)
    finally:
        globalLogPublisher.removeObserver(observer)
        await gw.stop()
    assert failures == [], [f["log_failure"].getTraceback() for f in failures]
