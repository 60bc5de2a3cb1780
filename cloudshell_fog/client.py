"""
cloudshell: the command-line client of the gateway.

    cloudshell create [--profile P] [--ttl S] [--hint H] [--image REF]
    cloudshell connect [ID] [the same flags as create]
    cloudshell ls
    cloudshell status ID
    cloudshell rm ID

Global options (before or after the command): --url (default $CLOUDSHELL_URL,
else http://127.0.0.1:8080), --token (default $CLOUDSHELL_TOKEN) and --json.

It is synchronous and uses the standard library only: C{http.client} for the
REST API (docs/api.md) and a small RFC 6455 client over a socket for the
terminal, multiplexed with C{selectors} against the local terminal (put in
raw mode while attached, and always put back).  Errors are one line on
stderr, C{cloudshell: <message>}, exit status 1 (2 for usage errors); tokens
are never printed.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import http.client
import json
import os
import selectors
import signal
import socket
import ssl
import struct
import sys
import termios
import time
import tty
from urllib.parse import quote, urlsplit

DEFAULT_URL = "http://127.0.0.1:8080"
HTTP_TIMEOUT = 30.0  # DELETE answers once the shell has ended: up to about 15 s
CONNECT_TIMEOUT = 10.0  # the gateway drops a WebSocket handshake after 10 s
CLOSE_TIMEOUT = 2.0  # how long to wait for the gateway's close frame
STDIN_CHUNK = 4096  # a stdin frame stays far below WS_MAX_MESSAGE_BYTES (64 KiB)
MAX_MESSAGE = 16 * 1024 * 1024  # refuse a longer message from the gateway
MAX_PENDING_OUTPUT = 1024 * 1024  # stop reading stdin while this much is unsent
EOF_QUIET = 0.5  # after piped input ends: Ctrl-D once the shell has been quiet this long
ESCAPE = 0x7E  # "~"


class ClientError(Exception):
    """A failure the user sees as one line, C{cloudshell: <message>}, and exit status C{exit_code}."""

    exit_code = 1


class UsageError(ClientError):
    exit_code = 2


class Signalled(BaseException):
    """Raised by the SIGTERM/SIGHUP/SIGINT handler while attached, so every C{finally} runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# ---------------------------------------------------------------- REST


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url must be an http:// or https:// URL, not {url!r}")
    try:
        parts.port
    except ValueError:
        raise UsageError(f"--url has a bad port: {url!r}") from None
    return url.rstrip("/")


def _check_token(token: str | None) -> str:
    if not token:
        raise UsageError("no access token: pass --token or set CLOUDSHELL_TOKEN")
    token = token.strip()
    if not token:
        raise UsageError("the access token is empty: pass --token or set CLOUDSHELL_TOKEN")
    if any(c < " " or c == "\x7f" for c in token) or not token.isascii():
        raise UsageError("the access token contains characters that cannot be sent in an HTTP header")
    return token


