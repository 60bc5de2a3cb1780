"""
Finding and ending every process of a shell.

A shell spawned on a PTY leads its own session (setsid), so its jobs share
its session id even when they run in their own process groups.  Processes
that left the session (C{setsid cmd &}) still hold the terminal, carry the
session's environment marker, or descend from one that does
(L{session_processes}).  The gateway is a child subreaper, so orphans of a
shell are re-parented to it instead of init, and L{reap_orphans} collects
them.  (Resource limits by cgroup come with the
isolation work; this is what a plain process can do.)
"""

from __future__ import annotations

import ctypes
import os

from twisted.internet import process as _twisted_process
from twisted.logger import Logger

log = Logger()

PR_SET_CHILD_SUBREAPER = 36


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """C{(state, ppid, session, starttime)} of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5); ppid is 4, session 6, starttime 22.
    return fields[0].decode(), int(fields[1]), int(fields[3]), int(fields[19])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a file: the same path in another mount namespace is another file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _holds(pid: int, marker: bytes | None, tty: str | None, tty_id: tuple[int, int] | None) -> bool:
    """True when the process carries C{marker} in its environment or has our terminal open."""
    if marker is not None:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    return True
        except OSError:
            pass
    if tty is not None:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = f"/proc/{pid}/fd/{fd}"
                # Every container and sandbox has its own devpts where "/dev/pts/0" names another
                # terminal: a matching name must also be the same file.
                if os.readlink(link) == tty and file_identity(link) == tty_id:
                    return True
        except OSError:
            pass
    return False


def session_processes(leader: int, marker: bytes | None = None, tty: str | None = None) -> dict[int, int]:
    """
    Every live process of a shell, mapped to its start time (to guard
    against pid reuse): the session led by C{leader}; every process whose
    environment holds C{marker} (C{NAME=value}, inherited by everything the
    shell starts unless it scrubs its environment); every process holding the
    terminal C{tty} open (C{setsid cmd &} leaves the session but keeps the
    terminal); and every descendant of those.
    """
    me = os.getpid()
    table = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st is not None and st[0] != "Z" and pid != me:
            table[pid] = st
    tty_id = file_identity(tty) if tty is not None else None
    found = {
        pid for pid, st in table.items()
        if pid == leader or st[2] == leader or _holds(pid, marker, tty, tty_id)
    }
    grew = True
    while grew:
        grew = False
        for pid, st in table.items():
            if pid not in found and st[1] in found:
                found.add(pid)
                grew = True
    return {pid: table[pid][3] for pid in found}


def signal_processes(processes: dict[int, int], sig: int) -> int:
    """Send C{sig} to each process still alive with the same start time; return how many."""
    sent = 0
    for pid, started in processes.items():
        st = _stat(pid)
        if st is None or st[3] != started or st[0] == "Z":
            continue
        try:
            os.kill(pid, sig)
            sent += 1
        except ProcessLookupError:
            pass
        except PermissionError:
            log.warn("cannot signal process {pid}: permission denied", pid=pid)
    return sent


def become_subreaper() -> bool:
    """Make orphans of our shells our children (Linux); return whether it worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans() -> int:
    """
    Collect exited children that Twisted does not track (orphans of shells
    re-parented to us); return how many were reaped.
    """
    me, reaped = os.getpid(), 0
    for pid in _all_pids():
        st = _stat(pid)
        if st is None or st[1] != me or st[0] != "Z":
            continue
        if pid in _twisted_process.reapProcessHandlers:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
        except ChildProcessError:
            pass
    return reaped

