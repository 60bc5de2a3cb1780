#!/usr/bin/env python3
"""
Benchmark cloudshell-fog against terminado and a raw PTY.

Three systems run the same shell (bash --noprofile --norc -i, PS1='$ ',
120x40):

  raw        a PTY read directly by this process (the physical limit)
  terminado  bench/terminado_server.py (tornado + terminado UniqueTermManager)
  fog        the real gateway: twistd -n cloudshell-fog, driven through its API

Workloads: keystroke echo, bulk output, session start, and N idle sessions
(memory, plus echo probes while a neighbour streams).  See bench/README.md.

Run it through `make bench` (which builds bench/.venv); directly:
    bench/.venv/bin/python bench/run.py [--quick] [--only fog,terminado] ...
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import datetime
import fcntl
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
import traceback
from importlib import metadata
from pathlib import Path

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SHELL = ["/bin/bash", "--noprofile", "--norc", "-i"]
ROWS, COLS = 40, 120
PROMPT = b"$ "
FORBIDDEN_PORTS = {8080, 18080}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
BEARER = "bench-token"
CAT_COMMAND = b"stty raw -echo; exec cat\n"
ECHO_ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"
BULK_SENTINEL = b"\n__BULK_DONE__"
NEIGHBOUR_COMMAND = b"base64 -w 76 /dev/zero\n"
WS_OPTIONS = dict(
    compression=None,
    max_size=2**24,
    open_timeout=15,
    close_timeout=3,
    ping_interval=None,  # the client sends no pings: no load of its own on idle sessions
)
SYSTEMS = ("raw", "terminado", "fog")
LABELS = {"raw": "raw", "terminado": "terminado", "fog": "cloudshell-fog"}
WORKLOADS = ("echo", "bulk", "start", "concurrency")

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    pass


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    sys.stderr.write(f"[{stamp}] {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- /proc


def proc_stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat from field 3 (state) on, or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    st = proc_stat(pid)
    if st is None:
        return None
    return (int(st[11]) + int(st[12])) / CLK_TCK


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def descendants(pid: int) -> dict[int, int]:
    """Every descendant of PID (zombies included), mapped to its start time."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None:
                table[int(name)] = (int(st[1]), int(st[19]))
    found: dict[int, int] = {}
    frontier = {pid}
    while frontier:
        nxt = {p for p, (ppid, _) in table.items() if ppid in frontier and p not in found}
        for p in nxt:
            found[p] = table[p][1]
        frontier = nxt
    return found


def kill_recorded(processes: dict[int, int], sig: int) -> int:
    """Signal each recorded process still alive with the same start time."""
    sent = 0
    for pid, started in processes.items():
        st = proc_stat(pid)
        if st is None or int(st[19]) != started or st[0] == b"Z":
            continue
        try:
            os.kill(pid, sig)
            sent += 1
        except OSError:
            pass
    return sent


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in FORBIDDEN_PORTS:
            return port
    raise BenchError("no free port found")


def _pdeathsig():
    """In the child before exec: die with the benchmark (SIGKILL of run.py included)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _shell_child():
    """In a raw shell's child (after setsid): take the slave as the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    _prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)


# ---------------------------------------------------------------- cleanup


class Reaper:
    """Everything started is registered here and stopped at the end, whatever happens."""

    def __init__(self):
        self._items: dict[int, tuple[str, object]] = {}
        self._next = 0
        self.hurry = False  # interrupted: shorter grace periods

    def add(self, what: str, fn) -> int:
        self._next += 1
        self._items[self._next] = (what, fn)
        return self._next

    def remove(self, key: int) -> None:
        self._items.pop(key, None)

    def run_all(self) -> None:
        for key in sorted(self._items, reverse=True):
            what, fn = self._items.pop(key)
            try:
                fn()
            except Exception as e:  # keep cleaning
                log(f"cleanup of {what} failed: {e!r}")


REAPER = Reaper()


# ---------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary(values: list[float]) -> dict:
    v = sorted(values)
    if not v:
        return {"n": 0}
    return {
        "n": len(v),
        "min": v[0],
        "p50": percentile(v, 50),
        "p90": percentile(v, 90),
        "p99": percentile(v, 99),
        "max": v[-1],
        "mean": sum(v) / len(v),
    }


def median(values):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    return percentile(v, 50)


# ---------------------------------------------------------------- HTTP (fog API)


async def http_json(port: int, method: str, path: str, body=None, token: str | None = BEARER,
                    timeout: float = 15.0):
    """One HTTP/1.1 request on a fresh connection; returns (status, parsed JSON body or None)."""
    data = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
            f"Content-Length: {len(data)}"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    if body is not None:
        head.append("Content-Type: application/json")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
            raw = await reader.read()
        finally:
            writer.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise BenchError(f"bad HTTP response to {method} {path}: {raw[:200]!r}") from None
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        out, rest = b"", payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        payload = out
    parsed = None
    if payload:
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = payload.decode("utf-8", "replace")
    return status, parsed


# ---------------------------------------------------------------- sessions