def _error_message(status: int, reason: str, body: bytes, retry_after: str | None = None) -> str:
    """The gateway's C{error.message} (and C{rule_id}); a plain description for a non-JSON answer."""
    try:
        error = json.loads(body)["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"the gateway answered HTTP {status} {reason}".rstrip()
    if error.get("rule_id"):
        message += f" (rule {error['rule_id']})"
    if retry_after and retry_after.isdigit():
        message += f" Retry in {retry_after} s."
    return message


class Api:
    """The REST API, one request per connection."""

    def __init__(self, url: str, token: str, timeout: float = HTTP_TIMEOUT):
        self.url = url
        self.token = token
        self.timeout = timeout
        parts = urlsplit(url)
        self.secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.secure else 80)
        self.prefix = parts.path.rstrip("/")

    def _connection(self) -> http.client.HTTPConnection:
        if self.secure:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: dict | None = None):
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                   "User-Agent": "cloudshell-cli"}
        data = b""
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if method in ("POST", "PUT"):
            headers["Content-Length"] = str(len(data))
        connection = self._connection()
        try:
            connection.request(method, self.prefix + path, body=data or None, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise ClientError(f"cannot reach the gateway at {self.url}: {_describe(e)}") from None
        finally:
            connection.close()
        if not 200 <= response.status < 300:
            raise ClientError(_error_message(response.status, response.reason, content,
                                             response.getheader("Retry-After")))
        try:
            return json.loads(content)
        except ValueError:
            raise ClientError(f"the gateway at {self.url} answered HTTP {response.status} "
                              "with a body that is not JSON") from None

    def create(self, profile: str, ttl: int, hint: str | None, image: str | None) -> dict:
        body = {"profile": profile, "ttl_seconds": ttl}
        if hint is not None:
            body["placement_hint"] = hint
        if image is not None:
            body["image_ref"] = image
        return self.request("POST", "/v1/sessions", body)

    def sessions(self) -> list[dict]:
        """Every session of the caller, following C{next_cursor}."""
        found, cursor = [], None
        while True:
            path = "/v1/sessions?limit=200" + (f"&cursor={quote(cursor, safe='')}" if cursor else "")
            page = self.request("GET", path)
            found.extend(page.get("sessions") or [])
            cursor = page.get("next_cursor")
            if not cursor:
                return found

    def get(self, session_id: str) -> dict:
        return self.request("GET", f"/v1/sessions/{_path_id(session_id)}")

    def delete(self, session_id: str) -> dict:
        return self.request("DELETE", f"/v1/sessions/{_path_id(session_id)}")

    def attach(self, session_id: str) -> dict:
        return self.request("POST", f"/v1/sessions/{_path_id(session_id)}/attach")


def _path_id(session_id: str) -> str:
    return quote(session_id, safe="")


def _describe(error: BaseException) -> str:
    if isinstance(error, socket.timeout):
        return "timed out"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"its TLS certificate was not accepted ({error.verify_message or error.reason})"
    if isinstance(error, ssl.SSLError):
        if error.reason == "WRONG_VERSION_NUMBER":
            return "it does not answer TLS there (an http:// URL, perhaps?)"
        return f"TLS failed ({error.reason or error})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


# ---------------------------------------------------------------- WebSocket (RFC 6455)

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ProtocolError(Exception):
    pass


def encode_frame(opcode: int, payload: bytes, mask_key: bytes | None = None) -> bytes:
    """One final frame, masked as a client must (RFC 6455 section 5.3)."""
    mask_key = os.urandom(4) if mask_key is None else mask_key
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + mask_key + _mask(payload, mask_key)


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


class FrameParser:
    """
    Bytes from the server in, whole messages out: C{("text", str)},
    C{("binary", bytes)}, C{("ping", bytes)}, C{("pong", bytes)} and
    C{("close", code, reason)}.  Fragmented messages are joined; control
    frames may come between their fragments.
    """

    def __init__(self, max_message: int = MAX_MESSAGE):
        self.buffer = bytearray()
        self.max_message = max_message
        self.fragments: bytearray | None = None
        self.fragment_opcode = 0

    def feed(self, data: bytes) -> list[tuple]:
        self.buffer += data
        messages = []
        while True:
            frame = self._frame()
            if frame is None:
                return messages
            message = self._message(*frame)
            if message is not None:
                messages.append(message)

    def _frame(self):
        buf = self.buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        if first & 0x70:
            raise ProtocolError("the gateway sent a frame with reserved bits set")
        fin, opcode, masked, length = bool(first & 0x80), first & 0x0F, bool(second & 0x80), second & 0x7F
        offset = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, offset = struct.unpack_from("!H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, offset = struct.unpack_from("!Q", buf, 2)[0], 10
        if length > self.max_message:
            raise ProtocolError("the gateway sent a frame that is too large")
        key = None
        if masked:  # servers must not mask; accept it anyway
            if len(buf) < offset + 4:
                return None
            key, offset = bytes(buf[offset:offset + 4]), offset + 4
        if len(buf) < offset + length:
            return None
        payload = bytes(buf[offset:offset + length])
        del buf[:offset + length]
        if key is not None:
            payload = _mask(payload, key)
        return fin, opcode, payload

    def _message(self, fin: bool, opcode: int, payload: bytes):
        if opcode >= 0x8:  # control frames: never fragmented, at most 125 bytes
            if not fin or len(payload) > 125:
                raise ProtocolError("the gateway sent a bad control frame")
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return ("close", code, payload[2:].decode("utf-8", "replace"))
            if opcode == OP_PING:
                return ("ping", payload)
            if opcode == OP_PONG:
                return ("pong", payload)
            raise ProtocolError(f"the gateway sent an unknown control frame (opcode {opcode})")
        if opcode == OP_CONTINUATION:
            if self.fragments is None:
                raise ProtocolError("the gateway sent a continuation frame with no message to continue")
            self.fragments += payload
            if len(self.fragments) > self.max_message:
                raise ProtocolError("the gateway sent a message that is too large")
            if not fin:
                return None
            opcode, payload, self.fragments = self.fragment_opcode, bytes(self.fragments), None
        elif opcode in (OP_TEXT, OP_BINARY):
            if self.fragments is not None:
                raise ProtocolError("the gateway started a message inside another")
            if not fin:
                self.fragments, self.fragment_opcode = bytearray(payload), opcode
                return None
        else:
            raise ProtocolError(f"the gateway sent an unknown frame (opcode {opcode})")
        if opcode == OP_TEXT:
            try:
                return ("text", payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError("the gateway sent a text message that is not UTF-8") from None
        return ("binary", payload)


class WebSocket:
    """A client WebSocket on a non-blocking socket: queue frames, flush when writable, parse what arrives."""

    def __init__(self, sock: socket.socket, leftover: bytes = b""):
        self.sock = sock
        self.parser = FrameParser()
        self.leftover = leftover
        self.outgoing = bytearray()
        self._retry: bytes | None = None  # a TLS write that must be repeated as it was
        self.close_sent = False
        self.close_received: tuple[int, str] | None = None
        sock.setblocking(False)

    @classmethod
    def connect(cls, ws_url: str, token: str, timeout: float = CONNECT_TIMEOUT) -> "WebSocket":
        """Open C{ws_url?token=...}; a refusal raises L{ClientError} with the gateway's message."""
        parts = urlsplit(ws_url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ClientError(f"the gateway gave an attach URL this client cannot use: {ws_url}")
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        where = f"{parts.scheme}://{parts.netloc}{parts.path}"  # never the token
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {parts.path or '/'}?token={quote(token, safe='')} HTTP/1.1\r\n"
                   f"Host: {parts.netloc}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   "User-Agent: cloudshell-cli\r\n\r\n").encode()
        try:
            sock = socket.create_connection((parts.hostname, port), timeout=timeout)
        except OSError as e:
            raise ClientError(f"cannot reach the gateway at {where}: {_describe(e)}") from None
        try:
            if secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
            sock.sendall(request)
            head, rest = _read_head(sock)
            status, reason, headers = _parse_head(head)
            if status != 101:
                body = _read_body(sock, headers, rest)
                raise ClientError(_error_message(status, reason, body))
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            if headers.get("upgrade", "").lower() != "websocket" or headers.get("sec-websocket-accept") != accept:
                raise ClientError(f"the server at {where} did not accept the WebSocket upgrade properly")
        except ClientError:
            sock.close()
            raise
        except (OSError, ProtocolError) as e:
            sock.close()
            raise ClientError(f"cannot attach at {where}: {_describe(e)}") from None
        return cls(sock, rest)

    # -- sending

    def send_text(self, text: str) -> None:
        self.outgoing += encode_frame(OP_TEXT, text.encode("utf-8"))

    def send_json(self, message: dict) -> None:
        self.send_text(json.dumps(message, separators=(",", ":")))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        if not self.close_sent:
            self.close_sent = True
            self.outgoing += encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])

    def wants_write(self) -> bool:
        return bool(self.outgoing)

    def flush(self) -> None:
        """Send what the socket takes now."""
        while self.outgoing:
            # After a TLS write that wanted to be retried, repeat exactly that write.
            chunk = self._retry if self._retry is not None else bytes(self.outgoing[:65536])
            try:
                sent = self.sock.send(chunk)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                self._retry = chunk
                return
            except BlockingIOError:
                return
            self._retry = None
            del self.outgoing[:sent]  # the chunk is always a prefix of what is queued
            if sent == 0:
                return

    # -- receiving

    def pending(self) -> bool:
        """Whether bytes are already waiting without the socket becoming readable (leftovers, TLS buffer)."""
        return bool(self.leftover) or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0)

    def receive(self) -> list[tuple] | None:
        """The messages from what can be read now; None when the connection has ended."""
        data, self.leftover = self.leftover, b""
        if not data:
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                return []
            except ssl.SSLError:
                return None
            except OSError:
                return None
            if not data:
                return None
        messages = self.parser.feed(data)
        for message in messages:
            if message[0] == "ping":
                self.outgoing += encode_frame(OP_PONG, message[1])
            elif message[0] == "close":
                self.close_received = (message[1], message[2])
                self.send_close(1000 if message[1] in (1000, 1005) else message[1])
        return messages

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _read_head(sock) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > 65536:
            raise ProtocolError("the response headers are too long")
        chunk = sock.recv(4096)
        if not chunk:
            raise ProtocolError("the connection closed during the WebSocket handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
        raise ProtocolError("the server did not answer with HTTP")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line[1]), status_line[2] if len(status_line) > 2 else "", headers


def _read_body(sock, headers: dict[str, str], body: bytes) -> bytes:
    length = headers.get("content-length", "")
    wanted = min(int(length), 65536) if length.isdigit() else 65536
    try:
        while len(body) < wanted:
            chunk = sock.recv(wanted - len(body))
            if not chunk:
                break
            body += chunk
    except OSError:
        pass
    return body


# ---------------------------------------------------------------- the local terminal


class EscapeFilter:
    """
    ssh-style escapes in typed input: C{~.} at the start of a line (the very
    beginning, or after CR or LF) detaches, C{~~} sends one C{~}, C{~?} asks
    for help, and C{~} before anything else is sent as typed.
    """

    def __init__(self):
        self.line_start = True
        self.after_tilde = False

    def feed(self, data: bytes) -> tuple[bytes, str | None]:
        """C{(bytes to send, action)}: action is None, C{"detach"} or C{"help"}; input after an action is dropped."""
        out = bytearray()
        for byte in data:
            if self.after_tilde:
                self.after_tilde = False
                if byte == ord("."):
                    return bytes(out), "detach"
                if byte == ord("?"):
                    self.line_start = False
                    return bytes(out), "help"
                out.append(ESCAPE)
                if byte != ESCAPE:
                    out.append(byte)
                self.line_start = byte in (0x0D, 0x0A) if byte != ESCAPE else False
            elif self.line_start and byte == ESCAPE:
                self.after_tilde = True
            else:
                out.append(byte)
                self.line_start = byte in (0x0D, 0x0A)
        return bytes(out), None


ESCAPE_HELP = ("Supported escape sequences (at the start of a line):\r\n"
               "  ~.  detach (the session keeps running)\r\n"
               "  ~~  send a literal ~\r\n"
               "  ~?  this message\r\n")


def window_size(*fds: int) -> tuple[int, int] | None:
    """C{(cols, rows)} of the first of C{fds} that is a terminal with a size."""
    for fd in fds:
        try:
            rows, cols = struct.unpack("hhhh", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        except OSError:
            continue
        if rows > 0 and cols > 0:
            return min(cols, 1000), min(rows, 1000)
    return None


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            selectors.DefaultSelector().select(0.05)  # a non-blocking terminal: wait a moment
            continue
        view = view[written:]


class Attachment:
    """The local terminal attached to one session's WebSocket until the shell exits or the user detaches."""

    def __init__(self, ws: WebSocket, session_id: str, stdin_fd: int = 0, stdout_fd: int = 1, stderr=None):
        self.ws = ws
        self.session_id = session_id
        self.stdin_fd, self.stdout_fd = stdin_fd, stdout_fd
        self.stderr = stderr or sys.stderr
        self.interactive = os.isatty(stdin_fd)
        self.escapes = EscapeFilter()
        self.exit_code: int | None = None
        self.size: tuple[int, int] | None = None
        self.winch = False
        self.last_activity = time.monotonic()  # last output received or end-of-file sent

    def run(self) -> int:
        """Attach; return the exit status for the process."""
        saved = None
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous = {}

        def on_winch(signum, frame):
            self.winch = True
            try:
                os.write(wake_w, b"w")
            except OSError:
                pass

        def on_stop(signum, frame):
            raise Signalled(signum)

        try:
            # SIGINT comes only from kill(1) while the terminal is raw (Ctrl-C is sent to the shell).
            for signum, handler in ((signal.SIGWINCH, on_winch), (signal.SIGTERM, on_stop),
                                    (signal.SIGHUP, on_stop), (signal.SIGINT, on_stop)):
                previous[signum] = signal.signal(signum, handler)
            if self.interactive:
                saved = termios.tcgetattr(self.stdin_fd)
                tty.setraw(self.stdin_fd, termios.TCSANOW)
            outcome = self._loop(wake_r)
        except Signalled as e:
            self.ws.close()
            self._restore(saved, previous)
            saved, previous = None, {}
            self._say(f"cloudshell: stopped by signal {e.signum}; the session keeps running: "
                      f"cloudshell connect {self.session_id}")
            return 128 + e.signum
        finally:
            self._restore(saved, previous)
            self.ws.close()
            os.close(wake_r)
            os.close(wake_w)
        return self._finish(outcome)

    def _restore(self, saved, previous) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if saved is not None:
            try:
                termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, saved)
            except termios.error:
                pass  # the terminal is gone (SIGHUP)

    def _say(self, line: str) -> None:
        try:
            print(line, file=self.stderr, flush=True)
        except OSError:
            pass

    def _finish(self, outcome: tuple[str, object]) -> int:
        kind, detail = outcome
        if kind == "exit":
            return int(detail)
        if kind == "detach":
            self._say(("\n" if self.interactive else "") +
                      f"detached from {self.session_id}; reconnect with: cloudshell connect {self.session_id}")
            return 0
        if kind == "detach-quiet":  # our output was closed (a pipe reader went away)
            return 1
        if kind == "closed":
            code, reason = detail
            raise ClientError(f"the gateway closed the connection (code {code}"
                              f"{': ' + reason if reason else ''}); the session may still be running: "
                              f"cloudshell connect {self.session_id}")
        raise ClientError(f"lost the connection to the gateway ({detail}); the session may still be running: "
                          f"cloudshell connect {self.session_id}")

    def _send_size(self) -> None:
        self.winch = False
        size = window_size(self.stdin_fd, self.stdout_fd)
        if size is not None and size != self.size:
            self.size = size
            self.ws.send_json({"type": "resize", "cols": size[0], "rows": size[1]})

    def _loop(self, wake_fd: int) -> tuple[str, object]:
        ws = self.ws
        selector = selectors.DefaultSelector()
        selector.register(ws.sock, selectors.EVENT_READ)
        selector.register(wake_fd, selectors.EVENT_READ)
        stdin_open, stdin_registered = True, False
        closing_until: float | None = None  # set once we wait for the gateway's close
        result: tuple[str, object] | None = None
        self._send_size()
        try:
            while True:
                # Read stdin only while attached and while what we owe the gateway is small.
                want_stdin = stdin_open and closing_until is None and len(ws.outgoing) < MAX_PENDING_OUTPUT
                if want_stdin != stdin_registered:
                    if want_stdin:
                        selector.register(self.stdin_fd, selectors.EVENT_READ)
                    else:
                        selector.unregister(self.stdin_fd)
                    stdin_registered = want_stdin
                selector.modify(ws.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if ws.wants_write() else 0))
                timeout = None
                if ws.pending():
                    timeout = 0
                elif closing_until is not None:
                    timeout = max(0.0, closing_until - time.monotonic())
                elif not stdin_open and not self.interactive:
                    timeout = max(0.0, self.last_activity + EOF_QUIET - time.monotonic())
                events = selector.select(timeout)
                ready = {key.fd for key, mask in events if mask & selectors.EVENT_READ}
                writable = any(mask & selectors.EVENT_WRITE for _, mask in events)
                if wake_fd in ready:
                    try:
                        while os.read(wake_fd, 64):
                            pass
                    except BlockingIOError:
                        pass
                if self.winch and closing_until is None:
                    self._send_size()
                if ws.sock.fileno() in ready or ws.pending():
                    messages = ws.receive()
                    if messages is None:  # the connection ended
                        if result is not None:
                            return result
                        if ws.close_received is not None:
                            return ("closed", ws.close_received)
                        return ("lost", "the connection was closed")
                    for message in messages:
                        if closing_until is not None and result is not None and result[0] == "detach":
                            continue  # detaching: output is no longer shown
                        outcome = self._handle(message)
                        if outcome is not None and result is None:
                            result = outcome
                            if closing_until is None:
                                closing_until = time.monotonic() + CLOSE_TIMEOUT
                    if ws.close_received is not None:
                        ws.flush()  # our answering close frame, best effort
                        if result is not None:
                            return result
                        return ("closed", ws.close_received)
                if self.stdin_fd in ready and stdin_registered:
                    outcome = self._read_stdin()
                    if outcome == "eof":
                        stdin_open = False
                    elif outcome is not None:
                        result = outcome
                        ws.send_close(1000, "detached")
                        closing_until = time.monotonic() + CLOSE_TIMEOUT
                if (not stdin_open and not self.interactive and closing_until is None
                        and time.monotonic() >= self.last_activity + EOF_QUIET):
                    self._send_eof()
                if writable or ws.wants_write():
                    ws.flush()
                if closing_until is not None and time.monotonic() >= closing_until:
                    return result if result is not None else ("lost", "timed out")
        except ProtocolError as e:
            return ("lost", str(e))
        finally:
            selector.close()

    def _handle(self, message: tuple):
        """One message from the gateway; an outcome when it ends the attachment."""
        if message[0] != "text":
            return None
        try:
            frame = json.loads(message[1])
        except ValueError:
            return None
        if not isinstance(frame, dict):
            return None
        if frame.get("type") == "stdout":
            try:
                data = base64.b64decode(frame.get("data_b64", ""), validate=True)
            except (ValueError, TypeError):
                return None
            self.last_activity = time.monotonic()
            try:
                write_all(self.stdout_fd, data)
            except BrokenPipeError:
                self.ws.send_close(1000, "detached")
                return ("detach-quiet", None)
            return None
        if frame.get("type") == "exit":
            code = frame.get("code")
            self.exit_code = code if isinstance(code, int) and not isinstance(code, bool) else 1
            self.ws.send_close(1000)
            return ("exit", self.exit_code)
        return None

    def _read_stdin(self):
        try:
            data = os.read(self.stdin_fd, STDIN_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""  # the terminal went away
        if self.winch:
            self._send_size()  # a resize comes before the input typed after it
        if not data:
            if not self.interactive:
                self.last_activity = time.monotonic()  # the first Ctrl-D once the shell is quiet
            return "eof"
        if self.interactive:
            data, action = self.escapes.feed(data)
            self._send_stdin(data)
            if action == "detach":
                return ("detach", None)
            if action == "help":
                write_all(self.stdout_fd, b"~?\r\n" + ESCAPE_HELP.encode())
            return None
        self._send_stdin(data)
        return None

    def _send_eof(self) -> None:
        """
        Piped input has ended: type an end-of-file character (Ctrl-D), as at
        a terminal, so a shell at its prompt exits.  It is sent only once the
        shell has been quiet, and again after each quiet spell: one typed
        while a command runs can be lost when the shell's line editor takes
        the terminal back.
        """
        self.last_activity = time.monotonic()
        self._send_stdin(b"\x04")

    def _send_stdin(self, data: bytes) -> None:
        if data:
            self.ws.send_json({"type": "stdin", "data_b64": base64.b64encode(data).decode("ascii")})


def attach(attach_grant: dict, session_id: str) -> int:
    ws = WebSocket.connect(attach_grant["ws_url"], attach_grant["token"])
    return Attachment(ws, session_id).run()


# ---------------------------------------------------------------- commands


def _placement_text(placement) -> str:
    if not placement:
        return "-"
    return f"{placement.get('node_id')} (tier {placement.get('tier')}, region {placement.get('region')})"


def _print_json(value) -> None:
    print(json.dumps(value, indent=2))


def _rows(pairs) -> None:
    width = max(len(name) for name, _ in pairs)
    for name, value in pairs:
        print(f"{name.ljust(width)}  {value}")


def cmd_create(api: Api, args) -> int:
    created = api.create(args.profile, args.ttl, args.hint, args.image)
    if args.json:
        _print_json(created)
        return 0
    placement = created.get("placement") or {}
    _rows([
        ("session", created["session_id"]),
        ("node", _placement_text(placement)),
        ("reasons", ", ".join(placement.get("reasons") or []) or "-"),
        ("attach", f"token expires {created['attach']['expires_at']}; "
                   f"connect with: cloudshell connect {created['session_id']}"),
    ])
    return 0


def cmd_connect(api: Api, args) -> int:
    if args.id:
        session_id = args.id
        grant = api.attach(session_id)["attach"]
    else:
        created = api.create(args.profile, args.ttl, args.hint, args.image)
        session_id, grant = created["session_id"], created["attach"]
        print(f"session {session_id} on {_placement_text(created.get('placement'))}; "
              "type ~. at the start of a line to detach", file=sys.stderr, flush=True)
    return attach(grant, session_id)


def cmd_ls(api: Api, args) -> int:
    sessions = api.sessions()
    if args.json:
        _print_json({"sessions": sessions})
        return 0
    header = ("ID", "STATUS", "NODE", "TIER", "CREATED", "EXPIRES")
    rows = [header]
    for s in sessions:
        placement = s.get("placement") or {}
        rows.append((s.get("session_id", "-"), s.get("status", "-"), placement.get("node_id") or "-",
                     placement.get("tier") or "-", s.get("created_at") or "-", s.get("expires_at") or "-"))
    if len(rows) == 1:
        print("no sessions", file=sys.stderr)
        return 0
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_status(api: Api, args) -> int:
    session = api.get(args.id)
    if args.json:
        _print_json(session)
        return 0
    placement = session.get("placement") or {}
    pairs = [
        ("session", session.get("session_id")),
        ("status", session.get("status")),
        ("node", _placement_text(placement)),
        ("reasons", ", ".join(placement.get("reasons") or []) or "-"),
        ("created", session.get("created_at") or "-"),
        ("expires", session.get("expires_at") or "-"),
        ("image", session.get("image_ref") or "-"),
    ]
    termination = session.get("termination")
    if termination:
        code = termination.get("exit_code")
        pairs.append(("termination", f"{termination.get('reason')}, exit code "
                                     f"{code if code is not None else 'unknown'}"))
    _rows(pairs)
    return 0


def cmd_rm(api: Api, args) -> int:
    answer = api.delete(args.id)
    if args.json:
        _print_json(answer)
    else:
        print(f"terminated {args.id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    def global_options(parser, defaults: bool):
        keep = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
        parser.add_argument("--url", default=keep(None), help="the gateway (default: $CLOUDSHELL_URL, else %s)"
                            % DEFAULT_URL)
        parser.add_argument("--token", default=keep(None), help="access token (default: $CLOUDSHELL_TOKEN)")
        parser.add_argument("--json", action="store_true", default=keep(False), help="print the API's JSON")

    def session_options(parser):
        parser.add_argument("--profile", default="default", help="policy profile (default: default)")
        parser.add_argument("--ttl", type=int, default=3600, metavar="SECONDS",
                            help="session lifetime in seconds (default: 3600)")
        parser.add_argument("--hint", help="a node id or region to prefer")
        parser.add_argument("--image", metavar="REF", help="an OCI image reference")

    parser = argparse.ArgumentParser(
        prog="cloudshell", description="Command-line client of the cloudshell-fog gateway.",
        epilog="While connected, type ~. at the start of a line to detach (the session keeps running) "
               "and ~~ to send a ~.")
    global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    global_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", parents=[common], help="create a session")
    session_options(create)
    create.set_defaults(run=cmd_create)

    connect = commands.add_parser("connect", parents=[common],
                                  help="attach this terminal to a session (a new one without ID)")
    connect.add_argument("id", nargs="?", metavar="ID", help="session id (default: create a session)")
    session_options(connect)
    connect.set_defaults(run=cmd_connect)

    ls = commands.add_parser("ls", parents=[common], help="list your sessions")
    ls.set_defaults(run=cmd_ls)

    status = commands.add_parser("status", parents=[common], help="show one session")
    status.add_argument("id", metavar="ID")
    status.set_defaults(run=cmd_status)

    rm = commands.add_parser("rm", parents=[common], help="end a session")
    rm.add_argument("id", metavar="ID")
    rm.set_defaults(run=cmd_rm)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    token = None
    try:
        url = _check_url(args.url or os.environ.get("CLOUDSHELL_URL") or DEFAULT_URL)
        token = _check_token(args.token if args.token is not None else os.environ.get("CLOUDSHELL_TOKEN"))
        return args.run(Api(url, token), args)
    except ClientError as e:
        _fail(str(e), token)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # nothing more can be printed; silence the flush at exit
        except OSError:
            pass
        return 1
    except Exception as e:  # never a traceback for the user; CLOUDSHELL_DEBUG=1 shows it
        if os.environ.get("CLOUDSHELL_DEBUG"):
            raise
        _fail(f"unexpected error: {type(e).__name__}: {e}", token)
        return 1


def _fail(message: str, token: str | None = None) -> None:
    if token:
        message = message.replace(token, "<token>")  # never print the access token
    try:
        print(f"cloudshell: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
