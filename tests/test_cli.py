"""
The `cloudshell` command-line client against a real gateway process (twistd),
driven through a real pseudo-terminal with pexpect.  Every wait is bounded
(pexpect timeout 10 s, subprocess timeouts), every process is stopped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import uuid

import pexpect
import pytest

from cloudshell_fog.client import EscapeFilter, FrameParser, encode_frame, _mask
from support import write_config
from test_twistd import BIN, ROOT, _start, free_port

TIMEOUT = 10
CLI = [sys.executable, "-m", "cloudshell_fog.client"]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
OUTER_PROMPT = "OUTER> "


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A gateway process for the module: its base URL."""
    directory = tmp_path_factory.mktemp("cli-gateway")
    env = {"PATH": os.environ["PATH"], **write_config(directory), "LISTEN_ADDR": f"127.0.0.1:{free_port()}"}
    proc, base = _start(directory, env)
    try:
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # ends every shell it started
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log = (directory / "gateway.log").read_text()
        assert "Traceback" not in log, log


@pytest.fixture
def token():
    """A fresh identity per test (development mode: the token is the user), so quotas and lists are the test's own."""
    return f"cli-{uuid.uuid4().hex}"


@pytest.fixture
def cli_env(gateway, token):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSHELL_")}
    env.update({"CLOUDSHELL_URL": gateway, "CLOUDSHELL_TOKEN": token, "TERM": "xterm", "LC_ALL": "C"})
    return env