class RawSession:
    """A shell on a PTY read directly by this process."""

    kind = "raw"

    def __init__(self, env: dict, cwd: str):
        master, slave = os.openpty()
        try:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
            self.proc = subprocess.Popen(
                SHELL, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                start_new_session=True, preexec_fn=_shell_child, close_fds=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.fd = master
        os.set_blocking(master, False)
        self._poll = select.poll()
        self._poll.register(master, select.POLLIN)
        self._closed = False
        self._reaper_key = REAPER.add(f"raw shell {self.proc.pid}", self.kill)

    def encode(self, data: bytes):
        return data

    async def send_encoded(self, data: bytes) -> None:
        self._write(data)

    async def send(self, data: bytes) -> None:
        self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 10
        while view:
            try:
                n = os.write(self.fd, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("raw PTY write blocked for 10 s") from None
                select.select([], [self.fd], [], 0.1)

    async def recv(self, timeout: float) -> bytes:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            if not self._poll.poll(max(0, timeout) * 1000):
                raise TimeoutError from None
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return b""
            except OSError:  # EIO: the shell is gone
                raise EOFError from None
        except OSError:
            raise EOFError from None
        if not data:
            raise EOFError
        return data

    async def recv_raw(self, timeout: float) -> int:
        return len(await self.recv(timeout))

    def kill(self) -> None:
        if self._closed:
            return
        self._closed = True
        REAPER.remove(self._reaper_key)
        tree = descendants(self.proc.pid)
        tree[self.proc.pid] = int((proc_stat(self.proc.pid) or [b"0"] * 20)[19])
        try:
            os.killpg(self.proc.pid, signal.SIGHUP)
        except OSError:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        kill_recorded(tree, signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"raw shell {self.proc.pid} did not end")

    async def close(self) -> None:
        self.kill()


class WsSession:
    """Common part of the two WebSocket systems."""

    kind = "ws"
    phases: dict | None = None  # seconds spent in each step of open()

    def __init__(self, ws):
        self.ws = ws

    async def send_encoded(self, message: str) -> None:
        await self.ws.send(message)

    async def send(self, data: bytes) -> None:
        await self.ws.send(self.encode(data))

    async def recv(self, timeout: float) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = self.decode(await self.ws.recv())
                    if data is not None:
                        return data
        except ConnectionClosed:
            raise EOFError from None

    async def recv_raw(self, timeout: float) -> int:
        """Next frame undecoded (neighbour streaming): its size in bytes."""
        try:
            async with asyncio.timeout(timeout):
                return len(await self.ws.recv(decode=False))
        except ConnectionClosed:
            raise EOFError from None

    async def _close_ws(self) -> None:
        try:
            async with asyncio.timeout(6):
                await self.ws.close()
        except (TimeoutError, OSError, ConnectionClosed):
            pass


class TerminadoSession(WsSession):
    def encode(self, data: bytes) -> str:
        return json.dumps(["stdin", data.decode("utf-8")])

    def decode(self, message) -> bytes | None:
        frame = json.loads(message)
        if frame[0] == "stdout":
            return frame[1].encode("utf-8")
        if frame[0] == "disconnect":
            raise EOFError
        return None

    async def close(self) -> None:
        await self._close_ws()


class FogSession(WsSession):
    def __init__(self, ws, system: "FogSystem", session_id: str):
        super().__init__(ws)
        self.system, self.session_id = system, session_id

    def encode(self, data: bytes) -> str:
        return '{"type":"stdin","data_b64":"%s"}' % base64.b64encode(data).decode("ascii")

    def decode(self, message) -> bytes | None:
        frame = json.loads(message)
        kind = frame.get("type")
        if kind == "stdout":
            return base64.b64decode(frame["data_b64"])
        if kind == "exit":
            raise EOFError
        return None

    async def close(self) -> None:
        await self._close_ws()
        await self.system.delete(self.session_id)


# ---------------------------------------------------------------- systems


class ServerProcess:
    """A server subprocess in its own session, stopped (and its tree killed) on cleanup."""

    def __init__(self, name: str, argv: list[str], env: dict, cwd: str, log_path: str, stdout=None):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else self._log, stderr=self._log,
            start_new_session=True, preexec_fn=_pdeathsig, close_fds=True,
        )
        self.pid = self.popen.pid
        self._key = REAPER.add(f"{name} server {self.pid}", self.stop)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            raise BenchError(f"the {self.name} server {how}; log tail:\n{self.log_tail(10)}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, wait (bounded), SIGKILL the group, then kill every leftover descendant."""
        REAPER.remove(self._key)
        if REAPER.hurry:
            grace = min(grace, 3.0)
        tree = descendants(self.pid) if self.alive() else {}
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} server did not stop in {grace:g} s; killing it")
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"{self.name} server {self.pid} survived SIGKILL?")
        left = kill_recorded(tree, signal.SIGKILL)
        if left:
            log(f"killed {left} leftover processes of the {self.name} server")
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()



def shell_env(home: str) -> dict:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
        "PS1": "$ ",
    }


class RawSystem:
    key = "raw"
    server = None

    def __init__(self, tmp: str):
        self.home = os.path.join(tmp, "raw-home")
        os.makedirs(self.home, exist_ok=True)
        self.env = shell_env(self.home)

    async def start(self):
        pass

    def stop(self):
        pass

    async def open(self) -> RawSession:
        return RawSession(self.env, self.home)


class TerminadoSystem:
    key = "terminado"
    nodelay = False  # --terminado-nodelay

    def __init__(self, tmp: str, tag: str = "main"):
        self.dir = os.path.join(tmp, f"terminado-{tag}")
        os.makedirs(self.dir, exist_ok=True)
        self.server: ServerProcess | None = None
        self.port = None

    async def start(self):
        env = {"PATH": shell_env("")["PATH"], "HOME": self.dir, "LANG": "C.UTF-8",
               "PYTHONUNBUFFERED": "1"}
        self.server = ServerProcess(
            "terminado", [sys.executable, str(BENCH_DIR / "terminado_server.py"), "--port", "0"]
            + (["--nodelay"] if self.nodelay else []),
            env, self.dir, os.path.join(self.dir, "server.log"), stdout=subprocess.PIPE,
        )
        fd = self.server.popen.stdout.fileno()
        deadline = time.monotonic() + 30
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not self.server.alive():
                raise BenchError("terminado server did not start:\n" + self.server.log_tail())
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 1024)
                if not chunk:
                    raise BenchError("terminado server exited:\n" + self.server.log_tail())
                line += chunk
        port = int(line.split()[1])
        if port in FORBIDDEN_PORTS:
            raise BenchError(f"terminado picked forbidden port {port}")
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/websocket"

    def stop(self):
        if self.server is not None:
            self.server.stop()
            self.server = None

    async def open(self) -> TerminadoSession:
        t0 = time.perf_counter()
        ws = await ws_connect(self.url, **WS_OPTIONS)
        session = TerminadoSession(ws)
        session.phases = {"ws_connect": time.perf_counter() - t0}
        await ws.send(json.dumps(["set_size", ROWS, COLS]))
        return session

    async def active_sessions(self) -> int | None:
        return None

    def check_alive(self) -> None:
        self.server.check_alive()


# The bench profile's keys besides the TTL and idle timeout.  As root, the gateway would otherwise run
# each shell as a per-subject account it creates with useradd (see bench/README.md); run_as: root keeps
# the shell the same as terminado's and raw's (root's bash) and leaves the host's accounts alone.
# --fog-profile run_as=per-subject measures the isolated path.
PROFILE_DEFAULTS = {"run_as": "root"}


