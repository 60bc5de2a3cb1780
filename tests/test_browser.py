"""
The browser terminal (GET /) in a real headless Chromium: Debian's `chromium`, driven by playwright's
synchronous API with that browser (no `playwright install`).

The gateway runs in the test reactor (the `gateway` fixture); each test's browser work runs in one
thread through `in_thread`, so the reactor keeps serving while the browser waits. Every wait has its
own bound, and the browser is closed whatever happens. Screenshots go to test-artifacts/browser-*.png.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted

from support import in_thread

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
STEP_MS = 10_000  # the bound on any one wait in the page
SCENARIO_SECONDS = 60  # the bound on one test's browser work (launch included)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"the browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")


class Browser:
    """One headless Chromium with one page on the gateway; collects what the page logs as errors."""

    def __init__(self, base: str, width: int = 1280, height: int = 720):
        self.base, self.size = base, {"width": width, "height": height}
        self.errors: list[str] = []
        self.expected: list[str] = []  # regular expressions of errors a test provokes on purpose
        self.requests: list[str] = []
        self.websockets: list[str] = []

    def __enter__(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                             timeout=30_000)
        except BaseException:
            self._playwright.stop()
            raise
        try:
            self.page = self._browser.new_page(viewport=self.size)
            self.page.set_default_timeout(STEP_MS)
            self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
            self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
            self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}"))
            self.page.on("request", lambda r: self.requests.append(r.url))
            self.page.on("websocket", lambda ws: self.websockets.append(ws.url))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            self._browser.close()
        finally:
            self._playwright.stop()

    # -- the page

    def open(self, path: str = "/") -> None:
        self.page.goto(self.base + path, wait_until="load")
        self.page.wait_for_function("() => window.cloudshell && window.cloudshell.term")

    def create(self, token: str) -> None:
        """Type the token, press Create, wait for the shell's first prompt."""
        self.page.fill("#token", token)
        self.page.click("#create")
        self.page.wait_for_function("() => window.cloudshell.connected")
        self.wait_text(r"^\$ ")

    def run(self, command: str) -> None:
        """Type a command line into the terminal, as a person would."""
        self.page.click("#terminal .xterm-screen")
        self.page.keyboard.type(command)
        self.page.keyboard.press("Enter")

    def text(self) -> str:
        return self.page.evaluate("() => window.cloudshell.text()")

    def wait_text(self, pattern: str, timeout: float = STEP_MS) -> str:
        """Wait until the terminal's text matches C{pattern} (multiline); return that text."""
        try:
            self.page.wait_for_function("re => new RegExp(re, 'm').test(window.cloudshell.text())",
                                        arg=pattern, timeout=timeout)
        except Exception as e:
            raise AssertionError(f"{pattern!r} not in the terminal: {self.text()[-1500:]!r}") from e
        return self.text()

    def wait_status(self, pattern: str) -> str:
        try:
            self.page.wait_for_function("re => new RegExp(re).test(document.getElementById('status').textContent)",
                                        arg=pattern)
        except Exception as e:
            raise AssertionError(f"{pattern!r} not in the status bar: {self.status()!r}") from e
        return self.status()

    def status(self) -> str:
        return self.page.inner_text("#status")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"browser-{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def assert_clean(self) -> None:
        unexpected = [e for e in self.errors if not any(re.search(p, e) for p in self.expected)]
        assert not unexpected, unexpected
        outside = [u for u in self.requests if not u.startswith((self.base + "/", "data:"))]
        assert not outside, f"the page fetched from elsewhere: {outside}"


def scenario(fn):
    """Run C{fn(browser)} against the gateway in a thread, bounded; the page must log no error."""

    async def run(gateway, seconds: float = SCENARIO_SECONDS, base: str | None = None, **size):
        def work():
            with Browser(base or gateway.base, **size) as browser:
                try:
                    result = fn(browser)
                finally:
                    browser.screenshot(fn.__name__.replace("_", "-"))
                browser.assert_clean()
                return result

        return await in_thread(work, seconds=seconds)

    return run


