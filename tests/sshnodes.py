"""
Real fog and cloud nodes for the tests: each an OpenSSH server in its own
network namespace, reached over its own veth pair at 10.231.N.2, so that
"unreachable" can be a link going down.

Safety (DEVELOPERS.md): before anything connects to 10.231.N.0/30, an
`unreachable` route for the subnet is added in the root namespace behind the
veth's own route, and it is removed last, so a link that is down never sends
a packet out of the machine's default route.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from twisted.internet import protocol, reactor

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=check)


def namespaces_unavailable() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.access(SSHD, os.X_OK):
        return f"no OpenSSH server at {SSHD} (make test installs openssh-server)"
    name = f"csfprobe{os.getpid() % 10000}"
    result = _run("ip", "netns", "add", name, check=False)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    _run("ip", "netns", "del", name, check=False)
    return None


def keygen(path: Path) -> str:
    """An unencrypted ed25519 key pair at C{path}; return the public key line."""
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cloudshell-fog-test", "-f", str(path))
    return Path(f"{path}.pub").read_text().strip()


def _free_subnet() -> int:
    used = _run("ip", "-4", "route", "show").stdout
    for _ in range(200):
        n = random.randint(10, 250)
        if f"10.231.{n}.0/30" not in used and not Path(f"/run/netns/csf{n}").exists():
            return n
    raise RuntimeError("no free 10.231.N.0/30 subnet")


class SshNode:
    """One node: a namespace, a veth pair, an sshd accepting the gateway's key as root."""

    def __init__(self, directory: Path, client_public_key: str):
        self.n = _free_subnet()
        self.netns = f"csf{self.n}"
        self.host_if, self.node_if = f"csf{self.n}h", f"csf{self.n}n"
        self.subnet = f"10.231.{self.n}.0/30"
        self.address = f"10.231.{self.n}.2"
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host_key = keygen(directory / "host_ed25519")
        (directory / "authorized_keys").write_text(client_public_key + "\n")
        self.process = None
        self._steps: list[tuple[str, ...]] = []  # teardown commands, run in reverse

    def start(self) -> "SshNode":
        # The guard route first, removed last: a down link must never leak to the default route.
        self._do(("ip", "route", "add", "unreachable", self.subnet, "metric", "4000"),
                 ("ip", "route", "del", "unreachable", self.subnet, "metric", "4000"))
        self._do(("ip", "netns", "add", self.netns), ("ip", "netns", "del", self.netns))
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if)
        _run("ip", "link", "set", self.node_if, "netns", self.netns)
        _run("ip", "addr", "add", f"10.231.{self.n}.1/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run("ip", "-n", self.netns, "addr", "add", f"{self.address}/30", "dev", self.node_if)
        _run("ip", "-n", self.netns, "link", "set", self.node_if, "up")
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")
        config = self.directory / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {self.address}:22",
            f"HostKey {self.directory / 'host_ed25519'}",
            f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
            "PidFile none", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PrintMotd no",
            "PrintLastLog no", "LogLevel ERROR", "ClientAliveInterval 0", "",
        ]))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, SSHD, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL, stderr=open(self.directory / "sshd.log", "w"), start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((self.address, 22), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"sshd did not start: {(self.directory / 'sshd.log').read_text()}")
                time.sleep(0.05)

    def _do(self, command: tuple[str, ...], undo: tuple[str, ...]) -> None:
        _run(*command)
        self._steps.append(undo)

    def link(self, up: bool) -> None:
        """Take the node's link down (unreachable: the guard route answers) or bring it back."""
        _run("ip", "link", "set", self.host_if, "up" if up else "down")

    def processes(self, marker: str) -> list[str]:
        """Command lines in the node's namespace containing C{marker}."""
        out = _run("ip", "netns", "exec", self.netns, "pgrep", "-af", marker, check=False).stdout
        return [line for line in out.splitlines() if "pgrep" not in line]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)
        # Whatever sshd started in the namespace (shells of sessions) ends with it.
        pids = _run("ip", "netns", "pids", self.netns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        while self._steps:
            _run(*self._steps.pop(), check=False)

    def node_entry(self, node_id: str, region: str, tier: str, key_file: Path, **over) -> dict:
        """This node as a nodes.yaml entry."""
        entry = {"id": node_id, "region": region, "tier": tier, "connector": "ssh", "capacity": 20,
                 "ssh": {"host": self.address, "port": 22, "user": "root", "key_file": str(key_file),
                         "host_key": self.host_key, "connect_timeout": 2}}
        entry["ssh"].update(over.pop("ssh", {}))
        entry.update(over)
        return entry


class _Pipe(protocol.Protocol):
    """One direction's sink: everything it receives goes to the peer after a delay."""

    def __init__(self, delay: float):
        self.delay, self.peer, self.backlog = delay, None, []

    def dataReceived(self, data):
        reactor.callLater(self.delay, self._forward, data)

    def _forward(self, data):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.backlog.append(data)

    def connectionLost(self, reason):
        if self.peer is not None and self.peer.transport is not None:
            reactor.callLater(self.delay, self.peer.transport.loseConnection)


class DelayingRelay(protocol.Factory):
    """A TCP relay on loopback that delays every chunk by C{delay} seconds each way (no netem here)."""

    def __init__(self, host: str, port: int, delay: float):
        self.host, self.port, self.delay = host, port, delay
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.address = ("127.0.0.1", self.listening.getHost().port)

    def buildProtocol(self, addr):
        inbound = _Pipe(self.delay)
        outbound = _Pipe(self.delay)
        inbound.peer, outbound.peer = outbound, inbound

        def connected(proto):
            for data in inbound.backlog:
                proto.transport.write(data)
            inbound.backlog.clear()

        factory = protocol.ClientFactory()
        factory.protocol = lambda: outbound
        reactor.connectTCP(self.host, self.port, factory, timeout=5)
        outbound.connectionMade = lambda: connected(outbound)
        return inbound

    def stop(self):
        return self.listening.stopListening()