class FogSystem:
    key = "fog"
    extra_env: dict = {}  # --fog-env KEY=VALUE
    profile_extra: dict = {}  # --fog-profile KEY=VALUE

    def __init__(self, tmp: str, tag: str = "main", overrides: dict | None = None):
        self.dir = os.path.join(tmp, f"fog-{tag}")
        os.makedirs(self.dir, exist_ok=True)
        self.server: ServerProcess | None = None
        self.port = None
        self.overrides = overrides or {}  # value None: leave the variable unset

    def _write_config(self) -> tuple[str, str]:
        policy = os.path.join(self.dir, "policy.yaml")
        nodes = os.path.join(self.dir, "nodes.yaml")
        profile = {"max_ttl_seconds": "3600", "idle_timeout_seconds": "0"}
        profile.update(PROFILE_DEFAULTS)
        profile.update(self.profile_extra)
        with open(policy, "w") as f:
            f.write("profiles:\n  bench:\n")
            for key, value in profile.items():
                f.write(f"    {key}: {value}\n")
            f.write("quotas:\n  max_sessions_per_subject: 5000\n")
        with open(policy) as f:
            self.policy_text = f.read()
        with open(nodes, "w") as f:
            f.write(
                "nodes:\n"
                "  - id: bench-local\n"
                "    region: local\n"
                "    tier: fog\n"
                "    connector: local\n"
                "    capacity: 2000\n"
                "    shell: [/bin/bash, --noprofile, --norc, -i]\n"
                f"    work_root: {json.dumps(os.path.join(self.dir, 'work'))}\n"
                '    env: {PS1: "$ "}\n'
            )
        return policy, nodes

    async def start(self):
        policy, nodes = self._write_config()
        twistd = Path(sys.executable).parent / "twistd"
        if not twistd.exists():
            found = shutil.which("twistd")
            if not found:
                raise BenchError("twistd not found next to the benchmark's python")
            twistd = Path(found)
        last_error = ""
        for _attempt in range(3):
            port = free_port()
            env = {
                "PATH": shell_env("")["PATH"],
                "HOME": self.dir,
                "LANG": "C.UTF-8",
                "LISTEN_ADDR": f"127.0.0.1:{port}",
                "POLICY_FILE": policy,
                "NODES_FILE": nodes,
                # Limits that would stop a benchmark, not a user (see bench/README.md):
                "CREATE_RATE_PER_MINUTE": "0",  # 0 turns the per-subject creation rate limit off
                "MAX_SESSIONS": "5000",  # the gateway-wide cap (default 1000 < N=1000 + the neighbour)
                "STATE_DB": os.path.join(self.dir, "state", "cloudshell-fog.db"),
            }
            env.update(self.extra_env)
            env.update(self.overrides)
            env = {k: v for k, v in env.items() if v is not None}
            self.env = env
            logfile = os.path.join(self.dir, f"twistd-{port}.log")
            self.server = ServerProcess(
                "cloudshell-fog",
                [str(twistd), "-n", "--pidfile=", f"--logfile={logfile}", "cloudshell-fog"],
                env, self.dir, os.path.join(self.dir, f"stderr-{port}.log"),
            )
            self.server.gateway_log = logfile
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.server.alive():
                try:
                    status, _ = await http_json(port, "GET", "/healthz", token=None, timeout=1)
                    if status == 200:
                        self.port = port
                        self.code = git_state()  # what this gateway process loaded
                        return
                except (OSError, TimeoutError, BenchError):
                    pass
                await asyncio.sleep(0.1)
            last_error = self.server.log_tail()
            try:
                with open(logfile, "rb") as f:
                    last_error += "\n" + b"\n".join(f.read().splitlines()[-20:]).decode("utf-8", "replace")
            except OSError:
                pass
            self.server.stop()
            self.server = None
        raise BenchError("cloudshell-fog did not start:\n" + last_error)

    def stop(self):
        if self.server is not None:
            self.server.stop()
            self.server = None

    async def open(self) -> FogSession:
        t0 = time.perf_counter()
        status, body = await http_json(self.port, "POST", "/v1/sessions",
                                       {"profile": "bench", "ttl_seconds": 3600})
        t_post = time.perf_counter()
        if status != 201:
            raise BenchError(f"POST /v1/sessions answered {status}: {body}")
        url = body["attach"]["ws_url"] + "?token=" + body["attach"]["token"]
        try:
            ws = await ws_connect(url, **WS_OPTIONS)
        except BaseException:
            await self.delete(body["session_id"])
            raise
        session = FogSession(ws, self, body["session_id"])
        session.phases = {"post": t_post - t0, "ws_connect": time.perf_counter() - t_post}
        await ws.send('{"type":"resize","cols":%d,"rows":%d}' % (COLS, ROWS))
        return session

    async def delete(self, session_id: str) -> None:
        try:
            status, body = await http_json(self.port, "DELETE", f"/v1/sessions/{session_id}", timeout=30)
        except (OSError, TimeoutError) as e:
            raise BenchError(f"DELETE {session_id} failed: {e!r}") from None
        if status not in (200, 404):
            raise BenchError(f"DELETE {session_id} answered {status}: {body}")

    def check_alive(self) -> None:
        self.server.check_alive()

    async def active_sessions(self) -> int | None:
        """Sessions the gateway still lists (not terminated), over every page."""
        count, cursor = 0, None
        for _ in range(100):
            path = "/v1/sessions?limit=200" + (f"&cursor={cursor}" if cursor else "")
            status, body = await http_json(self.port, "GET", path, timeout=30)
            if status != 200:
                raise BenchError(f"GET /v1/sessions answered {status}: {body}")
            count += sum(1 for s in body["sessions"] if s["status"] != "terminated")
            cursor = body.get("next_cursor")
            if not cursor:
                return count
        return count


def make_system(key: str, tmp: str, tag: str = "main"):
    if key == "raw":
        return RawSystem(tmp)
    return {"terminado": TerminadoSystem, "fog": FogSystem}[key](tmp, tag)


# ---------------------------------------------------------------- helpers on sessions


