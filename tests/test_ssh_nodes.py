"""
Fog placement for real: sessions on OpenSSH nodes in their own network
namespaces, measured RTT, health, failover and node loss.
"""

import time

import pytest
import pytest_twisted

from sshnodes import DelayingRelay, SshNode, keygen, namespaces_unavailable
from support import Gateway, in_thread

WHY = namespaces_unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"SSH node tests skipped: {WHY}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three real nodes: fog-a (eu), fog-b (us) and cloud-c (eu), and the gateway's key."""
    directory = tmp_path_factory.mktemp("fleet")
    key = directory / "gateway_key"
    public = keygen(key)
    nodes = {}
    try:
        for name in ("fog-a", "fog-b", "cloud-c"):
            nodes[name] = SshNode(directory / name, public).start()
        yield key, nodes
    finally:
        for node in nodes.values():
            node.stop()


def entries(fleet, relay=None, **over):
    key, nodes = fleet
    fog_b = nodes["fog-b"].node_entry("fog-b", "us", "fog", key)
    if relay is not None:
        fog_b["ssh"]["host"], fog_b["ssh"]["port"] = relay.address
    result = [nodes["fog-a"].node_entry("fog-a", "eu", "fog", key), fog_b,
              nodes["cloud-c"].node_entry("cloud-c", "eu", "cloud", key)]
    for entry in result:
        entry.update(over.get(entry["id"], {}))
    return result


async def start_gateway(tmp_path, nodes, interval="0.3"):
    gw = Gateway(tmp_path, nodes=nodes, env={"HEALTH_INTERVAL": interval, "HEALTH_FAILURES": "2"})
    gw.start()
    return gw


async def wait_for(predicate, seconds=10.0, what="condition"):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await in_thread(time.sleep, 0.05)


