"""
Sessions in OCI containers with podman: a tiny busybox image built and
imported here, used by digest, with the profile's limits; no container
outlives its session.  Skipped only when podman cannot run at all.
"""

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted

from cloudshell_fog.runtime.container import PODMAN, LABEL, session_containers
from support import RUN_ID, WORK_ROOT, Gateway, in_thread

BUSYBOX = shutil.which("busybox")


def _podman(*args, timeout=60):
    return subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout)


def _cannot_run() -> str | None:
    if not shutil.which("podman"):
        return "podman is not installed (make test installs it)"
    if not BUSYBOX:
        return "busybox is not installed (make test installs busybox-static)"
    if _podman("--runtime", "runc", "info").returncode != 0:
        return "podman with runc does not work here"
    return None


WHY = _cannot_run()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"container tests skipped: {WHY}")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A busybox root filesystem with a marker, imported; its reference pinned by digest."""
    root = tmp_path_factory.mktemp("rootfs")
    for d in ("bin", "etc", "tmp", "home"):
        (root / d).mkdir()
    shutil.copy(BUSYBOX, root / "bin/busybox")
    for applet in ("sh", "cat", "echo", "stty", "ls", "id", "sleep", "tail", "head", "hostname", "true"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/os-release").write_text('NAME="cloudshell-test-image"\n')
    name = f"localhost/cloudshell-test-{RUN_ID[:8]}:1"
    tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, timeout=60, check=True)
    subprocess.run([PODMAN, "import", "-", name], input=tar.stdout, capture_output=True, timeout=120, check=True)
    digest = _podman("image", "inspect", "--format", "{{.Digest}}", name).stdout.strip()
    try:
        yield name.rsplit(":", 1)[0] + "@" + digest, name
    finally:
        _podman("rmi", "-f", name)


def policy(image_ref):
    return {"profiles": {
        "box": {"max_ttl_seconds": 600, "image_ref": image_ref, "memory_mb": 64, "pids": 64, "cpu": 0.5},
        "offline": {"max_ttl_seconds": 600, "image_ref": image_ref, "network": "none", "sandbox": "namespaces"},
    }, "quotas": {"max_sessions_per_subject": 5}}


def container_node():
    return {"id": "box-local", "region": "local", "tier": "fog", "connector": "container", "capacity": 10,
            "work_root": WORK_ROOT, "shell": ["/bin/sh"], "container": {"runtime": "runc", "pull_timeout": 5}}


@pytest_twisted.async_yield_fixture
async def boxes(tmp_path, image):
    gw = Gateway(tmp_path, policy=policy(image[0]), nodes=[container_node()])
    gw.start()
    try:
        yield gw
    finally:
        await gw.stop()
        await in_thread(_wait_no_containers, seconds=30)


def _ours() -> list[str]:
    return [name for name, _ in session_containers()]


def _wait_listed(session_id, seconds=10.0) -> bool:
    """podman ps lists a new -it container a moment after its shell already runs: wait for it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if session_id in [s for _, s in session_containers()]:
            return True
        time.sleep(0.1)
    return False


def _wait_no_containers(seconds=20.0):
    deadline = time.monotonic() + seconds
    while _ours() and time.monotonic() < deadline:
        time.sleep(0.2)
    return _ours()


@pytest_twisted.ensureDeferred
async def test_shell_runs_in_the_pinned_image(boxes, image):
    """The shell runs inside exactly that image: marker file, resize, exit code; the audit names the digest."""
    created = await boxes.create(profile="box")
    ws = await boxes.attach(created)
    await in_thread(ws.resize, 91, 27)
    await in_thread(ws.type, "cat /etc/os-release; stty size\n")
    await in_thread(ws.read_until, b"27 91", 20, seconds=20)
    assert b"cloudshell-test-image" in bytes(ws.output)
    assert await in_thread(_wait_listed, created["session_id"], seconds=12)  # the container is there
    await in_thread(ws.type, "exit 5\n")
    assert (await in_thread(ws.wait_exit, 20, seconds=20))[0] == 5
    allocated = [e for e in boxes.audit_events() if e["event"] == "runtime.allocated"][-1]
    assert allocated["details"]["image_digest"] == image[0].rsplit("@", 1)[1]
    assert await in_thread(_wait_no_containers) == []