async def read_until(session, pattern: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    buf = b""
    while pattern not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {pattern!r} within {timeout:g} s; last output {buf[-120:]!r}")
        try:
            buf += await session.recv(left)
        except TimeoutError:
            continue
    return buf


async def drain_quiet(session, quiet: float, limit: float) -> bytes:
    """Read until nothing arrives for QUIET seconds (at most LIMIT seconds in all)."""
    deadline = time.monotonic() + limit
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return buf
        try:
            buf += await session.recv(min(quiet, left))
        except TimeoutError:
            return buf


async def prepare_cat(session) -> None:
    """Switch a shell at its prompt to `stty raw -echo; exec cat` and check that a byte comes back once."""
    await session.send(CAT_COMMAND)
    await drain_quiet(session, 0.3, 5)
    for _attempt in range(3):
        await session.send(b"~")
        got = await read_until(session, b"~", 3)
        got += await drain_quiet(session, 0.1, 2)
        if got == b"~":
            return
    raise BenchError(f"cat did not settle: last output {got!r}")


async def wait_children_gone(pid: int, timeout: float, stall: float | None = None) -> tuple[bool, int]:
    """Wait until PID has no descendant; give up after TIMEOUT, or after STALL seconds without progress."""
    start = time.monotonic()
    deadline = start + timeout
    best, progress_at = None, start
    while True:
        left = len(descendants(pid))
        if left == 0:
            return True, 0
        now = time.monotonic()
        if best is None or left < best:
            best, progress_at = left, now
        if now > deadline or (stall is not None and now - progress_at > stall):
            return False, left
        await asyncio.sleep(0.05)


FAILURES: list[str] = []  # measurements that failed (their server logs are kept)
LEAKED: dict[str, int] = {}  # shells a server left alive after their session was closed


def kill_leftovers(system) -> int:
    """Kill the shells a server kept after their sessions were closed; count them per system."""
    tree = descendants(system.server.pid)
    live = {p: t for p, t in tree.items() if (proc_stat(p) or [b"Z"])[0] != b"Z"}
    if live:
        LEAKED[system.key] = LEAKED.get(system.key, 0) + len(live)
        kill_recorded(live, signal.SIGKILL)
    return len(live)


async def settle_server(system) -> None:
    """Between measurements: let the server finish ending the last shell (bounded)."""
    if system.server is not None:
        gone, _ = await wait_children_gone(system.server.pid, 3)
        if not gone and kill_leftovers(system):
            await wait_children_gone(system.server.pid, 3)
        await asyncio.sleep(0.1)


def cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


async def finish(session, system) -> None:
    """Close a workload's session; when cancelled, leave the rest to the cleanup (fast exit)."""
    if cancelling():
        if isinstance(session, RawSession):
            session.kill()
        return
    await session.close()
    await settle_server(system)


# ---------------------------------------------------------------- workloads


async def wl_echo(system, nbytes: int, gap_s: float = 0.0) -> dict:
    session = await system.open()
    try:
        await read_until(session, PROMPT, 15)
        await prepare_cat(session)
        messages = {b: session.encode(bytes([b])) for b in ECHO_ALPHABET}
        latencies = []
        perf = time.perf_counter
        for i in range(nbytes):
            b = ECHO_ALPHABET[i % len(ECHO_ALPHABET)]
            t0 = perf()
            await session.send_encoded(messages[b])
            buf = b""
            while b not in buf:
                buf += await session.recv(5.0)
            latencies.append((perf() - t0) * 1000.0)
            if gap_s:
                await asyncio.sleep(gap_s)
        return {"latency_ms": summary(latencies), "bytes": nbytes, "gap_ms": gap_s * 1000}
    finally:
        await finish(session, system)


async def wl_bulk(system, nbytes: int) -> dict:
    session = await system.open()
    try:
        await read_until(session, PROMPT, 15)
        await drain_quiet(session, 0.2, 3)
        command = f"head -c {nbytes} /dev/zero | base64 -w 76; echo __BULK_DONE__\n".encode()
        pid = system.server.pid if system.server else None
        cpu0 = cpu_seconds(pid) if pid else None
        own0 = time.process_time()
        t0 = time.perf_counter()
        await session.send(command)
        received, tail = 0, b""
        limit = t0 + max(120.0, nbytes / 1e6 * 2)  # at least 0.5 MB/s or it fails
        while True:
            if time.perf_counter() > limit:
                raise TimeoutError(f"bulk not done after {limit - t0:.0f} s ({received} bytes)")
            chunk = await session.recv(30)
            received += len(chunk)
            window = tail + chunk
            if BULK_SENTINEL in window:
                break
            tail = window[-len(BULK_SENTINEL):]
        elapsed = time.perf_counter() - t0
        own = time.process_time() - own0
        cpu = (cpu_seconds(pid) - cpu0) if pid else None
        mb = received / 1e6
        result = {
            "bytes_received": received,
            "seconds": elapsed,
            "mb_per_s": mb / elapsed,
            "client_cpu_s": own,
            "client_cpu_ms_per_mb": own * 1000 / mb,
            "server_cpu_s": cpu,
            "server_cpu_ms_per_mb": (cpu * 1000 / mb) if cpu is not None else None,
        }
        if pid is None:  # raw: the "server" is this process's reader
            result["server_cpu_ms_per_mb"] = result["client_cpu_ms_per_mb"]
            result["server_cpu_is_reader"] = True
        await drain_quiet(session, 0.2, 3)
        return result
    finally:
        await finish(session, system)


async def wl_start(system, starts: int) -> dict:
    times = []
    phases: dict[str, list[float]] = {}
    for _ in range(starts):
        t0 = time.perf_counter()
        session = await system.open()
        try:
            t_open = time.perf_counter()
            await read_until(session, PROMPT, 15)
            t1 = time.perf_counter()
            times.append((t1 - t0) * 1000.0)
            for name, seconds in (getattr(session, "phases", None) or {}).items():
                phases.setdefault(name, []).append(seconds * 1000.0)
            phases.setdefault("prompt_after_open", []).append((t1 - t_open) * 1000.0)
        finally:
            await finish(session, system)
    return {"start_ms": summary(times), "phases_ms": {k: summary(v) for k, v in phases.items()}}


async def wl_concurrency(system, n: int, args) -> dict:
    """N idle sessions: RSS, then echo probes on M of them while one more session streams."""
    result: dict = {"n": n}
    server = system.server
    pid = server.pid
    await asyncio.sleep(0.5)
    result["rss_kib_empty"] = rss_kib(pid)
    sem = asyncio.Semaphore(args.open_parallel)
    sessions: list = []
    failures: list[str] = []

    async def open_one():
        async with sem:
            try:
                s = await asyncio.wait_for(system.open(), 30)
            except Exception as e:
                failures.append(repr(e))
                return
            sessions.append(s)
            try:
                await read_until(s, PROMPT, 30)
            except Exception as e:
                failures.append(f"prompt: {e!r}")

    t0 = time.perf_counter()
    try:
        await measure_idle(system, n, args, sem, sessions, failures, open_one, result, t0)
    except Exception as e:  # recorded; teardown still runs and is measured
        FAILURES.append(f"concurrency {n} {system.key}: {e!r}")
        result["error"] = repr(e)
        result["traceback"] = traceback.format_exc(limit=5)
        log(f"  {LABELS[system.key]} N={n}: FAILED {e!r}")
    if cancelling():
        return result  # interrupted: the cleanup kills the server and its shells
    # Close everything; verify the server has no session and no shell left.
    t2 = time.perf_counter()
    close_errors: list[str] = []

    async def close_one(s):
        async with sem:
            try:
                await asyncio.wait_for(s.close(), 60)
            except Exception as e:
                close_errors.append(repr(e))

    try:
        await asyncio.wait_for(asyncio.gather(*(close_one(s) for s in sessions)), 120 + 1.0 * n)
    except TimeoutError:
        close_errors.append("closing did not finish in time")
    gone, left = await wait_children_gone(pid, 60 + 0.5 * n, stall=15)
    result["teardown_seconds"] = time.perf_counter() - t2
    if not gone:
        result["shells_killed_by_bench"] = kill_leftovers(system)
    result["close_errors"] = len(close_errors)
    result["close_error_examples"] = close_errors[:5]
    result["shells_left"] = left
    try:
        listed = await system.active_sessions()
    except Exception as e:
        listed = f"error: {e!r}"
    result["sessions_listed_after"] = listed
    result["all_gone"] = bool(gone and not listed and not close_errors)
    log(f"  {LABELS[system.key]} N={n}: teardown {result['teardown_seconds']:.1f} s, "
        f"shells left {left}, sessions listed {listed}")
    return result


async def measure_idle(system, n, args, sem, sessions, failures, open_one, result, t0) -> None:
    pid = system.server.pid
    await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(n))), 60 + 1.0 * n)
    result["open_seconds"] = time.perf_counter() - t0
    result["open_failures"] = len(failures)
    result["open_failure_examples"] = failures[:5]
    await asyncio.sleep(1.0)
    system.check_alive()
    result["rss_kib"] = rss_kib(pid)
    result["fds"] = fd_count(pid)
    result["shells"] = len(descendants(pid))
    log(f"  {LABELS[system.key]} N={n}: opened {len(sessions)} in {result['open_seconds']:.1f} s "
        f"({len(failures)} failures), RSS {fmt((result['rss_kib'] or 0) / 1024)} MiB")

    probes = sessions[: min(args.probe_sessions, len(sessions))]

    async def prep(s):
        async with sem:
            await prepare_cat(s)

    await asyncio.wait_for(asyncio.gather(*(prep(s) for s in probes)), 120)

    neighbour = await asyncio.wait_for(system.open(), 30)
    sessions.append(neighbour)
    await read_until(neighbour, PROMPT, 30)
    streamed = {"bytes": 0}

    async def stream():
        while True:
            try:
                streamed["bytes"] += await neighbour.recv_raw(10)
            except TimeoutError:
                continue
            except EOFError:
                return

    await neighbour.send(NEIGHBOUR_COMMAND)
    reader = asyncio.ensure_future(stream())
    try:
        await asyncio.sleep(1.0)
        b0, s0 = streamed["bytes"], time.perf_counter()
        latencies, timeouts = [], 0
        perf = time.perf_counter
        for r in range(args.probe_rounds):
            for i, s in enumerate(probes):
                b = ECHO_ALPHABET[(r * len(probes) + i) % len(ECHO_ALPHABET)]
                t1 = perf()
                await s.send(bytes([b]))
                buf, deadline = b"", t1 + args.probe_timeout
                while b not in buf:
                    left = deadline - perf()
                    if left <= 0:
                        break
                    try:
                        buf += await s.recv(left)
                    except TimeoutError:
                        break
                if b in buf:
                    latencies.append((perf() - t1) * 1000.0)
                else:
                    timeouts += 1
                await asyncio.sleep(args.probe_gap_ms / 1000.0)
        stream_s = time.perf_counter() - s0
        system.check_alive()
        result["neighbour_mb_per_s"] = (streamed["bytes"] - b0) / 1e6 / stream_s
        result["probe_latency_ms"] = summary(latencies)
        result["probe_timeouts"] = timeouts
        result["probes"] = len(latencies) + timeouts
        if reader.done():
            result["neighbour_ended_early"] = True
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


