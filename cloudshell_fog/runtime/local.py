"""
Shells on this host: C{spawnProcess(usePTY=True)} with an explicit
environment, a per-session working directory and the window size set before
the shell starts (STACK-NOTES section 3).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import struct
import termios

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from zope.interface import implementer

from cloudshell_fog.eager import write_now
from cloudshell_fog.runtime.interface import (
    IPtyStream,
    OutputDelivery,
    IRuntimeConnector,
    RuntimeUnavailable,
    TerminalSize,
)
from cloudshell_fog.runtime.isolation import Account, AccountError, Accounts, Isolation, Limits, launch_argv
from cloudshell_fog.runtime.procs import reap_orphans, session_processes, signal_processes

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE_SECONDS = 2.0


def exit_code_of(reason) -> int:
    """The shell's exit status: its code, or 128+N when signal N killed it."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return 0
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return 128 + value.signal
        if value.exitCode is not None:
            return value.exitCode
    return 1


def set_window_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@implementer(IPtyStream)
class LocalPtyStream(OutputDelivery, ProcessProtocol):
    """One local shell on a PTY; also its ProcessProtocol."""

    _log = Logger()

    def __init__(self, clock, workdir: str | None, marker: bytes, tty: str,
                 kill_grace: float = KILL_GRACE_SECONDS, on_clean=lambda stream: None, cgroup=None):
        self._clock, self._workdir, self._kill_grace = clock, workdir, kill_grace
        self._on_clean = on_clean
        self.cgroup = cgroup
        self.on_end = None  # called once when the shell is ended (containers remove themselves)
        self._marker, self._tty = marker, tty
        self._ended: list[Deferred] = []
        self._processes: dict[int, int] = {}
        self._kill_call = None
        self.pid: int | None = None
        self.exit_code: int | None = None

    # -- ProcessProtocol

    def connectionMade(self):
        self.pid = self.transport.pid

    def childDataReceived(self, childFD, data):
        self.deliver(data)

    def processExited(self, reason):
        # The leader is gone; whatever it left in its session ends too.
        self._end_all(signal.SIGHUP)

    def processEnded(self, reason):
        self.exit_code = exit_code_of(reason)
        if self._consumer is not None:
            self._consumer.exited(self.exit_code)
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(self.exit_code)

    # -- IPtyStream

    def write(self, data: bytes) -> None:
        if self.exit_code is None:
            self.transport.write(data)
            write_now(self.transport)

    def resize(self, cols: int, rows: int) -> None:
        if self.exit_code is None:
            set_window_size(self.transport.fileno(), cols, rows)

    def pauseProducing(self):
        if self.exit_code is None:
            self.transport.pauseProducing()

    def resumeProducing(self):
        if self.exit_code is None:
            self.transport.resumeProducing()

    def registerInputProducer(self, producer) -> None:
        self.transport.registerProducer(producer, True)

    def terminate(self, grace: float | None = None):
        if self.exit_code is not None:
            return succeed(self.exit_code)
        d = Deferred()
        self._ended.append(d)
        self._end_all(signal.SIGHUP, grace)
        return d

    # -- ending every process of the shell

    def _end_all(self, first_signal: int, grace: float | None = None) -> None:
        """Signal the shell's session and descendants, then SIGKILL what is left after a grace."""
        if self.pid is None:
            return
        if self.on_end is not None:
            on_end, self.on_end = self.on_end, None
            on_end()
        self._processes.update(session_processes(self.pid, self._marker, self._live_tty()))
        signal_processes(self._processes, first_signal)
        if self._kill_call is None or not self._kill_call.active():
            grace = self._kill_grace if grace is None else grace
            self._kill_call = self._clock.callLater(grace, self._kill_rest)

    def _live_tty(self) -> str | None:
        """Our terminal's path while we hold its master; after that the number may be reused."""
        return self._tty if self.exit_code is None else None

    def _kill_rest(self) -> None:
        self._processes.update(session_processes(self.pid, self._marker, self._live_tty()))
        left = signal_processes(self._processes, signal.SIGKILL)
        if self.cgroup is not None:
            left += self.cgroup.kill()  # nothing started in the session escapes its cgroup
        if left:
            self._log.info("killed {count} leftover processes of shell {pid}", count=left, pid=self.pid)
        reap_orphans()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        if self.cgroup is not None and not self.cgroup.remove():
            self._clock.callLater(1.0, self._remove_cgroup, 10)
        self._on_clean(self)

    def _remove_cgroup(self, tries: int) -> None:
        """A killed process can take a moment to leave its cgroup: try again, a bounded number of times."""
        self.cgroup.kill()
        if not self.cgroup.remove() and tries > 1:
            self._clock.callLater(1.0, self._remove_cgroup, tries - 1)

    def clean_now(self) -> None:
        """Kill leftovers and remove the work directory now, not after the grace (shutdown)."""
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_rest()