def output_lines(text: str, pattern: str) -> list[re.Match]:
    return [m for m in (re.fullmatch(pattern, line.rstrip()) for line in text.splitlines()) if m]


# ---------------------------------------------------------------- the cases


@scenario
def load_page(browser: Browser):
    browser.open()
    page = browser.page
    assert page.title() == "cloudshell-fog terminal"
    for label in ("Access token", "Profile", "TTL (seconds)", "Placement hint"):
        assert page.get_by_label(label, exact=True).count() == 1, label
    assert page.is_disabled("#reconnect") and page.is_disabled("#terminate")
    assert page.evaluate("() => typeof window.Terminal === 'function' && typeof window.FitAddon.FitAddon")  \
        == "function"
    # xterm.js's generated styles are in effect despite style-src 'self' (static/csp-styles.js)
    assert page.evaluate("() => document.adoptedStyleSheets.length") >= 1
    assert page.evaluate("() => document.querySelectorAll('style').length") == 0
    # output is UTF-8 bytes, and a character may be split across two frames
    page.evaluate("() => { window.cloudshell.receive(new Uint8Array([0x0d, 0x0a, 0x6f, 0x6b, 0x20, 0xe2, 0x9c]));"
                  " window.cloudshell.receive(new Uint8Array([0x93, 0x0d, 0x0a])); }")
    browser.wait_text("^ok \u2713$")
    return page.evaluate("() => window.cloudshell.term.cols")


@pytest_twisted.ensureDeferred
async def test_page_loads_without_console_errors(gateway):
    """The page, xterm.js and its addon load under the gateway's CSP, with nothing logged as an error."""
    cols = await load_page(gateway)
    assert cols > 80  # fitted to the 1280-pixel window


@scenario
def create_and_type(browser: Browser):
    browser.open()
    page = browser.page
    browser.create("alice-in-the-browser")
    status, placement = browser.status(), page.inner_text("#placement")
    browser.run("echo hi-$RANDOM")
    text = browser.wait_text(r"^hi-\d+$")
    browser.run("echo hello from $CLOUDSHELL_NODE_ID; stty size")
    browser.wait_text(r"^\d+ \d+$")
    browser.run("echo ünï-✓-$((40+2))")  # typed UTF-8 goes out as UTF-8 bytes, and comes back
    browser.wait_text("^ünï-✓-42$")
    stored = page.evaluate("() => [sessionStorage.getItem('cloudshell-fog.access-token'), localStorage.length,"
                           " location.href, document.cookie]")
    return status, placement, text, stored, page.evaluate("() => window.cloudshell.sessionId")


@pytest_twisted.ensureDeferred
async def test_session_is_created_and_typing_reaches_the_shell(gateway):
    """A token typed into the page creates a session; keystrokes run in its shell; the output shows."""
    status, placement, text, stored, session_id = await create_and_type(gateway)
    assert "Connected to session" in status
    assert "node fog-local" in placement and "tier fog" in placement and "fog-preferred" in placement
    assert output_lines(text, r"hi-\d+"), text
    token, local_items, url, cookies = stored
    assert token == "alice-in-the-browser" and local_items == 0 and cookies == ""
    assert "alice" not in url
    # the session belongs to the token typed into the page
    session = await gateway.request("GET", f"/v1/sessions/{session_id}", token="alice-in-the-browser")
    assert session.status == 200 and session.json["status"] == "running"
    attached = [e for e in gateway.audit_events() if e["event"] == "session.attached"]
    assert [e["session_id"] for e in attached] == [session_id]