# ---------------------------------------------------------------- aggregation and output


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def build_table(results: dict, systems: list[str], args) -> tuple[list[dict], list[dict]]:
    rounds = results["rounds"]

    def over_rounds(workload, system, getter):
        values = []
        for r in rounds:
            item = r.get(workload, {}).get(system)
            if item and "error" not in item:
                try:
                    values.append(getter(item))
                except (KeyError, TypeError):
                    pass
        return median(values)

    rows: list[dict] = []

    def add(figure, unit, getter, workload=None, per_system=None, note=""):
        values = {}
        for s in SYSTEMS:
            if s not in systems:
                values[s] = None
            elif per_system is not None:
                values[s] = per_system(s)
            else:
                values[s] = over_rounds(workload, s, getter)
        rows.append({
            "figure": figure, "unit": unit, "note": note,
            **{LABELS[s]: values[s] for s in SYSTEMS},
            "fog/terminado": ratio(values["fog"], values["terminado"]),
            "fog/raw": ratio(values["fog"], values["raw"]),
        })

    if "echo" in args.workloads:
        add("echo p50", "ms", lambda x: x["latency_ms"]["p50"], "echo")
        add("echo p99", "ms", lambda x: x["latency_ms"]["p99"], "echo")
        if args.paced_bytes:
            gap = args.paced_gap_ms
            add(f"echo paced {gap:g} ms p50", "ms", lambda x: x["latency_ms"]["p50"], "echo_paced", note="info")
            add(f"echo paced {gap:g} ms p99", "ms", lambda x: x["latency_ms"]["p99"], "echo_paced", note="info")
    if "bulk" in args.workloads:
        add("bulk throughput", "MB/s", lambda x: x["mb_per_s"], "bulk")
        add("bulk server CPU", "ms/MB", lambda x: x["server_cpu_ms_per_mb"], "bulk",
            note="raw: the benchmark's own reader")
        add("bulk client CPU", "ms/MB", lambda x: x["client_cpu_ms_per_mb"], "bulk", note="info")
    if "start" in args.workloads:
        add("session start p50", "ms", lambda x: x["start_ms"]["p50"], "start")
        add("session start p90", "ms", lambda x: x["start_ms"]["p90"], "start", note="info")
        add("  start: POST p50", "ms", lambda x: x["phases_ms"]["post"]["p50"], "start", note="info")
        add("  start: WS connect p50", "ms", lambda x: x["phases_ms"]["ws_connect"]["p50"], "start", note="info")
        add("  start: prompt after open p50", "ms", lambda x: x["phases_ms"]["prompt_after_open"]["p50"], "start",
            note="info")

    conc = results["concurrency"]
    if "concurrency" not in args.workloads:
        return rows, evaluate_targets(rows, conc, args)

    def conc_value(n, key):
        def get(s):
            if s == "raw":
                return None
            item = conc.get(str(n), {}).get(s)
            if not item or "error" in item:
                return None
            value = item
            for k in key:
                value = value.get(k) if isinstance(value, dict) else None
            return value
        return get

    for n in args.concurrency:
        add(f"RSS with {n} idle", "MiB", None,
            per_system=lambda s, n=n: (lambda v: v / 1024 if v is not None else None)(conc_value(n, ["rss_kib"])(s)))
        add(f"open {n} sessions", "s", None, per_system=conc_value(n, ["open_seconds"]), note="info")
        add(f"neighbour echo p50 @{n}", "ms", None, per_system=conc_value(n, ["probe_latency_ms", "p50"]))
        add(f"neighbour echo p99 @{n}", "ms", None, per_system=conc_value(n, ["probe_latency_ms", "p99"]))
        add(f"probe timeouts @{n}", "count", None, per_system=conc_value(n, ["probe_timeouts"]))
        add(f"neighbour stream @{n}", "MB/s", None, per_system=conc_value(n, ["neighbour_mb_per_s"]), note="info")
        add(f"teardown {n} sessions", "s", None, per_system=conc_value(n, ["teardown_seconds"]), note="info")

    lo, hi = memory_pair(args.concurrency)

    def per_session(s):
        if s == "raw" or lo is None:
            return None
        a, b = conc_value(lo, ["rss_kib"])(s), conc_value(hi, ["rss_kib"])(s)
        if a is None or b is None:
            return None
        return (b - a) / (hi - lo)

    if lo is not None:
        add("memory per idle session", "KiB", None, per_system=per_session,
            note=f"(RSS@{hi} - RSS@{lo}) / {hi - lo}")

    targets = evaluate_targets(rows, conc, args)
    return rows, targets


def memory_pair(ns: list[int]):
    if 50 in ns and 200 in ns:
        return 50, 200
    ordered = sorted(set(ns))
    if len(ordered) >= 2:
        return ordered[0], ordered[1]
    return None, None