@pytest_twisted.ensureDeferred
async def test_memory_limit_kills_a_hog_in_its_container(boxes):
    """A hog inside the container dies at memory_mb while a neighbour container keeps working."""
    neighbour = await boxes.attach(await boxes.create(profile="box", token="n"))
    hog = await boxes.attach(await boxes.create(profile="box", token="h"))
    await in_thread(hog.type, "(ulimit -v 2000000; tail /dev/zero); echo status=$?\n")
    await in_thread(hog.read_until, b"status=137", 30, seconds=30)
    await in_thread(neighbour.type, "echo still-$((2+2))\n")
    await in_thread(neighbour.read_until, b"still-4", 20, seconds=20)


@pytest_twisted.ensureDeferred
async def test_delete_and_ttl_leave_no_container(boxes):
    """DELETE and the TTL both remove the container; nothing is left in podman ps -a."""
    deleted = await boxes.create(profile="box", token="d")
    ws = await boxes.attach(deleted)
    await in_thread(ws.type, "echo up-$((1+2))\n")
    await in_thread(ws.read_until, b"up-3", 20, seconds=20)
    expiring = await boxes.create(profile="box", token="t", ttl_seconds=30)
    for created in (deleted, expiring):  # both containers exist, so "none left" below means something
        assert await in_thread(_wait_listed, created["session_id"], seconds=12)
    await boxes.request("DELETE", f"/v1/sessions/{deleted['session_id']}", token="d")
    boxes.clock.advance(31)
    assert await in_thread(_wait_no_containers, seconds=30) == []
    got = await boxes.request("GET", f"/v1/sessions/{expiring['session_id']}", token="t")
    assert got.json["termination"]["reason"] == "ttl"


@pytest_twisted.ensureDeferred
async def test_unknown_digest_fails_fast_with_the_image_named(boxes, image):
    """An image that is not on the node (and may not be pulled) fails at once, naming the image."""
    missing = image[0].rsplit("@", 1)[0] + "@sha256:" + "0" * 64
    started = time.monotonic()
    response = await boxes.request("POST", "/v1/sessions", {"profile": "box", "ttl_seconds": 60, "image_ref": missing})
    assert response.status == 500 and response.json["error"]["code"] == "runtime_failed"
    assert missing in response.json["error"]["message"]
    assert time.monotonic() - started < 10


@pytest_twisted.ensureDeferred
async def test_restart_removes_containers_of_sessions_that_were_running(tmp_path, image):
    """A new gateway on the state of one that died removes its containers, and GET tells the truth."""
    from twisted.internet import reactor

    from cloudshell_fog.service import SessionsService

    gw = Gateway(tmp_path, policy=policy(image[0]), nodes=[container_node()])
    gw.start()
    again = None
    try:
        created = await gw.create(profile="box")
        ws = await gw.attach(created)
        await in_thread(ws.type, "echo alive\n")
        await in_thread(ws.read_until, b"alive", 20, seconds=20)
        assert await in_thread(_wait_listed, created["session_id"], seconds=12)
        # The first gateway is as good as dead: a second one starts on its state (what twistd runs at start).
        again = Gateway(tmp_path, policy=policy(image[0]), nodes=[container_node()])
        again.start()
        SessionsService(again.parts, 1.0, reactor).startService()
        assert await in_thread(_wait_no_containers) == []
        got = await again.request("GET", f"/v1/sessions/{created['session_id']}")
        assert got.json["termination"] == {"reason": "gateway-restart", "exit_code": None}
    finally:
        await gw.stop()
        if again is not None:
            await again.stop()


@pytest_twisted.ensureDeferred
async def test_container_node_is_probed_through_podman(boxes):
    """The prober asks podman; a runtime podman cannot use makes the node unhealthy."""
    await boxes.parts.prober.probe("box-local")
    state = boxes.parts.inventory.states()[0]
    assert state.healthy and state.failures == 0
    connector = boxes.parts.inventory.connector("box-local")
    connector._runtime = "no-such-runtime"
    for _ in range(2):
        await boxes.parts.prober.probe("box-local")
    assert not state.healthy
