"""Every limit answers with its documented status and message, and the gateway keeps serving."""

import socket
import time

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from websockets.exceptions import InvalidStatus

from cloudshell_fog.limits import TokenBuckets
from support import WsClient, in_thread


def test_token_bucket_refills_at_its_rate():
    """A burst is allowed, then one token per 60/rate seconds; keys are independent."""
    clock = Clock()
    buckets = TokenBuckets(clock, per_minute=6, burst=2)
    assert [buckets.take("a"), buckets.take("a")] == [0, 0]
    assert buckets.take("a") == 10 and buckets.take("b") == 0
    clock.advance(9)
    assert buckets.take("a") == 1
    clock.advance(1)
    assert buckets.take("a") == 0
    assert TokenBuckets(clock, per_minute=0, burst=1).take("x") == 0  # 0 disables


@pytest.fixture
def tight(make_gateway):
    return make_gateway(env={"CREATE_RATE_PER_MINUTE": "6", "CREATE_BURST": "2", "MAX_SESSIONS": "3",
                             "MAX_ATTACHMENTS_PER_SESSION": "2", "HTTP_IDLE_TIMEOUT": "1",
                             "HTTP_REQUEST_TIMEOUT": "1"})


@pytest_twisted.ensureDeferred
async def test_creation_rate_limit_is_429_with_retry_after(tight):
    """A subject creating faster than its bucket refills gets 429 and Retry-After; others are unaffected."""
    body = {"profile": "default", "ttl_seconds": 60}
    for _ in range(2):
        assert (await tight.request("POST", "/v1/sessions", body, token="fast")).status == 201
    limited = await tight.request("POST", "/v1/sessions", body, token="fast")
    assert (limited.status, limited.json["error"]["code"]) == (429, "rate_limited")
    assert limited.header("Retry-After") == "10"
    assert (await tight.request("POST", "/v1/sessions", body, token="calm")).status == 201
    tight.clock.advance(10)
    full = await tight.request("POST", "/v1/sessions", body, token="fast")  # allowed again, but 3 running
    assert (full.status, full.json["error"]["code"]) == (503, "gateway_full")
    assert full.header("Retry-After")


@pytest_twisted.ensureDeferred
async def test_attachments_per_session_are_capped(tight):
    """A third attachment to one session is refused with 409 before the upgrade."""
    created = await tight.create()
    url = f"{created['attach']['ws_url']}?token={created['attach']['token']}"
    first, second = await in_thread(lambda: WsClient(url)), await in_thread(lambda: WsClient(url))
    with pytest.raises(InvalidStatus) as refused:
        await in_thread(lambda: WsClient(url))
    assert refused.value.response.status_code == 409
    await in_thread(first.close)
    await in_thread(time.sleep, 0.2)
    third = await in_thread(lambda: WsClient(url))  # a slot is free again
    for ws in (second, third):
        await in_thread(ws.close)


def _raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=wait)
    try:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_oversized_headers_are_431(tight):
    """Headers over 16 KiB get 431 in the JSON error shape."""
    port = tight.port.getHost().port
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    answer = await in_thread(_raw, port, request)
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"headers_too_large"' in answer


@pytest_twisted.ensureDeferred
async def test_slow_requests_time_out_with_408(tight):
    """A request whose headers never finish is answered 408 and closed (slowloris)."""
    port = tight.port.getHost().port
    started = time.monotonic()
    answer = await in_thread(_raw, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in answer
    assert time.monotonic() - started < 4


@pytest_twisted.ensureDeferred
async def test_idle_keep_alive_connections_are_closed(tight):
    """A keep-alive connection with nothing more to say is closed after HTTP_IDLE_TIMEOUT."""
    port = tight.port.getHost().port
    started = time.monotonic()
    answer = await in_thread(_raw, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert time.monotonic() - started < 4
