"""End to end: the real gateway on loopback, a real HTTP client, a real WebSocket client, real PTYs."""

import os
import time

import pytest
import pytest_twisted

from support import WORK_ROOT, in_thread

pytestmark = pytest.mark.usefixtures("gateway")


@pytest_twisted.ensureDeferred
async def test_create_attach_echo_resize_exit(gateway):
    """The whole life of a session: create, attach, echo, resize, exit 3, then GET and DELETE."""
    created = await gateway.create()
    assert set(created) == {"session_id", "attach", "placement"}
    assert created["placement"] == {
        "region": "local", "node_id": "fog-local", "tier": "fog",
        "reasons": ["fog-preferred", "healthy", "capacity-ok"],
    }
    sid = created["session_id"]
    assert created["attach"]["ws_url"] == f"{gateway.ws_base}/v1/sessions/{sid}/pty"
    assert created["attach"]["expires_at"].endswith("Z")

    ws = await gateway.attach(created)
    await in_thread(ws.resize, 132, 50)
    await in_thread(ws.type, "echo hi-$((6*7)); stty size\n")
    out = await in_thread(ws.read_until, b"50 132")
    assert b"hi-42" in out

    await in_thread(ws.type, "exit 3\n")
    assert await in_thread(ws.wait_exit) == (3, 1000)

    got = await gateway.request("GET", f"/v1/sessions/{sid}")
    assert got.status == 200
    assert got.json["status"] == "terminated"
    assert got.json["termination"] == {"reason": "exited", "exit_code": 3}
    assert set(got.json) == {"session_id", "status", "placement", "created_at", "expires_at",
                             "image_ref", "termination"}

    assert (await gateway.request("DELETE", f"/v1/sessions/{sid}")).json == {"terminated": True}
    assert (await gateway.request("GET", f"/v1/sessions/{sid}")).status == 404
    assert (await gateway.request("DELETE", f"/v1/sessions/{sid}")).status == 404

    events = [e["event"] for e in gateway.audit_events() if e["session_id"] == sid]
    for name in ("session.created", "placement.decided", "runtime.allocated", "session.attached",
                 "pty.resize", "session.terminated"):
        assert name in events


@pytest_twisted.ensureDeferred
async def test_delete_running_session_ends_shell_and_attachments(gateway):
    """DELETE of a running session answers 200, sends exit and close 1000, and GET is 404 at once."""
    created = await gateway.create()
    sid = created["session_id"]
    ws = await gateway.attach(created)
    await in_thread(ws.type, "echo ready-$((1+1))\n")
    await in_thread(ws.read_until, b"ready-2")
    response = await gateway.request("DELETE", f"/v1/sessions/{sid}")
    assert (response.status, response.json) == (200, {"terminated": True})
    code, close = await in_thread(ws.wait_exit)
    assert close == 1000 and code == 128 + 1  # SIGHUP
    assert (await gateway.request("GET", f"/v1/sessions/{sid}")).status == 404
    terminated = [e for e in gateway.audit_events() if e["event"] == "session.terminated"]
    assert terminated[-1]["details"]["reason"] == "deleted"


def _processes_with(needle: bytes) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


@pytest_twisted.ensureDeferred
async def test_terminate_kills_background_jobs_and_escapees(gateway):
    """Background jobs, HUP-immune jobs and setsid'd children all end with the session."""
    created = await gateway.create()
    ws = await gateway.attach(created)
    await in_thread(ws.type,
                    "sleep 7771 & nohup sleep 7772 >/dev/null 2>&1 & setsid sleep 7773 & "
                    "(trap '' HUP; exec sleep 7774) & echo started-$((2+2))\n")
    await in_thread(ws.read_until, b"started-4")
    deadline = time.monotonic() + 5
    while len(_processes_with(b"sleep\x00777")) < 4 and time.monotonic() < deadline:
        await in_thread(time.sleep, 0.05)
    assert len(_processes_with(b"sleep\x00777")) == 4
    await gateway.request("DELETE", f"/v1/sessions/{created['session_id']}")
    deadline = time.monotonic() + 8  # HUP, then KILL after the 2 s grace
    while _processes_with(b"sleep\x00777") and time.monotonic() < deadline:
        await in_thread(time.sleep, 0.1)
    assert _processes_with(b"sleep\x00777") == []