def cli(env, *args, input: str | None = None, timeout: float = 30):
    return subprocess.run([*CLI, *args], env=env, input=input, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def assert_clean_error(result, message: str, secrets=()):
    """Exit 1, exactly one line `cloudshell: <message>` on stderr, no traceback, no token."""
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [f"cloudshell: {message}"], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for secret in secrets:
        assert secret not in result.stdout + result.stderr


# ---------------------------------------------------------------- REST commands


def test_create_ls_status_rm(cli_env, token):
    created = cli(cli_env, "create", "--ttl", "600")
    assert created.returncode == 0, created
    session_id = re.search(rf"^session\s+({UUID})$", created.stdout, re.M).group(1)
    assert re.search(r"^node\s+fog-local \(tier fog, region local\)$", created.stdout, re.M), created.stdout
    assert re.search(r"^reasons\s+fog-preferred, healthy, capacity-ok$", created.stdout, re.M)
    assert re.search(r"^attach\s+token expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created.stdout, re.M)
    assert "eyJ" not in created.stdout + created.stderr  # no token in the human output

    listed = cli(cli_env, "ls")
    assert listed.returncode == 0, listed
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "NODE", "TIER", "CREATED", "EXPIRES"]
    assert lines[1].split()[:4] == [session_id, "running", "fog-local", "fog"]

    status = cli(cli_env, "status", session_id)
    assert status.returncode == 0, status
    assert re.search(r"^status\s+running$", status.stdout, re.M), status.stdout
    assert "termination" not in status.stdout

    removed = cli(cli_env, "rm", session_id)
    assert (removed.returncode, removed.stdout) == (0, f"terminated {session_id}\n"), removed

    gone = cli(cli_env, "status", session_id)
    assert_clean_error(gone, "No such session: it does not exist, has ended or was deleted, or is not yours.",
                       [token])
    assert cli(cli_env, "ls").stdout == ""


def test_json_output_and_paging(cli_env):
    """--json prints the API's JSON (before or after the command); ls follows next_cursor past one page."""
    created = cli(cli_env, "--json", "create", "--profile", "small", "--ttl", "60", "--hint", "cloud-local")
    assert created.returncode == 0, created
    body = json.loads(created.stdout)
    assert set(body) == {"session_id", "attach", "placement"}
    assert body["placement"]["node_id"] == "cloud-local"
    assert body["placement"]["reasons"][0] == "hint-node"
    session_id = body["session_id"]
    try:
        got = json.loads(cli(cli_env, "status", session_id, "--json").stdout)
        assert (got["session_id"], got["status"], got["placement"]) == (session_id, "running", body["placement"])
        listed = json.loads(cli(cli_env, "ls", "--json").stdout)
        assert [s["session_id"] for s in listed["sessions"]] == [session_id]
    finally:
        assert json.loads(cli(cli_env, "rm", session_id, "--json").stdout) == {"terminated": True}


def test_ls_follows_the_cursor(monkeypatch):
    """Every page is fetched: the client asks with limit=200 and follows next_cursor until null."""
    from urllib.parse import unquote

    from cloudshell_fog import client

    pages = {None: {"sessions": [{"session_id": "a"}], "next_cursor": "c1"},
             "c1": {"sessions": [{"session_id": "b"}], "next_cursor": "c/2"},
             "c/2": {"sessions": [{"session_id": "c"}], "next_cursor": None}}
    asked = []

    def request(self, method, path, body=None):
        asked.append(path)
        cursor = re.search(r"cursor=([^&]+)", path)
        return pages[unquote(cursor.group(1)) if cursor else None]

    monkeypatch.setattr(client.Api, "request", request)
    assert [s["session_id"] for s in client.Api("http://x", "t").sessions()] == ["a", "b", "c"]
    assert asked == ["/v1/sessions?limit=200", "/v1/sessions?limit=200&cursor=c1",
                     "/v1/sessions?limit=200&cursor=c%2F2"]


# ---------------------------------------------------------------- errors


def test_errors_are_one_clean_line(cli_env, token):
    created = json.loads(cli(cli_env, "create", "--json", "--ttl", "60").stdout)
    attach_token = created["attach"]["token"]
    try:
        # An attach token is not an access token: the gateway's 401 message.
        refused = cli({**cli_env, "CLOUDSHELL_TOKEN": attach_token}, "ls")
        assert_clean_error(refused, "Attach tokens cannot create sessions or call the API; use your access token.",
                           [attach_token])
        # An unknown session, for each command that names one.
        unknown = str(uuid.uuid4())
        for command in ("status", "rm", "connect"):
            assert_clean_error(cli(cli_env, command, unknown),
                               "No such session: it does not exist, has ended or was deleted, or is not yours.",
                               [token])
        # A policy refusal names its rule.
        assert_clean_error(cli(cli_env, "create", "--ttl", "99999"),
                           "ttl_seconds 99999 is longer than profile 'default' allows (3600); ask for 3600 or less. "
                           "(rule profile.max_ttl_seconds)")
        assert_clean_error(cli(cli_env, "create", "--profile", "nope"),
                           "There is no profile named 'nope'; GET /v1/profiles lists the ones you may use.")
    finally:
        cli(cli_env, "rm", created["session_id"])


def test_missing_token_and_bad_url_are_usage_errors(cli_env):
    env = {k: v for k, v in cli_env.items() if k != "CLOUDSHELL_TOKEN"}
    result = cli(env, "ls")
    assert result.returncode == 2
    assert result.stderr == "cloudshell: no access token: pass --token or set CLOUDSHELL_TOKEN\n"
    result = cli(cli_env, "ls", "--url", "ftp://example")
    assert result.returncode == 2 and result.stderr.startswith("cloudshell: --url must be an http")
    result = cli(cli_env, "frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr and "Traceback" not in result.stderr


def test_gateway_down(cli_env, token):
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["ls"], ["create"], ["connect"], ["status", str(uuid.uuid4())]):
        result = cli({**cli_env, "CLOUDSHELL_URL": url}, *args)
        assert_clean_error(result, f"cannot reach the gateway at {url}: Connection refused", [token])
    result = cli(cli_env, "ls", "--url", url, "--token", "secret-token-value")
    assert_clean_error(result, f"cannot reach the gateway at {url}: Connection refused", ["secret-token-value"])


# ---------------------------------------------------------------- the terminal


@pytest.fixture
def term(cli_env):
    """An outer bash in a real pseudo-terminal; the CLI runs inside it, as a user would run it."""
    env = {**cli_env, "PS1": OUTER_PROMPT, "CLI_PYTHON": sys.executable, "INPUTRC": "/dev/null"}
    child = pexpect.spawn("/bin/bash", ["--noprofile", "--norc"], env=env, cwd=str(ROOT), encoding="utf-8",
                          codec_errors="replace", timeout=TIMEOUT, dimensions=(30, 90))
    child.expect_exact(OUTER_PROMPT)
    try:
        yield child
    finally:
        child.close(force=True)


def outer(child, command: str) -> str:
    """Run C{command} in the outer shell; its output between markers."""
    marker = uuid.uuid4().hex[:8]
    child.sendline(f"echo B{marker}; {command}; echo E{marker}")
    child.expect(rf"\r\nB{marker}\r\n(.*)E{marker}\r\n")
    child.expect_exact(OUTER_PROMPT)
    return child.match.group(1) if isinstance(child.match, re.Match) else child.before


def stty_g(child) -> str:
    marker = uuid.uuid4().hex[:8]
    child.sendline(f'echo "S{marker}=$(stty -g)="')
    child.expect(rf"S{marker}=([0-9a-f:]+)=")
    settings = child.match.group(1)
    child.expect_exact(OUTER_PROMPT)
    return settings


def last_status(child) -> int:
    marker = uuid.uuid4().hex[:8]
    child.sendline(f'echo "R{marker}=$?="')
    child.expect(rf"R{marker}=(\d+)=")
    code = int(child.match.group(1))
    child.expect_exact(OUTER_PROMPT)
    return code


def start_connect(child, *args) -> None:
    child.sendline('"$CLI_PYTHON" -m cloudshell_fog.client connect ' + " ".join(args))


def test_connect_type_resize_detach_reconnect_exit(term, cli_env):
    cooked = stty_g(term)

    # connect without an id: a new session, attached; the initial size is the outer terminal's.
    start_connect(term)
    term.expect(rf"session ({UUID}) on fog-local \(tier fog, region local\); type ~\. at the start of a line")
    session_id = term.match.group(1)
    term.expect_exact("$ ")
    term.send("echo hi-$((6*7))\r")
    term.expect_exact("hi-42")
    term.expect_exact("$ ")
    term.send("stty size\r")
    term.expect_exact("30 90")
    term.expect_exact("$ ")

    # resizing the outer terminal resizes the remote one (SIGWINCH -> resize frame)
    term.setwinsize(37, 101)
    term.send("stty size\r")
    term.expect(r"[\r\n](\d+ \d+)\r\n")
    if term.match.group(1) != "37 101":  # the resize frame raced the typed line; the next one sees it
        term.expect_exact("$ ")
        term.send("stty size\r")
        term.expect_exact("37 101")
    term.expect_exact("$ ")

    # ~~ at the start of a line sends one ~; ~ before anything else is sent as typed
    # (typed only once `read` prompts: readline may keep type-ahead for the next command line)
    term.send("read -r -p 'v? ' v\r")
    term.expect_exact("v? ")
    term.send("~~tilde\r")
    term.expect_exact("$ ")
    term.send('echo "<$v>"\r')
    term.expect_exact("<~tilde>")
    term.expect_exact("$ ")
    term.send("read -r -p 'v? ' v\r")
    term.expect_exact("v? ")
    term.send("~q\r")
    term.expect_exact("$ ")
    term.send('echo "<$v>"\r')
    term.expect_exact("<~q>")
    term.expect_exact("$ ")

    # ~. at the start of a line detaches: exit 0, the message, the terminal back in cooked mode
    term.send("~.")
    term.expect_exact(f"detached from {session_id}; reconnect with: cloudshell connect {session_id}")
    term.expect_exact(OUTER_PROMPT)
    assert last_status(term) == 0
    assert stty_g(term) == cooked
    status = cli(cli_env, "status", session_id)
    assert re.search(r"^status\s+running$", status.stdout, re.M), status  # the session kept running

    # connect ID: a fresh attach token; the scrollback shows the earlier output again
    start_connect(term, session_id)
    term.expect_exact("hi-42")
    term.expect_exact("<~q>")
    term.send("\r")
    term.expect_exact("$ ")
    term.send("echo again-$((6*8))\r")
    term.expect_exact("again-48")
    term.expect_exact("$ ")

    # the remote shell's exit status becomes the CLI's
    term.send("exit 7\r")
    term.expect_exact(OUTER_PROMPT)
    assert last_status(term) == 7
    assert stty_g(term) == cooked
    status = cli(cli_env, "status", session_id)
    assert re.search(r"^termination\s+exited, exit code 7$", status.stdout, re.M), status.stdout

    # an ended session cannot be attached: the gateway's message, one line
    start_connect(term, session_id)
    term.expect_exact("cloudshell: The session has ended; create a new one with POST /v1/sessions.")
    term.expect_exact(OUTER_PROMPT)
    assert last_status(term) == 1
    assert "Traceback" not in term.before


def test_sigterm_restores_the_terminal(term, cli_env):
    cooked = stty_g(term)
    start_connect(term, "--profile", "small", "--ttl", "60")
    term.expect(rf"session ({UUID}) on")
    session_id = term.match.group(1)
    term.expect_exact("$ ")
    term.send("echo in-raw-$((5*5))\r")
    term.expect_exact("in-raw-25")
    (pid,) = children(term.pid)
    os.kill(pid, signal.SIGTERM)
    term.expect_exact(f"cloudshell: stopped by signal 15; the session keeps running: cloudshell connect {session_id}")
    term.expect_exact(OUTER_PROMPT)
    assert last_status(term) == 128 + signal.SIGTERM
    assert stty_g(term) == cooked
    assert cli(cli_env, "rm", session_id).returncode == 0


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except OSError:
                pass
    return found


def test_piped_stdin_without_a_terminal(cli_env):
    """stdin not a tty: no raw mode, input piped to the shell, its exit status returned; EOF ends the shell."""
    result = cli(cli_env, "connect", "--ttl", "60", input="echo piped-$((2*3))\nexit 4\n")
    assert result.returncode == 4, result
    assert "piped-6" in result.stdout
    assert re.match(rf"session {UUID} on fog-local", result.stderr)
    result = cli(cli_env, "connect", "--ttl", "60", input="echo eof-$((3*3))\n")
    assert result.returncode == 0, result  # end of input reaches the shell as end-of-file: it exits
    assert "eof-9" in result.stdout


def test_console_script_is_installed(cli_env):
    """`cloudshell` is installed as a console script (setup.py entry_points)."""
    script = BIN / "cloudshell"
    assert script.exists(), "reinstall: pip install -e . --config-settings editable_mode=compat"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "connect" in result.stdout
    result = subprocess.run([str(script), "ls"], env={**cli_env, "CLOUDSHELL_URL": f"http://127.0.0.1:{free_port()}"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "cannot reach the gateway" in result.stderr


# ---------------------------------------------------------------- protocol pieces


def test_frames_are_masked_and_parsed():
    frame = encode_frame(0x1, b"hello", mask_key=b"\x01\x02\x03\x04")
    assert frame[0] == 0x81 and frame[1] == 0x80 | 5 and frame[2:6] == b"\x01\x02\x03\x04"
    assert _mask(frame[6:], b"\x01\x02\x03\x04") == b"hello"
    assert encode_frame(0x1, b"x" * 200)[1] == 0x80 | 126
    assert encode_frame(0x1, b"x" * 70000)[1] == 0x80 | 127


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        return struct.pack("!BB", first, len(payload)) + payload
    if len(payload) < 65536:
        return struct.pack("!BBH", first, 126, len(payload)) + payload
    return struct.pack("!BBQ", first, 127, len(payload)) + payload


def test_parser_joins_fragments_around_control_frames_and_split_reads():
    parser = FrameParser()
    data = (server_frame(0x1, b'{"type":', fin=False) + server_frame(0x9, b"ping!")
            + server_frame(0x0, b'"stdout",', fin=False) + server_frame(0x0, b'"data_b64":""}')
            + server_frame(0x1, "é".encode() * 40000) + server_frame(0x8, struct.pack("!H", 1000) + b"bye"))
    messages = []
    for i in range(0, len(data), 7):  # the socket hands over bytes in arbitrary pieces
        messages += parser.feed(data[i:i + 7])
    assert messages == [("ping", b"ping!"), ("text", '{"type":"stdout","data_b64":""}'),
                        ("text", "é" * 40000), ("close", 1000, "bye")]


def test_escape_filter():
    f = EscapeFilter()
    assert f.feed(b"~~x\r") == (b"~x\r", None)  # ~~ sends one ~
    assert f.feed(b"a~.b") == (b"a~.b", None)  # not at the start of a line
    assert f.feed(b"\n~") == (b"\n", None)  # held until the next byte
    assert f.feed(b"z") == (b"~z", None)  # ~ before anything else is sent as typed
    assert f.feed(b"\r~") == (b"\r", None)
    assert f.feed(b".rest") == (b"", "detach")
    g = EscapeFilter()
    assert g.feed(b"~.") == (b"", "detach")  # at the very beginning
    h = EscapeFilter()
    assert h.feed(b"ls\r~?") == (b"ls\r", "help")


def test_much_output_arrives_whole(cli_env):
    """Output across many frames arrives in order and complete."""
    result = cli(cli_env, "connect", "--ttl", "60", input="seq 1 40000; exit 3\n")
    assert result.returncode == 3, result.stderr
    numbers = [int(line) for line in result.stdout.replace("\r", "").splitlines() if line.isdigit()]
    assert numbers == list(range(1, 40001))


# ---------------------------------------------------------------- TLS (https and wss)


def self_signed(directory):
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudshell test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_and_wss(tmp_path, token):
    """Over TLS: the REST calls use https, the terminal wss (the certificate is checked)."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {"PATH": os.environ["PATH"], **write_config(tmp_path),
           "LISTEN_ADDR": f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"}
    log = open(tmp_path / "gateway.log", "w")
    proc = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "cloudshell-fog"],
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSHELL_")}
    cli_env.update({"CLOUDSHELL_URL": url, "CLOUDSHELL_TOKEN": token, "SSL_CERT_FILE": str(cert)})
    try:
        deadline = time.monotonic() + 20
        while cli(cli_env, "ls").returncode != 0:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.2)
        created = json.loads(cli(cli_env, "create", "--json", "--ttl", "60").stdout)
        assert created["attach"]["ws_url"].startswith(f"wss://127.0.0.1:{port}/")
        result = cli(cli_env, "connect", created["session_id"],
                     input="echo tls-$((4*4)); seq 1 20000 | tail -n 1; exit 5\n")
        assert result.returncode == 5, result.stderr
        assert "tls-16" in result.stdout and "\n20000" in result.stdout.replace("\r", "")
        # without trusting the certificate: a clean error
        untrusted = {k: v for k, v in cli_env.items() if k != "SSL_CERT_FILE"}
        result = cli(untrusted, "ls")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"cloudshell: cannot reach the gateway at {url}: ")
        assert "its TLS certificate was not accepted (self-signed certificate)" in result.stderr, result.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