def evaluate_targets(rows: list[dict], conc: dict, args) -> list[dict]:
    by_name = {r["figure"]: r for r in rows}
    targets = []

    def target(name, figure, reference, factor, higher_is_better=False):
        row = by_name.get(figure)
        if row is None:  # that workload did not run
            return
        fog = row["cloudshell-fog"] if row else None
        ref = row[LABELS[reference]] if row else None
        if fog is None or ref is None:
            verdict, limit = "n/a", None
        else:
            limit = factor * ref
            ok = fog >= limit if higher_is_better else fog <= limit
            verdict = "PASS" if ok else "FAIL"
        targets.append({"target": name, "fog": fog, "reference": ref, "limit": limit, "verdict": verdict,
                        "ratio": ratio(fog, ref)})

    if not rows:
        return targets
    target("echo p50 <= 0.7 x terminado", "echo p50", "terminado", 0.7)
    target("echo p99 <= terminado", "echo p99", "terminado", 1.0)
    target("bulk MB/s >= 0.9 x raw", "bulk throughput", "raw", 0.9, higher_is_better=True)
    target("gateway CPU per MB <= 0.75 x terminado", "bulk server CPU", "terminado", 0.75)
    target("session start p50 <= 2 x raw", "session start p50", "raw", 2.0)
    if "concurrency" not in args.workloads:
        return targets
    lo, hi = memory_pair(args.concurrency)
    if lo is not None:
        target("memory per idle session <= 0.5 x terminado", "memory per idle session", "terminado", 0.5)
    big = 1000 if 1000 in args.concurrency else max(args.concurrency) if args.concurrency else None
    if big is not None:
        item = conc.get(str(big), {}).get("fog")
        if not item or "error" in item or "probe_timeouts" not in item:
            verdict, value = "n/a", None
        else:
            value = item["probe_timeouts"] + item.get("open_failures", 0)
            verdict = "PASS" if value == 0 and item.get("all_gone", False) else "FAIL"
        targets.append({"target": f"{big} idle sessions with zero probe timeouts (and no open failure, all gone after)",
                        "fog": value, "reference": 0, "limit": 0, "verdict": verdict, "ratio": None})
    for n in args.concurrency:
        target(f"neighbour echo p50 @{n} <= 0.3 x terminado", f"neighbour echo p50 @{n}", "terminado", 0.3)
    return targets


def render_table(rows: list[dict], targets: list[dict]) -> str:
    header = ["figure", "unit", "raw", "terminado", "cloudshell-fog", "fog/terminado", "fog/raw"]
    lines = [[r["figure"], r["unit"], fmt(r["raw"]), fmt(r["terminado"]), fmt(r["cloudshell-fog"]),
              fmt(r["fog/terminado"]), fmt(r["fog/raw"])] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = []

    def row(cells):
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) if i > 1 else c.ljust(widths[i])
                         for i, c in enumerate(cells))

    out.append(row(header))
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        out.append(row(line))
    if not targets:
        return "\n".join(out)
    out.append("")
    out.append("Targets (cloudshell-fog):")
    tw = max(len(t["target"]) for t in targets) if targets else 10
    for t in targets:
        detail = ""
        if t["verdict"] != "n/a" and t["limit"] is not None and t["ratio"] is not None:
            detail = f"fog {fmt(t['fog'])} vs limit {fmt(t['limit'])} (ratio {fmt(t['ratio'])})"
        elif t["verdict"] != "n/a":
            detail = f"fog {fmt(t['fog'])}"
        out.append(f"  {t['verdict']:<4}  {t['target']:<{tw}}  {detail}")
    return "\n".join(out)