@scenario
def resize(browser: Browser):
    browser.open()
    page = browser.page
    browser.create("resizer")
    browser.run("stty size")
    browser.wait_text(r"^\d+ \d+$")
    before = page.evaluate("() => [window.cloudshell.term.rows, window.cloudshell.term.cols]")
    page.set_viewport_size({"width": 760, "height": 480})
    page.wait_for_function("cols => window.cloudshell.term.cols < cols", arg=before[1])
    after = page.evaluate("() => [window.cloudshell.term.rows, window.cloudshell.term.cols]")
    browser.run("stty size")
    deadline = time.monotonic() + STEP_MS / 1000
    while len(sizes := output_lines(browser.text(), r"(\d+) (\d+)")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return before, after, [(int(m[1]), int(m[2])) for m in sizes]


@pytest_twisted.ensureDeferred
async def test_resizing_the_window_resizes_the_terminal(gateway):
    """The terminal fits the window, and a smaller window sends a resize that `stty size` reports."""
    before, after, sizes = await resize(gateway)
    assert len(sizes) == 2, sizes
    assert sizes[0] == tuple(before) and sizes[1] == tuple(after)
    assert after[0] < before[0] and after[1] < before[1]
    resizes = [(e["details"]["rows"], e["details"]["cols"]) for e in gateway.audit_events()
               if e["event"] == "pty.resize"]
    assert tuple(before) in resizes and tuple(after) in resizes


@scenario
def exit_code(browser: Browser):
    browser.open()
    page = browser.page
    browser.create("exiter")
    browser.run("exit 4")
    status = browser.wait_status("exited with code")
    page.wait_for_function("() => !window.cloudshell.connected")
    state = page.evaluate("() => [window.cloudshell.exited, window.cloudshell.term.options.disableStdin]")
    return status, state, page.is_disabled("#reconnect"), page.is_disabled("#terminate")


@pytest_twisted.ensureDeferred
async def test_exit_code_is_shown_and_input_stops(gateway):
    """`exit 4` shows the exit code in the status bar and disables input."""
    status, state, reconnect_disabled, terminate_disabled = await exit_code(gateway)
    assert "Shell exited with code 4" in status
    assert state == [True, True]
    assert reconnect_disabled and terminate_disabled


@scenario
def reconnect(browser: Browser):
    browser.open()
    page = browser.page
    browser.create("reconnector")
    browser.run("echo hi-$RANDOM")
    line = output_lines(browser.wait_text(r"^hi-\d+$"), r"hi-\d+")[0][0]
    page.click("#reconnect")
    page.wait_for_function("() => window.cloudshell.attachments === 2 && window.cloudshell.connected")
    replayed = browser.wait_text("^" + line + "$")
    browser.run("echo again-$((2+3))")
    browser.wait_text(r"^again-5$")
    return line, replayed, browser.status()


@pytest_twisted.ensureDeferred
async def test_reconnect_replays_the_scrollback_once(gateway):
    """Reconnect gets a fresh attach token, clears the screen, and the replay shows earlier output once."""
    line, replayed, status = await reconnect(gateway)
    assert replayed.splitlines().count(line) == 1, replayed
    assert "Connected to session" in status
    attached = [e for e in gateway.audit_events() if e["event"] == "session.attached"]
    assert len(attached) == 2


@scenario
def big_output(browser: Browser):
    browser.open()
    page = browser.page
    browser.create("streamer")
    browser.run("head -c 15000000 /dev/zero | base64; echo done-$((6*7))")
    started = time.monotonic()
    samples = []  # (seconds to answer a script, seconds to handle a click, bytes received so far)
    while True:
        t0 = time.monotonic()
        page.wait_for_function("() => true", timeout=2000)  # raises if the page takes over 2 s
        t1 = time.monotonic()
        page.click("#status", timeout=2000)
        t2 = time.monotonic()
        received, done = page.evaluate(
            "() => [window.cloudshell.stats.received, /^done-42$/m.test(window.cloudshell.text())]")
        if done:
            break
        samples.append((t1 - t0, t2 - t1, received))
        assert time.monotonic() - started < 90, f"output still streaming after 90 s: {samples[-3:]}"
        time.sleep(0.2)
    stats = page.evaluate("() => ({...window.cloudshell.stats})")
    browser.run("echo after-$((1+1))")
    browser.wait_text(r"^after-2$")
    return samples, stats


@pytest_twisted.ensureDeferred
async def test_twenty_megabytes_of_output_keep_the_page_responsive(gateway):
    """While 20 MB of output stream in, the page answers a script and handles a click within 2 s."""
    samples, stats = await big_output(gateway, seconds=110)
    streaming = [s for s in samples if 1_000_000 < s[2] < 20_000_000]
    assert streaming, f"no sample was taken while the output streamed: {samples}"
    assert all(script < 2 and click < 2 for script, click, _ in samples), samples
    # everything arrived (base64 of 15 MB, lines ending in CR LF on the terminal) ...
    assert stats["received"] >= 20_000_000 + 2 * (20_000_000 // 76), stats
    # ... and never more than the flow-control limits were held by xterm.js at once
    assert stats["maxInFlight"] <= 256 * 1024 + 64 * 1024, stats


FLOOD = """() => {
    // 16 MiB in 64 KiB messages, all in one task: faster than any page could write them
    const enc = new TextEncoder();
    for (let i = 0; i < 256; i++) {
        let chunk = '';
        for (let j = 0; j < 1024; j++) {
            chunk += 'flood ' + String(i * 1024 + j).padStart(6, '0') + ' ' + 'x'.repeat(50) + '\\r\\n';
        }
        window.cloudshell.receive(enc.encode(chunk));
    }
}"""

BIG_THEN_SMALL = """() => {
    // one message of more than 8 MiB, then a small one: the big one is dropped for a notice
    window.cloudshell.term.reset();
    window.cloudshell.receive(new Uint8Array(8 * 1024 * 1024 + 1).fill(0x41));
    let tail = '';
    for (let i = 0; i < 20; i++) tail += 'tail ' + i + '\\r\\n';
    window.cloudshell.receive(new TextEncoder().encode(tail));
}"""


@scenario
def flood(browser: Browser):
    browser.open()
    page = browser.page
    page.evaluate(FLOOD)
    browser.wait_text(r"^flood 262143 x+$", timeout=30_000)
    page.wait_for_function("() => window.cloudshell.queued === 0 && window.cloudshell.inFlight === 0")
    flooded = browser.text(), page.evaluate("() => ({...window.cloudshell.stats})")
    page.evaluate(BIG_THEN_SMALL)
    browser.wait_text(r"^tail 19$")
    return flooded, browser.text(), page.evaluate("() => ({...window.cloudshell.stats})")


@pytest_twisted.ensureDeferred
async def test_a_flood_drops_the_oldest_output_with_a_notice(gateway):
    """Past 8 MB of queued output, the oldest is dropped and one line says so; the newest is kept."""
    (text, stats), replaced, after = await flood(gateway)
    assert stats["dropped"] > 0 and stats["notices"] == 1, stats
    assert stats["maxQueued"] <= 8 * 1024 * 1024 + 70_000, stats
    assert stats["written"] + stats["dropped"] >= stats["received"], stats
    # the newest output is all there, in order, right up to the last line
    kept = [int(m[1]) for m in output_lines(text, r"flood (\d+) x+")]
    assert kept == list(range(kept[0], 262144)), kept[:3]
    # the notice stands where the dropped output was, right before what was kept
    lines = [line.rstrip() for line in replaced.splitlines() if line.strip()]
    assert lines[0] == "[output skipped: 8.0 MiB were dropped to keep this page responsive]", lines[:3]
    assert lines[1:] == [f"tail {i}" for i in range(20)], lines
    assert after["notices"] == 2


@scenario
def errors_and_terminate(browser: Browser):
    browser.expected.append(r"Failed to load resource: the server responded with a status of 403")
    browser.open()
    page = browser.page
    page.fill("#token", "terminator")
    page.press("#token", "Tab")  # the profiles load when the token is entered
    page.wait_for_function("() => document.querySelectorAll('#profile option').length === 2")
    page.select_option("#profile", "small")
    default_ttl = page.input_value("#ttl")
    page.fill("#ttl", "99999")
    page.click("#create")
    refused = browser.wait_status("Could not create")
    page.fill("#ttl", "60")
    page.click("#create")
    page.wait_for_function("() => window.cloudshell.connected")
    session_id = page.evaluate("() => window.cloudshell.sessionId")
    page.click("#terminate")
    terminated = browser.wait_status(r"Session \w+ terminated\.")
    return default_ttl, refused, session_id, terminated, page.is_disabled("#terminate")


@pytest_twisted.ensureDeferred
async def test_api_errors_are_shown_and_terminate_ends_the_session(gateway):
    """The API's error message appears in the status bar; Terminate deletes the session."""
    default_ttl, refused, session_id, terminated, disabled = await errors_and_terminate(gateway)
    assert default_ttl == "600"  # min(3600, the profile's max_ttl_seconds)
    assert refused == ("Could not create a session: ttl_seconds 99999 is longer than profile 'small' allows (600); "
                       "ask for 600 or less. [policy_denied]")
    assert disabled
    gone = await gateway.request("GET", f"/v1/sessions/{session_id}", token="terminator")
    assert gone.status == 404
    ended = [e for e in gateway.audit_events() if e["event"] == "session.terminated"]
    assert [(e["session_id"], e["details"]["reason"]) for e in ended] == [(session_id, "deleted")]


class PrefixProxy:
    """
    A reverse proxy serving the gateway under http://127.0.0.1:<port>/shell/, as one in front of a
    real deployment might: it strips the prefix from each request and passes the Host header on.
    One request per connection (it asks for Connection: close), except a WebSocket upgrade, whose
    connection is then piped both ways. Threads and blocking sockets, all closed by stop().
    """

    PREFIX = b"/shell"

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen: list[bytes] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self.listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()

    def _track(self, s: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(s)
        return s

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(self._track(client),), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            head, _, rest = head.partition(b"\r\n\r\n")
            request_line, *headers = head.split(b"\r\n")
            method, target, version = request_line.split(b" ")
            self.seen.append(method + b" " + target)
            if not target.startswith(self.PREFIX + b"/"):
                client.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            upgrade = any(h.lower().startswith(b"upgrade:") for h in headers)
            if not upgrade:
                headers = [h for h in headers if not h.lower().startswith(b"connection:")] + [b"Connection: close"]
            upstream = self._track(socket.create_connection(("127.0.0.1", self.target_port), timeout=30))
            line = b" ".join([method, target[len(self.PREFIX):], version])
            upstream.sendall(b"\r\n".join([line, *headers]) + b"\r\n\r\n" + rest)
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            self._pipe(upstream, client)
        except OSError:
            pass
        finally:
            client.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@scenario
def behind_a_prefix(browser: Browser):
    browser.open("/shell/")
    browser.create("prefixed")
    browser.run("echo hi-$RANDOM")
    browser.wait_text(r"^hi-\d+$")
    return browser.requests, browser.websockets


@pytest_twisted.ensureDeferred
async def test_page_works_behind_a_path_prefix(gateway):
    """Behind a proxy that serves the gateway under /shell/, the page, the API and the terminal work."""
    proxy = PrefixProxy(gateway.port.getHost().port)
    try:
        requests, websockets = await behind_a_prefix(gateway, base=proxy.base)
    finally:
        proxy.stop()
    assert f"{proxy.base}/shell/static/app.js" in requests
    assert f"{proxy.base}/shell/v1/sessions" in requests
    assert len(websockets) == 1 and websockets[0].startswith(f"{proxy.base.replace('http', 'ws')}/shell/v1/sessions/")
    assert all(seen.split(b" ")[1].startswith(b"/shell/") for seen in proxy.seen), proxy.seen
