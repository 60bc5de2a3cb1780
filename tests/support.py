"""
Helpers for the end-to-end tests: a gateway served on a loopback port in
the test reactor, a real HTTP client (treq) and a real WebSocket client
(the `websockets` package, run in a thread so its blocking calls never stall
the reactor).  Every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path

import treq
import yaml
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.web.client import HTTPConnectionPool
from websockets.sync.client import connect

from cloudshell_fog.config import load_config
from cloudshell_fog.service import build_parts
from cloudshell_fog.store import SqliteSessionStore

# Every shell the suite starts carries this variable, so the final check can
# find any the suite left behind (tests/conftest.py).
RUN_MARK = "CLOUDSHELL_TEST_RUN"
RUN_ID = os.environ.setdefault("CLOUDSHELL_TEST_RUN_ID", uuid.uuid4().hex)
SECRET = "s" * 32
STEP_TIMEOUT = 10.0

# As root, shells run as this account (one for the whole suite, not one per test subject).
TEST_ACCOUNT = "cloudshell-test"
# Session directories must be reachable by that account: not inside pytest's private (0700) tmp.
WORK_ROOT = f"/tmp/cloudshell-fog-test/{RUN_ID}"

POLICY = {
    "profiles": {
        "default": {"max_ttl_seconds": 3600, "idle_timeout_seconds": 900, "run_as": TEST_ACCOUNT},
        "small": {"max_ttl_seconds": 600, "idle_timeout_seconds": 60, "memory_mb": 256, "run_as": TEST_ACCOUNT},
        "admins": {"max_ttl_seconds": 600, "allowed_groups": ["admins"], "run_as": TEST_ACCOUNT},
    },
    "quotas": {"max_sessions_per_subject": 3},
}


def node(node_id: str, tier: str, **extra) -> dict:
    body = {
        "id": node_id,
        "region": "local",
        "tier": tier,
        "capacity": 50,
        "shell": ["/bin/bash", "--noprofile", "--norc", "-i"],
        "env": {RUN_MARK: RUN_ID, "PS1": "$ "},
    }
    body.update(extra)
    return body


def write_config(directory: Path, policy: dict | None = None, nodes: list | None = None) -> dict:
    """Write policy and nodes files; return the environment that points at them."""
    policy_path, nodes_path = directory / "policy.yaml", directory / "nodes.yaml"
    policy_path.write_text(yaml.safe_dump(policy or POLICY))
    nodes = nodes or [
        node("fog-local", "fog", work_root=WORK_ROOT),
        node("cloud-local", "cloud", work_root=WORK_ROOT),
    ]
    nodes_path.write_text(yaml.safe_dump({"nodes": nodes}))
    return {
        "SESSION_TOKEN_SECRET": SECRET,
        "POLICY_FILE": str(policy_path),
        "NODES_FILE": str(nodes_path),
        "AUDIT_LOG": str(directory / "audit.jsonl"),
        "STATE_DB": str(directory / "state.db"),
    }


def bounded(d, seconds: float = STEP_TIMEOUT):
    return d.addTimeout(seconds, reactor)


def in_thread(fn, *args, seconds: float = STEP_TIMEOUT):
    """Run a blocking client call in a thread, bounded."""
    return bounded(deferToThread(fn, *args), seconds + 2)


class Response:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.raw = status, headers, body

    @property
    def json(self):
        return json.loads(self.raw)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def __repr__(self):
        return f"<Response {self.status} {self.raw[:300]!r}>"


class Gateway:
    """The gateway's parts served on 127.0.0.1:<free port> in the test reactor."""

    def __init__(self, directory: Path, policy=None, nodes=None, env=None):
        self.env = write_config(directory, policy, nodes)
        self.env.update(env or {})
        self.audit_path = Path(self.env["AUDIT_LOG"])
        self.clock = Clock()
        self.clock.advance(reactor.seconds())
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def start(self):
        self.config = load_config(self.env)
        self.parts = build_parts(self.config, reactor, clock=self.clock,
                                 store=SqliteSessionStore(self.config.state_db))
        self.parts.audit.open()
        self.parts.sessions.restore()
        self.port = reactor.listenTCP(0, self.parts.site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.ws_base = self.base.replace("http://", "ws://")

    async def stop(self):
        try:
            await bounded(self.parts.sessions.stop(0.2), 20)
            for connector in self.parts.inventory.connectors():
                connector.stop()
        finally:
            await self.port.stopListening()
            self.parts.sessions.close()
            self.parts.audit.close()

    async def request(self, method: str, path: str, body=None, token: str | None = "alice",
                      headers: dict | None = None, data: bytes | None = None) -> Response:
        hdrs = {}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        response = await bounded(
            treq.request(method, self.base + path, data=data, headers=hdrs, pool=self.pool)
        )
        content = await bounded(treq.content(response))
        return Response(response.code, response.headers, content)

    async def create(self, token: str = "alice", **fields) -> dict:
        body = {"profile": "default", "ttl_seconds": 600, **fields}
        response = await self.request("POST", "/v1/sessions", body, token=token)
        assert response.status == 201, response
        return response.json

    def audit_events(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    async def attach(self, created: dict, **kwargs) -> "WsClient":
        url = f"{created['attach']['ws_url']}?token={created['attach']['token']}"
        return await in_thread(lambda: WsClient(url, **kwargs))


class WsClient:
    """A blocking WebSocket client speaking the API's frames."""

    def __init__(self, url: str, origin: str | None = None):
        extra = {"origin": origin} if origin else {}
        self.ws = connect(url, compression=None, open_timeout=STEP_TIMEOUT, close_timeout=2,
                          max_size=2**24, **extra)
        self.output = bytearray()
        self.exit_code = None

    def send_json(self, frame) -> None:
        self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    def type(self, text: str) -> None:
        self.send_json({"type": "stdin", "data_b64": base64.b64encode(text.encode()).decode()})

    def resize(self, cols: int, rows: int) -> None:
        self.send_json({"type": "resize", "cols": cols, "rows": rows})

    def _take(self, timeout: float) -> dict:
        frame = json.loads(self.ws.recv(timeout=timeout))
        if frame["type"] == "stdout":
            self.output += base64.b64decode(frame["data_b64"])
        elif frame["type"] == "exit":
            self.exit_code = frame["code"]
        return frame

    def read_until(self, marker: bytes, timeout: float = STEP_TIMEOUT) -> bytes:
        """Read frames until C{marker} appears in the output; return all output so far."""
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.exit_code is not None:
                raise AssertionError(f"{marker!r} not seen; output: {bytes(self.output[-500:])!r}")
            self._take(remaining)
        return bytes(self.output)

    def wait_exit(self, timeout: float = STEP_TIMEOUT) -> tuple[int, int | None]:
        """Read until the exit frame, then the close; return (exit code, close code)."""
        deadline = time.monotonic() + timeout
        while self.exit_code is None:
            self._take(max(0.01, deadline - time.monotonic()))
        return self.exit_code, self.wait_close(max(0.1, deadline - time.monotonic()))

    def wait_close(self, timeout: float = STEP_TIMEOUT) -> int | None:
        """Read until the server closes; return the close code."""
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + timeout
        try:
            while True:
                self._take(max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd is not None else None

    def close(self) -> None:
        self.ws.close()
