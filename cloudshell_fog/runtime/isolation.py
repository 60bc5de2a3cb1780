"""
Isolation of local shells: who a shell runs as, what it sees, what it may use.

- Accounts: as root, shells run as an unprivileged account: a fixed one
  (C{run_as: NAME}) or one per subject (C{run_as: per-subject}, created on
  demand with a stable uid in a configured range and a home under a configured
  root).  C{run_as: root} only when a profile says so (refused in production).
- Sandbox (C{sandbox: namespaces}): bubblewrap gives the shell new PID, mount,
  IPC and UTS namespaces (and a network namespace of its own with only
  loopback for C{network: none}): its own /proc, a private /tmp, the system
  read-only, its home writable, the gateway's files hidden.  bubblewrap rather
  than unshare(1): one command sets up the namespaces *and* the mounts, keeps
  the terminal as the controlling tty, reaps as PID 1 and dies with its parent.
- Limits: a cgroup per session (v2 where its controllers are available, else
  v1) with C{memory_mb}, C{pids} and C{cpu}; every process of the session
  starts inside it, so ending the session kills the cgroup and nothing escapes.

The launch line is C{/bin/sh -c <join cgroups; exec "$@"> bwrap ... setpriv ... shell}:
the shell's first process joins the cgroups as root before anything else
runs, bubblewrap builds the namespaces as root, and setpriv drops to the
account (no new privileges, no capabilities) just before the shell starts.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

_log = Logger()
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"


# ---------------------------------------------------------------- accounts


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @classmethod
    def of(cls, entry: pwd.struct_passwd) -> "Account":
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)


class AccountError(Exception):
    """An account could not be found or made; the message says why."""


class Accounts:
    """Finds or creates the accounts shells run as (creating needs root and useradd)."""

    def __init__(self, home_root: str, uid_min: int, uid_max: int):
        self.home_root, self.uid_min, self.uid_max = home_root, uid_min, uid_max

    @staticmethod
    def current() -> Account:
        try:
            return Account.of(pwd.getpwuid(os.getuid()))
        except KeyError:
            return Account(str(os.getuid()), os.getuid(), os.getgid(), "/", "/bin/sh")

    def fixed(self, name: str) -> Account:
        try:
            return Account.of(pwd.getpwnam(name))
        except KeyError:
            return self._create(name, None, f"cloudshell-fog shell account {name}")

    @staticmethod
    def subject_name(subject: str) -> str:
        """The account of a subject: stable, short, and a valid user name."""
        return "cs-" + hashlib.sha256(subject.encode("utf-8", "surrogateescape")).hexdigest()[:12]

    def for_subject(self, subject: str) -> Account:
        name = self.subject_name(subject)
        try:
            return Account.of(pwd.getpwnam(name))
        except KeyError:
            pass
        span = self.uid_max - self.uid_min + 1
        start = int(hashlib.sha256(subject.encode("utf-8", "surrogateescape")).hexdigest()[:12], 16) % span
        for step in range(span):  # stable: the same subject hashes to the same first choice
            uid = self.uid_min + (start + step) % span
            try:
                pwd.getpwuid(uid)
            except KeyError:
                try:
                    grp.getgrgid(uid)
                    continue  # a group already has that number
                except KeyError:
                    return self._create(name, uid, "cloudshell-fog subject account")
        raise AccountError(f"no free uid left in {self.uid_min}-{self.uid_max} for a new account")

    def _create(self, name: str, uid: int | None, comment: str) -> Account:
        if os.geteuid() != 0:
            raise AccountError(f"account {name} does not exist, and only root can create it")
        home = os.path.join(self.home_root, name)
        os.makedirs(self.home_root, mode=0o755, exist_ok=True)
        os.chmod(self.home_root, 0o755)  # whatever the umask (systemd's UMask=0077): owners reach their homes
        command = ["useradd", "--user-group", "--create-home", "--home-dir", home, "--shell", "/bin/bash",
                   "--comment", comment]
        if uid is not None:
            command += ["--uid", str(uid)]
        command.append(name)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AccountError(f"useradd {name} could not run: {e}") from None
        if result.returncode != 0 and result.returncode != 9:  # 9: created meanwhile by another start
            raise AccountError(f"useradd {name} failed: {result.stderr.strip() or result.returncode}")
        os.chmod(home, 0o700)
        _log.info("created account {name} (uid {uid}) for shells", name=name, uid=pwd.getpwnam(name).pw_uid)
        return Account.of(pwd.getpwnam(name))


# ---------------------------------------------------------------- cgroups


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    pids: int | None
    cpu: float


class Cgroup:
    """One session's cgroup: a directory per hierarchy (one for v2)."""

    def __init__(self, directories: list[Path], kill_file: Path | None):
        self.directories, self._kill_file = directories, kill_file

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.directories]

    def pids(self) -> set[int]:
        found = set()
        for directory in self.directories:
            try:
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def kill(self) -> int:
        """SIGKILL every process in the cgroup; return how many were signalled."""
        if self._kill_file is not None:
            try:
                count = len(self.pids())
                self._kill_file.write_text("1")
                return count
            except OSError:
                pass
        count = 0
        for _ in range(5):  # a process forking while we kill: go round until empty
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    count += 1
                except ProcessLookupError:
                    pass
        return count

    def remove(self) -> bool:
        """Remove the cgroup once it is empty; return whether it is gone."""
        gone = True
        for directory in self.directories:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                gone = False
        return gone


