"""
Isolation as root: each boundary is shown by a test that fails if the
mechanism is removed.  Skipped only where the machine cannot do it, saying why.
"""

import os
import socket
import time

import pytest
import pytest_twisted

from cloudshell_fog.runtime.isolation import Accounts
from support import WORK_ROOT, Gateway, in_thread, node

ROOT = os.geteuid() == 0


def machine_can_sandbox() -> str | None:
    """An independent look at the machine (not the gateway's own detection): can bwrap run?"""
    import shutil
    import subprocess

    if not shutil.which("bwrap"):
        return "bubblewrap is not installed"
    probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-pid", "--proc", "/proc", "true"],
                           capture_output=True, timeout=20)
    return None if probe.returncode == 0 else "bubblewrap cannot create namespaces here"


def machine_has_cgroups() -> bool:
    """An independent look: is there a writable memory and pids cgroup (v1) or a v2 tree with them?"""
    v2 = "/sys/fs/cgroup/cgroup.controllers"
    if os.path.exists(v2) and {"memory", "pids"} <= set(open(v2).read().split()):
        return True
    for controller in ("memory", "pids"):
        probe = f"/sys/fs/cgroup/{controller}/cloudshell-fog-probe-{os.getpid()}"
        try:
            os.mkdir(probe)
            os.rmdir(probe)
        except OSError:
            return False
    return True


SANDBOX = machine_can_sandbox() if ROOT else "not root"
CGROUPS = machine_has_cgroups() if ROOT else False
pytestmark = pytest.mark.skipif(not ROOT, reason="isolation needs a gateway running as root")

POLICY = {
    "profiles": {
        # per-subject accounts, sandboxed, no network, small limits
        "isolated": {"max_ttl_seconds": 600, "run_as": "per-subject", "sandbox": "namespaces",
                     "network": "none", "memory_mb": 64, "pids": 40, "cpu": 0.5},
        "plain": {"max_ttl_seconds": 600, "run_as": "per-subject", "memory_mb": 256},
    },
    "quotas": {"max_sessions_per_subject": 5},
}


