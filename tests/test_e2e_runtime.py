"""Runtime failures end to end: failover between nodes, clear errors, and tokens kept out of every log."""

import errno
import os

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from cloudshell_fog.runtime.interface import RuntimeUnavailable, TerminalSize
from cloudshell_fog.runtime.local import LocalPtyConnector
from support import WORK_ROOT, Gateway, in_thread, node


def _shell(directory) -> str:
    path = directory / "shell"
    path.write_text("#!/bin/sh\nexec /bin/bash --noprofile --norc -i\n")
    path.chmod(0o755)
    return str(path)


@pytest_twisted.ensureDeferred
async def test_failover_to_cloud_when_fog_cannot_start_a_shell(tmp_path):
    """A fog node whose shell vanished fails over to the cloud node, and the reasons say so."""
    work = WORK_ROOT
    gw = Gateway(tmp_path, nodes=[node("fog-local", "fog", shell=[_shell(tmp_path)], work_root=work),
                                  node("cloud-local", "cloud", work_root=work)])
    gw.start()
    try:
        os.unlink(tmp_path / "shell")
        created = await gw.create()
        assert created["placement"]["node_id"] == "cloud-local"
        assert created["placement"]["reasons"] == [
            "failover:fog-local:shell-missing", "cloud-fallback", "healthy", "capacity-ok"]
        ws = await gw.attach(created)
        await in_thread(ws.type, "echo on-$CLOUDSHELL_NODE_ID\n")
        await in_thread(ws.read_until, b"on-cloud-local")
        failed = [e for e in gw.audit_events() if e["event"] == "runtime.allocate_failed"]
        assert failed[0]["details"] == {"node_id": "fog-local", "why": "shell-missing"}
    finally:
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_500_lists_every_node_failure(tmp_path):
    """When no node can start the shell, the 500 names each node's failure."""
    shell = _shell(tmp_path)
    gw = Gateway(tmp_path, nodes=[node("fog-a", "fog", shell=[shell], work_root=WORK_ROOT),
                                  node("cloud-b", "cloud", shell=[shell], work_root=WORK_ROOT)])
    gw.start()
    try:
        os.unlink(shell)
        response = await gw.request("POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 60})
        assert response.status == 500
        error = response.json["error"]
        assert error["code"] == "runtime_failed"
        assert "fog-a:" in error["message"] and "cloud-b:" in error["message"]
        assert (await gw.request("GET", "/v1/sessions")).json["sessions"] == []
    finally:
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_full_nodes_answer_500_no_capacity(tmp_path):
    """With every node at capacity, creation fails with no_capacity, and a freed slot is reused."""
    work = WORK_ROOT
    gw = Gateway(tmp_path, nodes=[node("only", "fog", capacity=1, work_root=work)])
    gw.start()
    try:
        first = await gw.create()
        response = await gw.request("POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 60})
        assert (response.status, response.json["error"]["code"]) == (500, "no_capacity")
        await gw.request("DELETE", f"/v1/sessions/{first['session_id']}")
        await gw.create()
    finally:
        await gw.stop()


def test_pty_exhaustion_is_a_clear_runtime_error(tmp_path, monkeypatch):
    """When the host has no PTY left, allocation fails with pty-exhausted, not a traceback."""
    from twisted.internet.task import Clock

    from cloudshell_fog.config import NodeConfig

    def no_pty():
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "openpty", no_pty)
    cfg = NodeConfig("n", "r", "fog", "local", 1, ("/bin/bash",), str(tmp_path))
    failures = []
    LocalPtyConnector(cfg, Clock()).allocate("sid", None, None, TerminalSize()).addErrback(failures.append)
    (failure,) = failures
    assert isinstance(failure.value, RuntimeUnavailable) and failure.value.why == "pty-exhausted"
    assert not os.path.exists(tmp_path / "sid")


@pytest_twisted.ensureDeferred
async def test_tokens_never_reach_the_logs(gateway):
    """Bearer and attach tokens, and stdin bytes, appear in no log event (access log included)."""
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        bearer = "bearer-secret-value-123"
        created = await gateway.create(token=bearer)
        token = created["attach"]["token"]
        ws = await gateway.attach(created)
        await in_thread(ws.type, "echo typed-secret-$((2+3))\n")
        await in_thread(ws.read_until, b"typed-secret-5")
        await in_thread(ws.close)
        refused = await gateway.request("GET", f"/v1/sessions/{created['session_id']}/pty?token={token}x",
                                        token=None)
        assert refused.status == 401
        again = await gateway.request("POST", f"/v1/sessions/{created['session_id']}/attach", token=bearer)
        await gateway.request("DELETE", f"/v1/sessions/{created['session_id']}", token=bearer)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    text = "\n".join(formatEvent(e) + repr(e) for e in seen)
    assert "/pty" in text  # the refused upgrade was logged, without its query
    for secret in (bearer, token, again.json["attach"]["token"], "typed-secret"):
        assert secret not in text
    audit = gateway.audit_path.read_text()
    for secret in (bearer, token, "typed-secret"):
        assert secret not in audit


@pytest_twisted.ensureDeferred
async def test_isolation_profiles_never_land_on_nodes_that_cannot_honour_them(tmp_path):
    """A network: none profile is not placed on an SSH node (whose isolation is its own)."""
    from support import POLICY

    policy = {**POLICY, "profiles": {**POLICY["profiles"], "offline": {
        "max_ttl_seconds": 60, "sandbox": "namespaces", "network": "none", "run_as": "cloudshell-test"}}}
    gw = Gateway(tmp_path, policy=policy, nodes=[node("fog-local", "fog", work_root=WORK_ROOT)])
    gw.start()
    try:
        ssh_like = gw.parts.inventory.connector("fog-local")
        ssh_like.supports = lambda profile, image_ref: profile.network == "host"  # as SshConnector answers
        response = await gw.request("POST", "/v1/sessions", {"profile": "offline", "ttl_seconds": 60})
        assert (response.status, response.json["error"]["code"]) == (500, "no_capacity")
        assert "isolation" in response.json["error"]["message"]
    finally:
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_no_pty_left_anywhere_is_503_with_retry_after(tmp_path, monkeypatch):
    """When every node is out of PTYs, creation fails fast with 503 pty_exhausted and Retry-After."""
    gw = Gateway(tmp_path)
    gw.start()

    def no_pty():
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        monkeypatch.setattr(os, "openpty", no_pty)
        response = await gw.request("POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 60})
        monkeypatch.undo()
        assert (response.status, response.json["error"]["code"]) == (503, "pty_exhausted")
        assert response.header("Retry-After") == "30"
        assert "fog-local" in response.json["error"]["message"] and "cloud-local" in response.json["error"]["message"]
    finally:
        await gw.stop()