@pytest_twisted.ensureDeferred
async def test_remote_session_echo_resize_exit(tmp_path, fleet):
    """A session on a remote node: echo, resize seen by stty, exit code, terminated."""
    gw = await start_gateway(tmp_path, entries(fleet))
    try:
        created = await gw.create(placement_hint="fog-a")
        assert created["placement"]["node_id"] == "fog-a"
        assert created["placement"]["reasons"][:2] == ["hint-node", "fog-preferred"]
        ws = await gw.attach(created)
        await in_thread(ws.resize, 111, 33)
        await in_thread(ws.type, "stty size; echo remote-$((6*7)) $(hostname -I)\n")
        out = await in_thread(ws.read_until, b"33 111")
        out = await in_thread(ws.read_until, b"remote-42")
        assert fleet[1]["fog-a"].address.encode() in out
        await in_thread(ws.type, "exit 7\n")
        assert await in_thread(ws.wait_exit) == (7, 1000)
        got = await gw.request("GET", f"/v1/sessions/{created['session_id']}")
        assert got.json["termination"] == {"reason": "exited", "exit_code": 7}
    finally:
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_delete_ends_the_remote_shell(tmp_path, fleet):
    """DELETE closes the channel and the remote shell and its jobs end."""
    gw = await start_gateway(tmp_path, entries(fleet))
    node = fleet[1]["fog-a"]
    try:
        created = await gw.create(placement_hint="fog-a")
        ws = await gw.attach(created)
        await in_thread(ws.type, "sleep 8811 & echo bg-$((1+1))\n")
        await in_thread(ws.read_until, b"bg-2")
        assert node.processes("sleep 8811")
        response = await gw.request("DELETE", f"/v1/sessions/{created['session_id']}")
        assert response.status == 200
        code, close = await in_thread(ws.wait_exit)
        assert close == 1000
        await wait_for(lambda: not node.processes("sleep 8811"), what="the remote job to end")
    finally:
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_hints_rtt_and_fog_first(tmp_path, fleet):
    """Region hint, then fog before cloud with the lower-RTT fog node first; GET /v1/nodes shows it."""
    relay = DelayingRelay(fleet[1]["fog-b"].address, 22, 0.02)
    gw = await start_gateway(tmp_path, entries(fleet, relay=relay))
    try:
        gw.parts.prober.startService()
        await wait_for(lambda: all(s.rtt_ms is not None for s in gw.parts.inventory.states()),
                       what="every node's first RTT")
        nodes = {n["id"]: n for n in (await gw.request("GET", "/v1/nodes")).json["nodes"]}
        assert set(nodes["fog-a"]) == {"id", "region", "tier", "healthy", "rtt_ms", "sessions", "capacity"}
        assert nodes["fog-b"]["rtt_ms"] > nodes["fog-a"]["rtt_ms"] + 20  # the relay's 2 x 20 ms
        first = await gw.create()
        assert first["placement"]["node_id"] == "fog-a"
        assert first["placement"]["reasons"][0] == "fog-preferred"
        assert first["placement"]["reasons"][-1].startswith("rtt=")
        us = await gw.create(placement_hint="us")
        assert us["placement"]["node_id"] == "fog-b"
        assert us["placement"]["reasons"][0] == "hint-region"
        ws = await gw.attach(us)  # a working shell through the slow path
        await in_thread(ws.type, "echo slow-$((3+4))\n")
        await in_thread(ws.read_until, b"slow-7")
        for created in (first, us):
            await gw.request("DELETE", f"/v1/sessions/{created['session_id']}")
    finally:
        gw.parts.prober.stopService()
        await gw.stop()
        await relay.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_host_key_is_refused_and_fails_over(tmp_path, fleet):
    """A node presenting another host key is never trusted: the session goes elsewhere, saying why."""
    other = fleet[1]["fog-b"].host_key
    nodes = entries(fleet)
    nodes[0]["ssh"]["host_key"] = other  # fog-a is configured with fog-b's host key
    gw = await start_gateway(tmp_path, nodes)
    try:
        created = await gw.create(placement_hint="fog-a")
        assert created["placement"]["node_id"] != "fog-a"
        assert created["placement"]["reasons"][0] == "failover:fog-a:host-key-mismatch"
        response = await gw.request("POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 60},
                                    token="other-user")
        assert response.status == 201
    finally:
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_refused_key_is_auth_failed(tmp_path, fleet):
    """A node that does not accept the gateway's key fails with auth-failed; with no other node, 500 says so."""
    key, nodes = fleet
    stranger = tmp_path / "stranger"
    keygen(stranger)
    only = [nodes["fog-a"].node_entry("fog-a", "eu", "fog", stranger)]
    gw = await start_gateway(tmp_path, only)
    try:
        response = await gw.request("POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 60})
        assert response.status == 500
        assert response.json["error"]["code"] == "runtime_failed"
        assert "fog-a" in response.json["error"]["message"] and "refused the key" in response.json["error"]["message"]
    finally:
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_node_down_fails_over_then_node_lost_then_back(tmp_path, fleet):
    """A fog node going down: new sessions fail over to cloud, its running session ends node-lost,
    the prober marks it unhealthy, and once it is back it is used again."""
    nodes = entries(fleet)
    fog_a = fleet[1]["fog-a"]
    gw = await start_gateway(tmp_path, [nodes[0], nodes[2]])  # fog-a and cloud-c
    try:
        running = await gw.create()
        assert running["placement"]["node_id"] == "fog-a"
        ws = await gw.attach(running)
        await in_thread(ws.type, "echo alive-$((2*5))\n")
        await in_thread(ws.read_until, b"alive-10")

        fog_a.link(False)
        # The prober finds the node silent: the session ends node-lost within about one interval.
        gw.parts.prober.startService()
        code, close = await in_thread(ws.wait_exit, 15)
        assert (code, close) == (255, 1000)
        got = await gw.request("GET", f"/v1/sessions/{running['session_id']}")
        assert got.json["termination"] == {"reason": "node-lost", "exit_code": 255}
        lost = [e for e in gw.audit_events() if e["event"] == "session.terminated"]
        assert lost[-1]["details"]["reason"] == "node-lost"

        await wait_for(lambda: not gw.parts.inventory.states()[0].healthy, what="fog-a marked unhealthy")
        moved = await gw.create()
        assert moved["placement"]["node_id"] == "cloud-c"
        assert "cloud-fallback" in moved["placement"]["reasons"]

        gw.parts.prober.stopService()
        gw.parts.inventory.states()[0].healthy = True  # as if not probed yet: allocation must fail over
        failed_over = await gw.create()
        assert failed_over["placement"]["node_id"] == "cloud-c"
        assert failed_over["placement"]["reasons"][0] in ("failover:fog-a:unreachable", "failover:fog-a:timed-out")

        fog_a.link(True)
        gw.parts.prober.startService()
        await wait_for(lambda: gw.parts.inventory.states()[0].healthy
                       and gw.parts.inventory.states()[0].failures == 0, what="fog-a healthy again")
        back = await gw.create()
        assert back["placement"]["node_id"] == "fog-a"
    finally:
        fog_a.link(True)
        gw.parts.prober.stopService()
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_slow_client_pauses_the_remote_shell(tmp_path, fleet):
    """Flow control over SSH: a client that stops reading stops the channel window, so `yes` stalls."""
    from test_e2e_flow_control import _stalled_client, assert_stalls

    gw = await start_gateway(tmp_path, entries(fleet))
    try:
        created = await gw.create(placement_hint="fog-a")
        hub = gw.parts.sessions._sessions[created["session_id"]].hub
        path = f"/v1/sessions/{created['session_id']}/pty?token={created['attach']['token']}"
        sock = await in_thread(_stalled_client, gw.port.getHost().port, path)
        try:
            await assert_stalls(hub)
        finally:
            sock.close()
        resumed_from = hub.offset
        await wait_for(lambda: hub.offset > resumed_from + 1024 * 1024, what="output to resume")
        await gw.request("DELETE", f"/v1/sessions/{created['session_id']}")
    finally:
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_more_sessions_than_one_connection_carries(tmp_path, fleet):
    """Beyond max_sessions_per_connection (sshd's MaxSessions), sessions go over a second connection."""
    nodes = entries(fleet)
    nodes[0]["ssh"]["max_sessions_per_connection"] = 2
    gw = await start_gateway(tmp_path, [nodes[0]])
    try:
        created = [await gw.create(token=f"many-{i}") for i in range(3)]
        connector = gw.parts.inventory.connector("fog-a")
        assert sorted(connector._channels.values()) == [1, 2]
        for i, c in enumerate(created):
            ws = await gw.attach(c)
            await in_thread(ws.type, f"echo conn-{i}-$((1+1))\n")
            await in_thread(ws.read_until, f"conn-{i}-2".encode())
    finally:
        await gw.stop()