@implementer(IRuntimeConnector)
class LocalPtyConnector:
    """Starts shells on this host for one node of nodes.yaml."""

    _log = Logger()

    def __init__(self, node, reactor, clock=None, kill_grace: float = KILL_GRACE_SECONDS, isolation=None):
        self.node_id = node.id
        self._node = node
        self._isolation = isolation or Isolation.disabled()
        self._reactor = reactor
        self._clock = clock or reactor
        self._kill_grace = kill_grace
        self._streams: set[LocalPtyStream] = set()  # started and not yet cleaned up

    def supports(self, profile, image_ref=None) -> bool:
        """Local shells honour sandbox and network (bubblewrap), but run no images."""
        return image_ref is None

    def probe(self):
        """The host is there; the node is usable while its shell is (no network: no RTT)."""
        if os.access(self._node.shell[0], os.X_OK):
            return succeed(None)
        return fail(RuntimeUnavailable("shell-missing", f"{self._node.shell[0]} is not executable"))

    def stop(self) -> None:
        """Gateway shutdown, after every session has ended: finish each shell's cleanup now."""
        for stream in list(self._streams):
            stream.clean_now()

    def environment(self, session_id: str, workdir: str, account: Account | None = None) -> dict[str, str]:
        """The shell's whole environment: never a copy of the gateway's own."""
        user = (account or Accounts.current()).name
        env = {
            "PATH": DEFAULT_PATH,
            "LANG": "C.UTF-8",
            "USER": user,
            "LOGNAME": user,
            "SHELL": self._node.shell[0],
        }
        env.update(self._node.env)
        env.update(
            {
                "TERM": "xterm-256color",
                "COLORTERM": "truecolor",
                "HOME": workdir,
                "CLOUDSHELL_SESSION_ID": session_id,
                "CLOUDSHELL_NODE_ID": self.node_id,
            }
        )
        return env

    def allocate(self, session_id, profile, image_ref, size: TerminalSize = TerminalSize(), subject=None):
        try:
            return succeed(self._spawn(session_id, size, profile, subject))
        except RuntimeUnavailable as e:
            return fail(e)

    def _spawn(self, session_id: str, size: TerminalSize, profile=None, subject=None) -> LocalPtyStream:
        shell = self._node.shell
        if not os.access(shell[0], os.X_OK):
            raise RuntimeUnavailable(
                "shell-missing", f"The shell {shell[0]} does not exist or is not executable on node {self.node_id}."
            )
        isolation = self._isolation
        sandbox = profile is not None and profile.sandbox == "namespaces"
        if sandbox and isolation.sandbox_problem:
            raise RuntimeUnavailable("sandbox-unavailable",
                                     f"Node {self.node_id} cannot sandbox shells: {isolation.sandbox_problem}.")
        try:
            account = isolation.account_for(profile, subject)
        except AccountError as e:
            raise RuntimeUnavailable("account-failed", f"Cannot get an account for the shell: {e}.") from None
        persistent_home = account is not None and profile.run_as in (None, "per-subject")
        workdir = None
        if persistent_home:
            home = account.home
        else:
            home = workdir = self._make_workdir(session_id, account)
        cgroup = None
        if isolation.cgroups is not None and profile is not None:
            try:
                cgroup = isolation.cgroups.create(session_id, Limits(profile.memory_mb, profile.pids, profile.cpu))
            except OSError as e:
                if workdir:
                    shutil.rmtree(workdir, ignore_errors=True)
                raise RuntimeUnavailable("cgroup-failed", f"Cannot create the session's cgroup: {e.strerror}.") from None
        argv, launch_env = launch_argv(list(shell), account, home, cgroup, sandbox,
                                       profile is not None and profile.network == "none", isolation.hidden)
        env = self.environment(session_id, home, account)
        env.update(launch_env)
        return self._spawn_on_pty(session_id, argv, env, home, size, workdir, cgroup)

    def _make_workdir(self, session_id: str, account: Account | None = None) -> str:
        """The session's own directory under work_root (mode 0700, owned by C{account})."""
        workdir = os.path.join(self._node.work_root, session_id)
        try:
            os.makedirs(self._node.work_root, mode=0o711, exist_ok=True)
            os.chmod(self._node.work_root, 0o711)  # whatever the umask: accounts must traverse it
            os.mkdir(workdir, 0o700)
            if account is not None:
                os.chown(workdir, account.uid, account.gid)
        except OSError as e:
            raise RuntimeUnavailable(
                "workdir-failed", f"Cannot create the session directory on node {self.node_id}: {e.strerror}."
            ) from None
        return workdir

    def _spawn_on_pty(self, session_id, argv, env, cwd, size, workdir, cgroup) -> LocalPtyStream:
        """Start C{argv} on a new PTY of C{size}; clean C{workdir} and C{cgroup} up if that fails."""
        def undo():
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            if cgroup is not None:
                cgroup.remove()

        try:
            master, slave = os.openpty()
        except OSError as e:
            undo()
            if e.errno in (errno.ENOSPC, errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOENT):
                raise RuntimeUnavailable(
                    "pty-exhausted",
                    f"Node {self.node_id} has no pseudo-terminal or file descriptor free; try again later.",
                ) from None
            raise RuntimeUnavailable("pty-failed", f"Cannot open a pseudo-terminal: {e.strerror}.") from None
        try:
            tty = os.ttyname(slave)
            stream = LocalPtyStream(
                self._clock, workdir, f"CLOUDSHELL_SESSION_ID={session_id}".encode(), tty,
                self._kill_grace, on_clean=self._streams.discard, cgroup=cgroup,
            )
            set_window_size(master, size.cols, size.rows)
            self._reactor.spawnProcess(stream, argv[0], argv, env=env, path=cwd, usePTY=(master, slave, tty))
        except OSError as e:
            # With a caller-supplied PTY, Twisted closes neither end when the spawn fails.
            for fd in (master, slave):
                try:
                    os.close(fd)
                except OSError:
                    pass
            undo()
            raise RuntimeUnavailable("spawn-failed", f"Cannot start the shell: {e.strerror}.") from None
        self._streams.add(stream)
        return stream
