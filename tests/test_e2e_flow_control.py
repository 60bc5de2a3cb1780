"""Flow control end to end: a client that stops reading pauses the shell; memory stays bounded."""

import base64
import json
import os
import socket
import struct
import time

import pytest_twisted

from support import in_thread


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _stalled_client(port: int, path: str) -> socket.socket:
    """Upgrade, start `yes`, then never read again (a small receive buffer fills at once)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    command = base64.b64encode(b"yes\n").decode()
    sock.sendall(_masked_text_frame(json.dumps({"type": "stdin", "data_b64": command})))
    return sock


async def assert_stalls(hub):
    """
    The shell behind a stalled client stops: unpaused, `yes` pushes tens of MB a
    second through the gateway; paused, only socket and window buffers fill
    (the kernel may still grow a loopback socket's buffer for a while).
    """
    deadline = time.monotonic() + 10
    while hub.offset < 200_000 and time.monotonic() < deadline:  # `yes` is running
        await in_thread(time.sleep, 0.05)
    await in_thread(time.sleep, 2.0)
    before = hub.offset
    await in_thread(time.sleep, 1.0)
    assert hub.offset - before < 4 * 1024 * 1024, "the shell kept producing output into a full client"
    assert hub.offset < 24 * 1024 * 1024, "far more output than buffers can hold went to a full client"


@pytest_twisted.ensureDeferred
async def test_client_that_stops_reading_pauses_the_shell(gateway):
    """`yes` into a client that never reads: output stops at a bounded amount and memory stays flat."""
    created = await gateway.create()
    path = f"/v1/sessions/{created['session_id']}/pty?token={created['attach']['token']}"
    hub = gateway.parts.sessions._sessions[created["session_id"]].hub
    rss_before = _rss_bytes()
    sock = await in_thread(_stalled_client, gateway.port.getHost().port, path)
    try:
        await assert_stalls(hub)
        assert _rss_bytes() - rss_before < 40 * 1024 * 1024
    finally:
        sock.close()
    resumed_from = hub.offset
    deadline = time.monotonic() + 5
    while hub.offset < resumed_from + 1024 * 1024 and time.monotonic() < deadline:
        await in_thread(time.sleep, 0.05)
    assert hub.offset >= resumed_from + 1024 * 1024, "the shell stayed paused after the stalled client left"
    await gateway.request("DELETE", f"/v1/sessions/{created['session_id']}")
