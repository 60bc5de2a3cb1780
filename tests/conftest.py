import os
import signal
import time

import pytest
import pytest_twisted

from support import RUN_ID, RUN_MARK, Gateway


def shells_left() -> list[int]:
    """Processes carrying this run's mark in their environment."""
    mark = f"{RUN_MARK}={RUN_ID}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    with open(f"/proc/{name}/stat", "rb") as s:
                        if s.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                            found.append(int(name))
        except OSError:
            pass
    return found


@pytest.fixture(scope="session", autouse=True)
def no_shell_outlives_the_suite():
    """After the whole suite, no shell it started may still run (killed, then reported)."""
    yield
    deadline = time.monotonic() + 5
    while shells_left() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = shells_left()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"shells left running by the suite: {left}"


@pytest_twisted.async_yield_fixture
async def make_gateway(tmp_path):
    """Start gateways (Gateway's arguments) for a test; every one is stopped at its end."""
    started = []

    def make(**kwargs) -> Gateway:
        gw = Gateway(tmp_path, **kwargs)
        gw.start()
        started.append(gw)
        return gw

    try:
        yield make
    finally:
        for gw in reversed(started):
            await gw.stop()


@pytest.fixture
def gateway(make_gateway):
    """A gateway on the test policy and two local nodes."""
    return make_gateway()