@pytest_twisted.async_yield_fixture
async def secured(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x" * 40)
    secret.chmod(0o600)
    gw = Gateway(tmp_path, policy=POLICY, nodes=[node("fog-local", "fog", work_root=WORK_ROOT)],
                 env={"SESSION_TOKEN_SECRET_FILE": str(secret), "SESSION_TOKEN_SECRET": ""})
    gw.secret_file = secret
    gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def shell(gw, profile, token="isolated-user"):
    created = await gw.create(token=token, profile=profile)
    return created, await gw.attach(created)


async def run(ws, command: str, marker: str, seconds: float = 10) -> str:
    """The output of C{command} alone (between markers that only appear once evaluated)."""
    start = len(ws.output)
    await in_thread(ws.type, f"echo {marker}-$((0)); {command}; echo {marker}-$((1+1))\n")
    out = (await in_thread(ws.read_until, f"{marker}-2".encode(), seconds, seconds=seconds))[start:]
    text = out.decode(errors="replace").replace("\r\n", "\n")
    return text.split(f"{marker}-0\n", 1)[-1].rsplit(f"{marker}-2", 1)[0]


def test_the_gateway_uses_what_the_machine_offers(secured):
    """Where the machine has cgroups and bubblewrap, the gateway detected and uses them (no silent skip)."""
    isolation = secured.parts.inventory.connectors()[0]._isolation
    assert isolation.root
    assert (isolation.cgroups is not None) == CGROUPS
    assert (isolation.sandbox_problem is None) == (SANDBOX is None)


@pytest_twisted.ensureDeferred
async def test_shells_run_as_their_subjects_account_not_root(secured):
    """A shell's uid is not 0, and two subjects get two different accounts."""
    _, a = await shell(secured, "plain", "subject-a")
    _, b = await shell(secured, "plain", "subject-b")
    out_a = await run(a, "id -u; id -un", "ida")
    out_b = await run(b, "id -u; id -un", "idb")
    name_a, name_b = Accounts.subject_name("dev:" + _sub("subject-a")), Accounts.subject_name("dev:" + _sub("subject-b"))
    assert name_a in out_a and name_b in out_b and name_a != name_b
    assert out_a.split()[0] != "0" and out_b.split()[0] != "0"


def _sub(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()[:16]


@pytest_twisted.ensureDeferred
async def test_gateway_secrets_and_state_are_out_of_reach(secured):
    """Neither the token secret file nor the state database can be read from a shell."""
    _, ws = await shell(secured, "plain")
    out = await run(ws, f"cat {secured.secret_file} {secured.config.state_db} >/dev/null 2>&1; echo rc=$?", "cat")
    assert "rc=1" in out
    _, boxed = await shell(secured, "isolated")
    out = await run(boxed, f"ls {secured.secret_file.parent} 2>&1 | wc -l; cat {secured.secret_file} 2>&1", "box")
    assert "x" * 40 not in out


@pytest.mark.skipif(SANDBOX is not None, reason=f"no sandbox here: {SANDBOX}")
@pytest_twisted.ensureDeferred
async def test_sandboxed_shell_sees_only_its_own_processes(secured):
    """ps in a sandboxed session lists its own processes only, not the host's or a neighbour's."""
    _, neighbour = await shell(secured, "plain", "neighbour")
    await run(neighbour, "sleep 4455 & true", "bg")
    _, ws = await shell(secured, "isolated")
    out = await run(ws, "ps -e -o comm=; hostname", "ps")
    names = out.split()
    assert "sleep" not in names and "twistd" not in names and "python" not in " ".join(names)
    assert names[-1] == "cloudshell"  # its own UTS namespace
    assert len(names) < 10, names  # bwrap, bash, ps: its own PID namespace


@pytest.mark.skipif(SANDBOX is not None, reason=f"no sandbox here: {SANDBOX}")
@pytest_twisted.ensureDeferred
async def test_network_none_cannot_reach_the_host(secured):
    """With network: none, a TCP connection to a listener on the host's loopback fails."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        _, ws = await shell(secured, "isolated")
        out = await run(ws, f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo CONNECTED || echo REFUSED",
                        "net")
        assert "REFUSED" in out and "CONNECTED\r" not in out
        _, plain = await shell(secured, "plain", "other")
        out = await run(plain, f"(exec 3<>/dev/tcp/127.0.0.1/{port}) && echo CONNECTED", "net2")
        assert "CONNECTED" in out  # the same test passes without the sandbox: the test can fail
    finally:
        listener.close()


@pytest.mark.skipif(not CGROUPS, reason="no writable cgroup here")
@pytest_twisted.ensureDeferred
async def test_memory_hog_dies_at_its_limit_while_the_neighbour_echoes(secured):
    """A process allocating past memory_mb is killed by the OOM killer; another session keeps working."""
    _, neighbour = await shell(secured, "plain", "calm-neighbour")
    _, hog = await shell(secured, "isolated", "hungry")
    # ulimit -v is a safety net in case the cgroup limit were missing: the test then fails, not the host.
    out = await run(hog, "(ulimit -v 2000000; tail /dev/zero); echo status=$?", "hog", seconds=30)
    assert "status=137" in out  # SIGKILL from the OOM killer at 64 MB, not ulimit's error at 2 GB
    assert "memory exhausted" not in out
    assert "alive" in await run(neighbour, "echo alive", "n")


@pytest.mark.skipif(not CGROUPS, reason="no writable cgroup here")
@pytest_twisted.ensureDeferred
async def test_fork_bomb_stops_at_pids(secured):
    """Forking past pids fails with EAGAIN; the host and a neighbour stay responsive."""
    _, neighbour = await shell(secured, "plain", "patient-neighbour")
    _, bomb = await shell(secured, "isolated", "bomber")
    # A forker that does not retry (bash retries a failed fork for seconds): children sleep, the parent counts.
    forker = ("/usr/bin/python3 -c 'import os, time\n"
              "n = 0\n"
              "try:\n"
              "    for i in range(100):\n"
              "        if os.fork() == 0:\n"
              "            time.sleep(300); os._exit(0)\n"
              "        n += 1\n"
              "except OSError as e:\n"
              "    print(\"fork-failed\", e.errno)\n"
              "print(\"forked\", n)'")
    out = await run(bomb, forker, "bomb", seconds=30)
    assert "fork-failed 11" in out  # EAGAIN at the pids limit
    assert int(out.split("forked")[-1].split()[0]) < 40
    assert "fine" in await run(neighbour, "echo fine", "n2")


@pytest.mark.skipif(not CGROUPS, reason="no writable cgroup here")
@pytest_twisted.ensureDeferred
async def test_terminate_leaves_nothing_in_the_cgroup(secured):
    """After DELETE no process of the session is alive, by the cgroup and by /proc."""
    created, ws = await shell(secured, "plain", "leaver")
    await run(ws, "setsid sleep 6611 & nohup sleep 6612 >/dev/null 2>&1 & disown -a", "bg")
    stream = secured.parts.sessions._sessions[created["session_id"]].stream
    cgroup = stream.cgroup
    assert len(cgroup.pids()) >= 3
    await secured.request("DELETE", f"/v1/sessions/{created['session_id']}", token="leaver")
    deadline = time.monotonic() + 8
    while (cgroup.pids() or any(d.exists() for d in cgroup.directories)) and time.monotonic() < deadline:
        await in_thread(time.sleep, 0.1)
    assert cgroup.pids() == set()
    assert not any(d.exists() for d in cgroup.directories)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                assert b"sleep\x00661" not in open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                pass