@pytest_twisted.ensureDeferred
async def test_detach_keeps_shell_and_reattach_replays_scrollback(gateway):
    """Closing the WebSocket keeps the shell; a new attach replays recent output, then is live."""
    created = await gateway.create()
    ws = await gateway.attach(created)
    await in_thread(ws.type, "MARK=remember-me; echo $MARK-$((3*3))\n")
    await in_thread(ws.read_until, b"remember-me-9")
    await in_thread(ws.close)

    again = await gateway.request("POST", f"/v1/sessions/{created['session_id']}/attach")
    assert again.status == 200 and set(again.json) == {"session_id", "attach"}
    ws2 = await gateway.attach(again.json)
    await in_thread(ws2.read_until, b"remember-me-9")  # replayed
    await in_thread(ws2.type, "echo still-$MARK\n")
    await in_thread(ws2.read_until, b"still-remember-me")  # the same shell
    got = await gateway.request("GET", f"/v1/sessions/{created['session_id']}")
    assert got.json["status"] == "running"


@pytest_twisted.ensureDeferred
async def test_two_attachments_share_one_session(gateway):
    """Several attachments see the same output and may both type."""
    created = await gateway.create()
    first = await gateway.attach(created)
    second = await gateway.attach(created)
    await in_thread(first.type, "echo from-first-$((5+5))\n")
    await in_thread(second.read_until, b"from-first-10")
    await in_thread(second.type, "echo from-second-$((5+6))\n")
    await in_thread(first.read_until, b"from-second-11")
    await in_thread(first.type, "exit 0\n")
    assert await in_thread(first.wait_exit) == (0, 1000)
    assert await in_thread(second.wait_exit) == (0, 1000)


@pytest_twisted.ensureDeferred
async def test_ttl_expiry_ends_session(gateway):
    """When the TTL passes (injected clock), attachments get the exit frame and GET says ttl."""
    created = await gateway.create(ttl_seconds=30)
    ws = await gateway.attach(created)
    await in_thread(ws.type, "echo up-$((2*4))\n")
    await in_thread(ws.read_until, b"up-8")
    gateway.clock.advance(29)
    got = await gateway.request("GET", f"/v1/sessions/{created['session_id']}")
    assert got.json["status"] == "running"
    gateway.clock.advance(1)
    code, close = await in_thread(ws.wait_exit)
    assert close == 1000
    got = await gateway.request("GET", f"/v1/sessions/{created['session_id']}")
    assert got.json["status"] == "terminated"
    assert got.json["termination"]["reason"] == "ttl"


@pytest_twisted.ensureDeferred
async def test_idle_timeout_counts_input_not_output(gateway):
    """Input postpones the idle timeout; output alone does not."""
    created = await gateway.create(profile="small", ttl_seconds=600)  # idle 60 s
    sid = created["session_id"]
    ws = await gateway.attach(created)
    await in_thread(ws.type, "while :; do echo tick; sleep 0.2; done\n")
    await in_thread(ws.read_until, b"tick")
    gateway.clock.advance(50)
    await in_thread(ws.resize, 100, 30)  # input at t=50
    session = gateway.parts.sessions._sessions[sid]
    deadline = time.monotonic() + 10
    while session.last_input != gateway.clock.seconds():  # wait until the gateway has handled it
        assert time.monotonic() < deadline, "the resize never reached the gateway"
        await in_thread(time.sleep, 0.02)
    gateway.clock.advance(50)  # t=100: 50 s since input
    assert (await gateway.request("GET", f"/v1/sessions/{sid}")).json["status"] == "running"
    gateway.clock.advance(10)  # t=110: 60 s since input, output all along
    await in_thread(ws.wait_exit)
    got = await gateway.request("GET", f"/v1/sessions/{sid}")
    assert got.json["termination"]["reason"] == "idle"


@pytest_twisted.ensureDeferred
async def test_terminated_session_is_retained_then_forgotten(gateway):
    """A session that ended by itself answers 200 terminated for the retention window, then 404."""
    created = await gateway.create()
    ws = await gateway.attach(created)
    await in_thread(ws.type, "exit 0\n")
    await in_thread(ws.wait_exit)
    path = f"/v1/sessions/{created['session_id']}"
    assert (await gateway.request("GET", path)).json["status"] == "terminated"
    gateway.clock.advance(300)
    assert (await gateway.request("GET", path)).status == 404


@pytest_twisted.ensureDeferred
async def test_shell_environment_is_explicit(gateway):
    """The shell sees TERM=xterm-256color, its own HOME, and none of the gateway's environment."""
    os.environ["CLOUDSHELL_FAKE_SECRET"] = "do-not-leak"
    try:
        created = await gateway.create()
    finally:
        del os.environ["CLOUDSHELL_FAKE_SECRET"]
    ws = await gateway.attach(created)
    await in_thread(ws.type, "env | sort; echo END-$((1+1))\n")
    out = await in_thread(ws.read_until, b"END-2")
    assert b"TERM=xterm-256color" in out
    assert b"do-not-leak" not in out and b"SESSION_TOKEN_SECRET" not in out
    assert f"HOME={WORK_ROOT}/{created['session_id']}".encode() in out
    await in_thread(ws.type, "exit\n")
    await in_thread(ws.wait_exit)
