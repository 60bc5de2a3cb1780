"""The packaged program: the twistd plugin, start-up errors, a real gateway process and its shutdown."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from support import SECRET, WORK_ROOT, WsClient, write_config

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistd(*args, env=None, **kw):
    return subprocess.run([str(BIN / "twistd"), *args], env=env, capture_output=True, text=True,
                          timeout=60, **kw)


def test_twistd_help_lists_the_plugin():
    """`twistd --help` of the installed environment lists cloudshell-fog (the editable install works)."""
    result = twistd("--help", cwd="/")
    assert result.returncode == 0
    assert "cloudshell-fog" in result.stdout
    assert "Traceback" not in result.stderr


def test_regular_install_ships_the_dropin_and_twistd_finds_it(tmp_path):
    """`pip install .` (not editable) ships the dropin without __init__.py files, and twistd lists it."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                    "--target", str(target), str(ROOT)], check=True, timeout=120, capture_output=True)
    assert (target / "twisted/plugins/cloudshell_fog_plugin.py").exists()
    assert not (target / "twisted/plugins/__init__.py").exists()
    assert not (target / "twisted/__init__.py").exists()
    assert (target / "cloudshell_fog/defaults/policy.yaml").exists()
    # -S: no site processing, so the checkout's editable .pth is not on the path; only the install is.
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import sys; from twisted.scripts.twistd import run; "
         "sys.argv = ['twistd', '--help']; run()"],
        env={"PYTHONPATH": f"{target}:{site_packages}", "PATH": os.environ["PATH"]},
        cwd="/", capture_output=True, text=True, timeout=60)
    assert "cloudshell-fog" in result.stdout, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda d: {"POLICY_FILE": str(d / "missing.yaml")}, "missing.yaml: (file): does not exist"),
        (lambda d: {"POLICY_FILE": _write(d / "p.yaml", "profiles:\n  default:\n    max_ttl_seconds: -1\n")},
         "p.yaml: profiles.default.max_ttl_seconds: must be at least 1"),
        (lambda d: {"NODES_FILE": _write(d / "n.yaml", "nodes:\n  - {id: a, region: r, tier: edge, capacity: 1}\n")},
         "n.yaml: nodes[0].tier: must be one of fog, cloud"),
        (lambda d: {"LISTEN_ADDR": "::1:8080"}, "LISTEN_ADDR: address:"),
        (lambda d: {"SESSION_TOKEN_SECRET": "short"}, "SESSION_TOKEN_SECRET: value: must be at least 32 bytes"),
        (lambda d: {"CLOUDSHELL_ENV": "staging"}, "CLOUDSHELL_ENV: value: must be development or production"),
    ],
)
def test_bad_configuration_stops_startup_with_one_line(tmp_path, setup, expected):
    """A bad file or value stops start-up with one line naming where, the key and the problem."""
    env = {"PATH": os.environ["PATH"], **write_config(tmp_path), **setup(tmp_path)}
    result = twistd("-n", "--pidfile=", "cloudshell-fog", env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cloudshell-fog: configuration error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_busy_port_stops_startup_with_one_line(tmp_path):
    """A listen address already taken is one line on stderr, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"PATH": os.environ["PATH"], **write_config(tmp_path)}
        result = twistd("-n", "--pidfile=", "--logfile=-", "cloudshell-fog", "--listen", f"127.0.0.1:{port}",
                        env=env, cwd=tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr  # twistd's log has taken over stderr by then
    assert f"cloudshell-fog: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use" in output
    assert "Traceback" not in output


def test_unwritable_audit_log_stops_startup_with_one_line(tmp_path):
    """An AUDIT_LOG that cannot be opened is named in one line; nothing starts."""
    env = {"PATH": os.environ["PATH"], **write_config(tmp_path), "AUDIT_LOG": str(tmp_path / "no/such/dir/a.log"),
           "LISTEN_ADDR": f"127.0.0.1:{free_port()}"}
    result = twistd("-n", "--pidfile=", "--logfile=-", "cloudshell-fog", env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "cloudshell-fog: configuration error: AUDIT_LOG: value: cannot open" in output
    assert "No such file or directory" in output and "Traceback" not in output


def _http(base, method, path, body=None, token="alice"):
    request = urllib.request.Request(base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def gateway_process(tmp_path):
    port = free_port()
    env = {"PATH": os.environ["PATH"], **write_config(tmp_path), "LISTEN_ADDR": f"127.0.0.1:{port}"}
    log = open(tmp_path / "gateway.log", "w")
    proc = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "cloudshell-fog"],
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1):
                break
        except OSError:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)
    try:
        yield proc, base, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def test_gateway_process_serves_and_stops_cleanly(gateway_process):
    """`twistd -n cloudshell-fog` serves the API; SIGTERM sends exit frames, ends every shell, exits 0."""
    proc, base, directory = gateway_process
    status, created = _http(base, "POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 60})
    assert status == 201
    ws = WsClient(f"{created['attach']['ws_url']}?token={created['attach']['token']}")
    ws.type("echo pid-$$-$((9*9))\n")
    out = ws.read_until(b"-81")
    shell_pid = int(out.split(b"pid-")[-1].split(b"-")[0])
    proc.send_signal(signal.SIGTERM)
    code, close = ws.wait_exit()
    assert close == 1000
    assert proc.wait(15) == 0  # a clean stop exits 0 (not twistd's re-raised SIGTERM)
    assert not os.path.exists(f"/proc/{shell_pid}") or \
        open(f"/proc/{shell_pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    assert not os.path.exists(f"{WORK_ROOT}/{created['session_id']}")  # removed before exit
    log = (directory / "gateway.log").read_text()
    assert "Server Shut Down." in log and "Traceback" not in log
    assert SECRET not in log and created["attach"]["token"] not in log
    audit = [json.loads(line) for line in (directory / "audit.jsonl").read_text().splitlines()]
    (ended,) = [e for e in audit if e["event"] == "session.terminated"]
    assert ended["details"]["reason"] == "gateway-restart"
    assert audit[-1]["event"] == "session.detached"  # written before the audit log was closed


def _start(directory, env):
    log = open(directory / "gateway.log", "a")
    proc = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "cloudshell-fog"],
                            env=env, cwd=directory, stdout=log, stderr=subprocess.STDOUT)
    base = "http://" + env["LISTEN_ADDR"]
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1):
                return proc, base
        except OSError:
            assert proc.poll() is None, (directory / "gateway.log").read_text()
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)


def test_restart_after_a_crash_tells_the_truth(tmp_path):
    """A gateway killed with SIGKILL: after a restart, its running session is terminated (gateway-restart)."""
    env = {"PATH": os.environ["PATH"], **write_config(tmp_path), "LISTEN_ADDR": f"127.0.0.1:{free_port()}"}
    proc, base = _start(tmp_path, env)
    try:
        status, created = _http(base, "POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 600})
        assert status == 201
        status, ended = _http(base, "POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 600})
        ws = WsClient(f"{ended['attach']['ws_url']}?token={ended['attach']['token']}")
        ws.type("exit 6\n")
        assert ws.wait_exit()[0] == 6
        proc.kill()  # a crash: no chance to write anything
        proc.wait(10)
        proc, base = _start(tmp_path, env)
        status, got = _http(base, "GET", f"/v1/sessions/{created['session_id']}")
        assert status == 200, got
        assert got["status"] == "terminated"
        assert got["termination"] == {"reason": "gateway-restart", "exit_code": None}
        assert got["placement"] == created["placement"]
        status, got = _http(base, "GET", f"/v1/sessions/{ended['session_id']}")
        assert got["termination"] == {"reason": "exited", "exit_code": 6}
        status, listed = _http(base, "GET", "/v1/sessions")
        assert {s["session_id"] for s in listed["sessions"]} == {created["session_id"], ended["session_id"]}
        status, _ = _http(base, "DELETE", f"/v1/sessions/{created['session_id']}")
        assert status == 200
        assert _http(base, "GET", f"/v1/sessions/{created['session_id']}")[0] == 404
        assert _http(base, "POST", "/v1/sessions", {"profile": "default", "ttl_seconds": 60})[0] == 201
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