class CgroupDriver:
    """Creates session cgroups below the gateway's own cgroup(s)."""

    version = 0

    def create(self, name: str, limits: Limits) -> Cgroup:
        raise NotImplementedError


def _own_cgroups() -> dict[str, str]:
    """controller (or "" for v2) -> the gateway's cgroup path within that hierarchy."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    return own


class CgroupV1(CgroupDriver):
    version = 1
    CONTROLLERS = ("memory", "pids", "cpu")

    def __init__(self, mounts: dict[str, Path]):
        self._bases = mounts  # controller -> our "cloudshell-fog" directory in that hierarchy

    @classmethod
    def detect(cls) -> "CgroupV1 | None":
        own, bases = _own_cgroups(), {}
        for controller in cls.CONTROLLERS:
            mount = Path("/sys/fs/cgroup") / controller
            if not (mount / "cgroup.procs").exists():
                return None
            base = mount / own.get(controller, "/").lstrip("/") / "cloudshell-fog"
            try:
                base.mkdir(exist_ok=True)
            except OSError:
                return None
            bases[controller] = base
        return cls(bases)

    def create(self, name: str, limits: Limits) -> Cgroup:
        cgroup = Cgroup([base / name for base in self._bases.values()], None)
        try:
            for directory in cgroup.directories:
                directory.mkdir(exist_ok=True)
            self._limit(name, limits)
        except OSError:
            cgroup.remove()  # never leave half a cgroup behind
            raise
        return cgroup

    def _limit(self, name: str, limits: Limits) -> None:
        memory, pids, cpu = (self._bases[c] / name for c in self.CONTROLLERS)
        (memory / "memory.limit_in_bytes").write_text(str(limits.memory_mb * 2**20))
        try:  # swap counts too where the kernel accounts it, so the limit cannot be dodged by swapping
            (memory / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_mb * 2**20))
        except OSError:
            pass
        if limits.pids:
            (pids / "pids.max").write_text(str(limits.pids))
        period = 100_000
        (cpu / "cpu.cfs_period_us").write_text(str(period))
        (cpu / "cpu.cfs_quota_us").write_text(str(max(1000, int(limits.cpu * period))))


class CgroupV2(CgroupDriver):
    """
    cgroup v2: the gateway moves itself into a leaf (C{gateway}) so that its
    own cgroup may delegate controllers to C{sessions/<id>} (no internal
    processes rule), as systemd's Delegate= expects.
    """

    version = 2
    CONTROLLERS = ("memory", "pids", "cpu")

    def __init__(self, base: Path):
        self._base = base

    @classmethod
    def detect(cls) -> "CgroupV2 | None":
        own = _own_cgroups().get("")
        for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
            if not (mount / "cgroup.controllers").exists() or own is None:
                continue
            root = mount / own.lstrip("/")
            try:
                available = (root / "cgroup.controllers").read_text().split()
                if not all(c in available for c in cls.CONTROLLERS):
                    continue
                leaf = root / "gateway"
                leaf.mkdir(exist_ok=True)
                (leaf / "cgroup.procs").write_text(str(os.getpid()))
                (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in cls.CONTROLLERS))
                sessions = root / "sessions"
                sessions.mkdir(exist_ok=True)
                (sessions / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in cls.CONTROLLERS))
                return cls(sessions)
            except OSError:
                continue
        return None

    def create(self, name: str, limits: Limits) -> Cgroup:
        directory = self._base / name
        directory.mkdir(exist_ok=True)
        (directory / "memory.max").write_text(str(limits.memory_mb * 2**20))
        try:
            (directory / "memory.swap.max").write_text("0")
        except OSError:
            pass
        if limits.pids:
            (directory / "pids.max").write_text(str(limits.pids))
        period = 100_000
        (directory / "cpu.max").write_text(f"{max(1000, int(limits.cpu * period))} {period}")
        kill = directory / "cgroup.kill"
        return Cgroup([directory], kill if kill.exists() else None)


def detect_cgroups() -> CgroupDriver | None:
    """The cgroup driver this host allows us, v2 first; None when no cgroup is writable."""
    if os.geteuid() != 0:
        return None
    return CgroupV2.detect() or CgroupV1.detect()


def sandbox_works() -> str | None:
    """None when bubblewrap can build a sandbox here, else why not."""
    if not os.access(BWRAP, os.X_OK):
        return f"bubblewrap is not installed ({BWRAP})"
    try:
        result = subprocess.run([BWRAP, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                                 "--proc", "/proc", "--dev", "/dev", "true"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap did not run: {e}"
    return None if result.returncode == 0 else f"bubblewrap failed: {result.stderr.strip()[:200]}"


# ---------------------------------------------------------------- the launch line

JOIN_AND_EXEC = 'for f in $CLOUDSHELL_CGROUP_PROCS; do echo $$ > "$f" || exit 126; done; ' \
                'unset CLOUDSHELL_CGROUP_PROCS; exec "$@"'


def launch_argv(shell: list[str], account: Account | None, home: str, cgroup: Cgroup | None,
                sandbox: bool, network_none: bool, hidden: list[str]) -> tuple[list[str], dict]:
    """
    The argv that starts C{shell} isolated, and extra environment for it.

    @param account: the account to switch to, or None to stay the gateway's user.
    @param hidden: directories of the gateway (config, state, keys) that the
        sandbox covers with empty ones.
    """
    argv, env = list(shell), {}
    if account is not None:
        argv = [SETPRIV, f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups",
                "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--", *argv]
    if sandbox:
        box = [BWRAP, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
               "--hostname", "cloudshell", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--tmpfs", "/run"]
        if network_none:
            box.append("--unshare-net")
        for directory in hidden:
            if directory not in ("/", "") and not (home + "/").startswith(directory.rstrip("/") + "/"):
                box += ["--tmpfs", directory]
        box += ["--bind", home, home, "--chdir", home, "--"]
        argv = box + argv
    if cgroup is not None:
        env["CLOUDSHELL_CGROUP_PROCS"] = " ".join(cgroup.procs_files)
        argv = ["/bin/sh", "-c", JOIN_AND_EXEC, "cloudshell-launch", *argv]
    return argv, env


class Isolation:
    """The local connector's isolation settings, decided once at start."""

    def __init__(self, accounts: Accounts, cgroups: CgroupDriver | None, sandbox_problem: str | None,
                 hidden: list[str]):
        self.accounts, self.cgroups = accounts, cgroups
        self.sandbox_problem, self.hidden = sandbox_problem, hidden
        self.root = os.geteuid() == 0

    @classmethod
    def disabled(cls) -> "Isolation":
        """No accounts, sandbox or limits: shells run as the gateway's user (tests of other parts)."""
        isolation = cls(Accounts("/nonexistent", 1, 1), None, "isolation disabled", [])
        isolation.root = False
        return isolation

    def account_for(self, profile, subject: str | None) -> Account | None:
        """The account a profile's shell runs as; None: the gateway's own user."""
        if not self.root or profile is None or profile.run_as == "root":
            return None
        if profile.run_as in (None, "per-subject"):
            return self.accounts.for_subject(subject or "anonymous")
        return self.accounts.fixed(profile.run_as)
