"""
No leaks: cycles of create -> attach -> exit -> delete, and of clients vanishing
mid-session, leave no shell, no PTY, no extra file descriptor and flat memory.
The suite runs a small count; `make soak` runs CHURN_CYCLES=1000.
"""

import os
import socket
import time

import pytest_twisted

from conftest import shells_left
from support import in_thread

CYCLES = int(os.environ.get("CHURN_CYCLES", "40"))


def _fds() -> list[str]:
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return names


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _vanish(ws) -> None:
    """Drop the TCP connection with no close frame, as a client that lost its network."""
    sock = ws.ws.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.shutdown(socket.SHUT_RDWR)  # RST: the gateway sees the peer vanish, no close frame
    try:
        ws.close()  # the client library's own resources (its socket pair), not the gateway's
    except OSError:
        pass


async def _cycle(gateway, vanish: bool) -> None:
    created = await gateway.create(token="churner")
    ws = await gateway.attach(created)
    await in_thread(ws.type, "echo cycle-$((1+1))\n")
    await in_thread(ws.read_until, b"cycle-2")
    if vanish:
        await in_thread(_vanish, ws)
    else:
        await in_thread(ws.type, "exit 0\n")
        await in_thread(ws.wait_exit)
        await in_thread(ws.close)  # the client's own socket (the server closed its side)
    response = await gateway.request("DELETE", f"/v1/sessions/{created['session_id']}", token="churner")
    assert response.status == 200


async def _settle(gateway, seconds=10.0) -> None:
    deadline = time.monotonic() + seconds
    while (shells_left() or len(gateway.parts.api.ws_factory.tracker)) and time.monotonic() < deadline:
        await in_thread(time.sleep, 0.05)


@pytest_twisted.ensureDeferred
async def test_churn_leaves_nothing_behind(gateway):
    """Create/attach/exit/delete and vanishing clients: shells, PTYs, fds back to baseline; memory flat."""
    await _cycle(gateway, vanish=False)  # warm up: first-use allocations are not leaks
    await _cycle(gateway, vanish=True)
    await _settle(gateway)
    fds_before, rss_before = _fds(), _rss_mb()
    started = time.monotonic()
    for i in range(CYCLES):
        await _cycle(gateway, vanish=i % 2 == 1)
        gateway.clock.advance(60)  # rate limit: one subject creating as fast as it can
    await _settle(gateway)
    elapsed = time.monotonic() - started
    fds_after, rss_after = _fds(), _rss_mb()
    print(f"\nchurn: {CYCLES} cycles in {elapsed:.1f} s; fds {len(fds_before)} -> {len(fds_after)}; "
          f"RSS {rss_before:.1f} -> {rss_after:.1f} MB")
    assert shells_left() == []
    assert [f for f in fds_after if "ptmx" in f or "/dev/pts/" in f] == []
    assert len(fds_after) <= len(fds_before) + 2, sorted(set(fds_after) - set(fds_before))
    assert rss_after - rss_before < 8 + CYCLES * 0.01, "memory grew with the number of sessions"
    assert gateway.parts.sessions.running() == []
    assert [s.sessions for s in gateway.parts.inventory.states()] == [0, 0]