def git_state() -> dict:
    """The project's commit, and whether the gateway's code differs from it (it is installed editable)."""
    state = {}
    try:
        git = ["git", "-C", str(ROOT)]
        state["commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                                         timeout=10).stdout.strip() or None
        status = subprocess.run(git + ["status", "--porcelain", "--", "cloudshell_fog", "setup.py"],
                                capture_output=True, text=True, timeout=10).stdout
        state["cloudshell_fog_dirty"] = bool(status.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return state


def machine_info() -> dict:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name in ("cloudshell-fog", "terminado", "tornado", "twisted", "autobahn", "websockets", "ptyprocess"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        bash_version = subprocess.run(["/bin/bash", "--version"], capture_output=True, text=True,
                                      timeout=5).stdout.splitlines()[0]
    except Exception:
        bash_version = None
    try:
        pty_max = int(open("/proc/sys/kernel/pty/max").read())
    except OSError:
        pty_max = None
    return {
        "project": git_state(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_total": mem,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "bash": bash_version,
        "packages": versions,
        "rlimit_nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "pty_max": pty_max,
        "loadavg_at_start": os.getloadavg(),
    }


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="cloudshell-fog vs terminado vs raw PTY benchmark")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, 200 echo bytes, 5 MB bulk, 5 starts, N=10,30")
    p.add_argument("--systems", "--only", dest="systems", default=None,
                   help="comma list of raw,terminado,fog (default: all three)")
    p.add_argument("--workloads", default=None, help="comma list of echo,bulk,start,concurrency (default: all)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of echo/bulk/start (default 3)")
    p.add_argument("--echo-bytes", type=int, default=None, help="bytes per echo run (default 2000)")
    p.add_argument("--paced-bytes", type=int, default=None,
                   help="bytes of the informational paced echo run (default 200; 0 turns it off)")
    p.add_argument("--paced-gap-ms", type=float, default=10.0, help="gap between paced echo bytes (default 10)")
    p.add_argument("--bulk-bytes", type=int, default=None, help="bytes fed to base64 (default 50000000)")
    p.add_argument("--starts", type=int, default=None, help="session starts per round (default 20)")
    p.add_argument("--concurrency", default=None, help="comma list of idle session counts (default 50,200,1000)")
    p.add_argument("--open-parallel", type=int, default=20, help="sessions opened at a time (default 20)")
    p.add_argument("--probe-sessions", type=int, default=20, help="idle sessions probed (M, default 20)")
    p.add_argument("--probe-rounds", type=int, default=None, help="probes per probed session (default 5)")
    p.add_argument("--probe-timeout", type=float, default=2.0, help="seconds per probe (default 2)")
    p.add_argument("--probe-gap-ms", type=float, default=10.0, help="pause between probes (default 10)")
    p.add_argument("--deadline-minutes", type=float, default=120.0, help="abort the whole run after this")
    p.add_argument("--results-dir", default=str(BENCH_DIR / "results"))
    p.add_argument("--fog-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the gateway (repeatable), e.g. SCROLLBACK_BYTES=0")
    p.add_argument("--fog-profile", action="append", default=[], metavar="KEY=VALUE",
                   help="extra key of the gateway's bench profile in policy.yaml (repeatable), e.g. "
                        "run_as=per-subject or sandbox=namespaces (default: run_as=root)")
    p.add_argument("--terminado-nodelay", action="store_true",
                   help="set TCP_NODELAY on terminado's WebSockets (stock TermSocket does not)")
    p.add_argument("--keep-temp", action="store_true", help="keep the temp dir (server logs) at the end")
    args = p.parse_args(argv)
    quick = args.quick

    def default(name, normal, fast):
        if getattr(args, name) is None:
            setattr(args, name, fast if quick else normal)

    default("rounds", 3, 1)
    default("echo_bytes", 2000, 200)
    default("paced_bytes", 200, 50)
    default("bulk_bytes", 50_000_000, 5_000_000)
    default("starts", 20, 5)
    default("concurrency", "50,200,1000", "10,30")
    default("probe_rounds", 5, 2)
    aliases = {"raw": "raw", "terminado": "terminado", "fog": "fog", "cloudshell-fog": "fog", "gateway": "fog"}
    chosen = [s.strip() for s in (args.systems or ",".join(SYSTEMS)).split(",") if s.strip()]
    try:
        keys = {aliases[s] for s in chosen}
    except KeyError as e:
        p.error(f"unknown system {e.args[0]!r} (raw, terminado, fog)")
    args.systems = [s for s in SYSTEMS if s in keys]
    workloads = [w.strip() for w in (args.workloads or ",".join(WORKLOADS)).split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r} ({', '.join(WORKLOADS)})")
    args.workloads = workloads
    fog_env = {}
    for item in args.fog_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--fog-env wants KEY=VALUE, not {item!r}")
        fog_env[key] = value
    FogSystem.extra_env = fog_env
    fog_profile = {}
    for item in args.fog_profile:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--fog-profile wants KEY=VALUE, not {item!r}")
        fog_profile[key] = value
    FogSystem.profile_extra = fog_profile
    TerminadoSystem.nodelay = args.terminado_nodelay
    args.concurrency = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    if any(n < 1 for n in args.concurrency):
        p.error("--concurrency values must be positive")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


async def run_one(label: str, coro, timeout: float) -> dict:
    """One measurement; an error is recorded, not fatal (cancellation still is)."""
    t0 = time.perf_counter()
    try:
        result = await asyncio.wait_for(coro, timeout)
    except (Exception, TimeoutError) as e:
        log(f"  {label}: FAILED {e!r}")
        FAILURES.append(f"{label}: {e!r}")
        return {"error": repr(e), "traceback": traceback.format_exc(limit=5)}
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def brief(workload: str, result: dict) -> str:
    if "error" in result:
        return "error"
    if workload.startswith("echo"):
        lat = result["latency_ms"]
        return f"p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms"
    if workload == "bulk":
        cpu = result.get("server_cpu_ms_per_mb")
        return f"{result['mb_per_s']:.1f} MB/s  server CPU {fmt(cpu)} ms/MB  client CPU {result['client_cpu_ms_per_mb']:.1f} ms/MB"
    if workload == "start":
        parts = ", ".join(f"{k} {v['p50']:.1f}" for k, v in result.get("phases_ms", {}).items())
        return f"p50 {result['start_ms']['p50']:.1f} ms  (p50 by step, ms: {parts})"
    return ""


def gateway_startup_lines(server: ServerProcess) -> list[str]:
    """What the gateway said about itself at start (isolation, limits, mode)."""
    try:
        with open(server.gateway_log, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except (OSError, AttributeError):
        return []
    keep = ("resource limits", "not running as root", "starting in", "development mode", "sandbox", "cgroup")
    return [line for line in lines[:200] if any(k in line for k in keep) and "audit" not in line][:10]


def log_errors(server: ServerProcess) -> tuple[int, str | None]:
    """Tracebacks in a server's logs, and the last exception line seen."""
    count, last = 0, None
    for path in (server.log_path, getattr(server, "gateway_log", None)):
        if not path:
            continue
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError:
            continue
        count += text.count(b"Traceback")
        for line in text.splitlines():
            stripped = line.strip()
            if b"Error:" in stripped and not stripped.startswith(b"File "):
                last = stripped.decode("utf-8", "replace")[:300]
    return count, last


async def bench(args, results: dict, tmp: str) -> None:
    systems = args.systems
    main_systems = {}
    rounds_workloads = [w for w in ("echo", "bulk", "start") if w in args.workloads]
    if rounds_workloads:
        for key in systems:
            system = RawSystem(tmp) if key == "raw" else make_system(key, tmp, "main")
            log(f"starting {LABELS[key]}")
            await system.start()
            main_systems[key] = system
            if system.server is not None:
                results["servers"][key] = {"pid": system.server.pid, "port": system.port,
                                           "rss_kib_at_start": rss_kib(system.server.pid)}
                if key == "fog":
                    results["servers"][key]["env"] = system.env
                    results["servers"][key]["policy_yaml"] = system.policy_text
                    results["servers"][key]["code"] = system.code
        # One untimed warm-up session per system (first fork, lazy imports, JIT-less caches).
        for key, system in main_systems.items():
            await run_one(f"warm-up {key}", wl_start(system, 2), 60)

        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds}")
            this_round: dict = {}
            results["rounds"].append(this_round)
            plan = []
            if "echo" in args.workloads:
                plan.append(("echo", lambda s: wl_echo(s, args.echo_bytes), 120 + args.echo_bytes * 0.05))
                if args.paced_bytes:
                    plan.append(("echo_paced", lambda s: wl_echo(s, args.paced_bytes, args.paced_gap_ms / 1000),
                                 120 + args.paced_bytes * (0.05 + args.paced_gap_ms / 1000)))
            if "bulk" in args.workloads:
                plan.append(("bulk", lambda s: wl_bulk(s, args.bulk_bytes), 180 + args.bulk_bytes / 1e6 * 3))
            if "start" in args.workloads:
                plan.append(("start", lambda s: wl_start(s, args.starts), 60 + args.starts * 15))
            for workload, make, timeout in plan:
                this_round[workload] = {}
                for key in systems:  # A B C, A B C: interleaved so ratios hold on a noisy machine
                    system = main_systems[key]
                    if system.server is not None and not system.server.alive():
                        raise BenchError(f"{LABELS[key]} server died:\n{system.server.log_tail()}")
                    result = await run_one(f"{workload} {key}", make(system), timeout)
                    this_round[workload][key] = result
                    log(f"  {workload:<10} {LABELS[key]:<15} {brief(workload, result)}")
        for key, system in main_systems.items():
            if system.server is not None:
                results["servers"][key]["rss_kib_at_end"] = rss_kib(system.server.pid)
                if key == "fog":
                    lines = gateway_startup_lines(system.server)
                    results["servers"][key]["startup_log"] = lines
                    said = [line.split("] ", 1)[-1] for line in lines
                            if "resource limits" in line or "not running as root" in line]
                    if said:
                        results["notes"].append("cloudshell-fog said at start: " + "; ".join(said))
                errors, last = log_errors(system.server)
                results["servers"][key]["log_tracebacks"] = errors
                results["servers"][key]["last_error_line"] = last
                if errors:
                    results["notes"].append(f"{LABELS[key]} server logged {errors} traceback(s); last: {last}")
            system.stop()

    if "concurrency" in args.workloads:
        for n in args.concurrency:
            results["concurrency"][str(n)] = {}
            for key in systems:
                if key == "raw":
                    continue  # no server: nothing to measure
                log(f"concurrency N={n}: {LABELS[key]} (fresh server)")
                system = make_system(key, tmp, f"conc{n}")
                try:
                    await system.start()
                    result = await run_one(f"concurrency {n} {key}", wl_concurrency(system, n, args),
                                           300 + 3.0 * n)
                    if key == "fog":
                        result["gateway_code"] = getattr(system, "code", None)
                    if system.server is not None:
                        errors, last = log_errors(system.server)
                        result["server_log_tracebacks"] = errors
                        result["server_last_error_line"] = last
                        if errors:
                            results["notes"].append(f"{LABELS[key]} server (N={n}) logged {errors} traceback(s); "
                                                    f"last: {last}")
                finally:
                    system.stop()
                results["concurrency"][str(n)][key] = result
                if "error" not in result:
                    lat = result.get("probe_latency_ms", {})
                    log(f"  N={n} {LABELS[key]}: RSS {fmt((result.get('rss_kib') or 0) / 1024)} MiB, "
                        f"probe p50 {fmt(lat.get('p50'))} ms p99 {fmt(lat.get('p99'))} ms, "
                        f"timeouts {result.get('probe_timeouts')}, all gone: {result.get('all_gone')}")


def main() -> int:
    args = parse_args()
    started = time.time()
    nofile = raise_nofile()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    out_path = results_dir / f"{stamp}.json"
    tmp = tempfile.mkdtemp(prefix="cloudshell-fog-bench-")
    results: dict = {
        "started_utc": stamp,
        "command_line": [sys.executable] + sys.argv,
        "bench_args_env": os.environ.get("BENCH_ARGS"),
        "args": {k: v for k, v in vars(args).items()},
        "machine": machine_info(),
        "units": {"MB": "10^6 bytes", "MiB": "2^20 bytes", "KiB": "2^10 bytes"},
        "servers": {},
        "rounds": [],
        "concurrency": {},
        "notes": [],
        "status": "running",
        "temp_dir": tmp,
    }
    if "fog" in args.systems:
        profile = {**PROFILE_DEFAULTS, **FogSystem.profile_extra}
        results["notes"].append(
            "cloudshell-fog runs with CREATE_RATE_PER_MINUTE=0 and MAX_SESSIONS=5000"
            + "".join(f", {k}={v}" for k, v in FogSystem.extra_env.items())
            + "; bench profile " + ", ".join(f"{k}: {v}" for k, v in profile.items()) + " (see bench/README.md)")
    if args.terminado_nodelay:
        results["notes"].append("terminado ran with TCP_NODELAY on its WebSockets (--terminado-nodelay)")
    log(f"systems: {', '.join(LABELS[s] for s in args.systems)}; workloads: {', '.join(args.workloads)}; "
        f"rounds {args.rounds}; RLIMIT_NOFILE {nofile[0]}; temp {tmp}")
    exit_code = 0

    def quiet_cancel(loop, context):
        if isinstance(context.get("exception"), asyncio.CancelledError):
            return  # leftovers of an interrupted gather
        loop.default_exception_handler(context)

    async def runner():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(quiet_cancel)
        task = asyncio.current_task()

        def interrupted(signum):
            REAPER.hurry = True
            results["signal"] = signal.Signals(signum).name
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, interrupted, sig)
        async with asyncio.timeout(args.deadline_minutes * 60):
            await bench(args, results, tmp)

    try:
        asyncio.run(runner())
        results["status"] = "complete"
    except (KeyboardInterrupt, asyncio.CancelledError):
        results["status"] = "interrupted"
        log("interrupted: cleaning up")
        exit_code = 130
    except TimeoutError:
        results["status"] = f"deadline of {args.deadline_minutes:g} minutes passed"
        log(results["status"])
        exit_code = 3
    except BaseException as e:  # noqa: BLE001 - record any failure, then clean up
        results["status"] = f"error: {e!r}"
        results["traceback"] = traceback.format_exc()
        log(f"error: {e!r}\n{traceback.format_exc()}")
        exit_code = 1
    finally:
        REAPER.hurry = exit_code != 0
        REAPER.run_all()
        if args.keep_temp or exit_code in (1, 3) or FAILURES:
            log(f"server logs kept in {tmp}")
            if FAILURES:
                results["notes"].append(f"{len(FAILURES)} measurement(s) failed; server logs kept in {tmp}: "
                                        + "; ".join(FAILURES)[:1000])
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    results["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results["total_seconds"] = time.time() - started
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    try:
        rows, targets = build_table(results, args.systems, args)
    except Exception as e:  # a partial run may not have every piece
        rows, targets = [], []
        log(f"could not build the table: {e!r}")
    results["table"] = rows
    results["targets"] = targets
    results["leaked_shells_killed_by_bench"] = dict(LEAKED)
    seen = {json.dumps(results["machine"]["project"], sort_keys=True)}
    seen |= {json.dumps(item.get("gateway_code"), sort_keys=True)
             for per_n in results["concurrency"].values() for k, item in per_n.items() if k == "fog"
             if item.get("gateway_code")}
    if results["servers"].get("fog", {}).get("code"):
        seen.add(json.dumps(results["servers"]["fog"]["code"], sort_keys=True))
    if len(seen) > 1:
        results["notes"].append("the project's code changed during the run (see machine.project, servers.fog.code "
                                "and concurrency.*.fog.gateway_code): figures may come from different code")
    project = results["machine"]["project"]
    if project.get("cloudshell_fog_dirty"):
        results["notes"].append(f"cloudshell_fog/ had uncommitted changes at the start (HEAD {project.get('commit')})")
    for key, count in LEAKED.items():
        results["notes"].append(
            f"{LABELS[key]} kept {count} shell(s) alive after their session was closed; the benchmark killed them "
            "(bash -i can survive a single SIGHUP that lands right after its prompt and a SIGWINCH)")
    with open(out_path, "w") as f:
        json.dump(results, f, indent=2, default=str)
        f.write("\n")
    shown = [r for r in rows if any(r[LABELS[k]] is not None for k in SYSTEMS)]
    if shown:
        print()
        print(f"cloudshell-fog benchmark ({'quick' if args.quick else 'full'}; {args.rounds} round(s); "
              f"medians over rounds; {results['machine']['nproc']} CPUs, {results['machine']['cpu_model']})")
        print(render_table(shown, targets))
    if results["notes"]:
        print("\nNotes:")
        for note in results["notes"]:
            print(f"  - {note}")
    print(f"\nresults: {out_path}")
    print(f"total time: {results['total_seconds']:.0f} s; status: {results['status']}")
    return exit_code


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        REAPER.run_all()
