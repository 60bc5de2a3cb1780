/*
 * cloudshell-fog browser terminal.
 *
 * Talks to the gateway that served this page, with relative URLs only (v1/profiles, v1/sessions, ...),
 * so it works behind a reverse proxy that adds a path prefix. The access token lives in this tab's
 * sessionStorage only: never in the URL, never in localStorage, never in a cookie (credentials: "omit").
 *
 * The WebSocket speaks the frames of docs/api.md: stdin/resize to the gateway, stdout/exit from it,
 * terminal bytes base64-encoded in JSON text frames.
 */
(function () {
  "use strict";

  var TOKEN_KEY = "cloudshell-fog.access-token";
  var DEFAULT_TTL = 3600;

  // Output flow control (see enqueueOutput): bytes handed to xterm.js but not yet parsed.
  var HIGH_WATER = 256 * 1024;   // stop handing output to xterm.js above this
  var LOW_WATER = 64 * 1024;     // and start again below this
  var MAX_QUEUED = 8 * 1024 * 1024;  // output waiting in the page; beyond it the oldest is dropped
  // The gateway closes the socket (1009) on a message over WS_MAX_MESSAGE_BYTES (default 64 KiB):
  // a large paste goes out as several stdin frames of at most this many bytes (before base64).
  var STDIN_CHUNK = 16 * 1024;

  var $ = function (id) { return document.getElementById(id); };
  var ui = {
    form: $("create-form"), token: $("token"), profile: $("profile"), ttl: $("ttl"), hint: $("hint"),
    create: $("create"), reconnect: $("reconnect"), terminate: $("terminate"),
    terminal: $("terminal"), status: $("status"), placement: $("placement"),
  };

  // ------------------------------------------------------------------ status bar

  function setStatus(text, kind) {
    ui.status.textContent = text;
    ui.status.className = "status" + (kind ? " " + kind : "");
  }

  function showError(prefix, error) {
    var detail = error && error.message ? error.message : String(error);
    var code = error && error.code ? " [" + error.code + "]" : "";
    setStatus(prefix + ": " + detail + code, "error");
  }

  function showPlacement(sessionId, placement) {
    ui.placement.textContent = "";
    if (!sessionId) return;
    var parts = [["Session", sessionId.slice(0, 8)]];
    if (placement) {
      parts.push(["node", placement.node_id], ["region", placement.region], ["tier", placement.tier]);
      if (placement.reasons && placement.reasons.length) parts.push(["reasons", placement.reasons.join(", ")]);
    }
    parts.forEach(function (pair, i) {
      if (i) ui.placement.appendChild(document.createTextNode(" · "));
      ui.placement.appendChild(document.createTextNode(pair[0] + " "));
      var value = document.createElement("strong");
      value.textContent = pair[1];
      ui.placement.appendChild(value);
    });
    ui.placement.title = "Session " + sessionId;
  }

  // ------------------------------------------------------------------ the API

  function ApiError(status, code, message) {
    this.status = status;
    this.code = code;
    this.message = message;
  }

  function readToken() {
    var token = ui.token.value.trim();
    if (!token) {
      ui.token.focus();
      throw new ApiError(0, "", "Enter your access token first");
    }
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* storage disabled: keep it in the field */ }
    return token;
  }

  async function api(method, path, body) {
    var headers = { Authorization: "Bearer " + readToken() };
    var init = { method: method, headers: headers, credentials: "omit", cache: "no-store", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    var response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "network_error", "The gateway cannot be reached (" + e.message + ")");
    }
    var data = null;
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) {
      var err = data && data.error;
      throw new ApiError(response.status, (err && err.code) || "http_" + response.status,
                         (err && err.message) || "The gateway answered " + response.status + " " + response.statusText);
    }
    return data;
  }

  // ------------------------------------------------------------------ base64 <-> bytes

  var encoder = new TextEncoder();

  function bytesToBase64(bytes) {
    var binary = "";
    for (var i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  var base64ToBytes = typeof Uint8Array.fromBase64 === "function"
    ? function (text) { return Uint8Array.fromBase64(text); }
    : function (text) {
      var binary = atob(text);
      var bytes = new Uint8Array(binary.length);
      for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
      return bytes;
    };

  // ------------------------------------------------------------------ the terminal

  var term = new window.Terminal({
    cursorBlink: true,
    convertEol: false,
    scrollback: 5000,
    fontFamily: '"DejaVu Sans Mono", "Liberation Mono", ui-monospace, Menlo, Consolas, monospace',
    fontSize: 14,
    lineHeight: 1.2,  // at 1.0 the DOM renderer clips underscores of some fonts
    disableStdin: true,
    theme: {
      background: "#0d1117", foreground: "#c9d1d9", cursor: "#58a6ff", cursorAccent: "#0d1117",
      selectionBackground: "#264f78",
      black: "#484f58", red: "#ff7b72", green: "#3fb950", yellow: "#d29922",
      blue: "#58a6ff", magenta: "#bc8cff", cyan: "#39c5cf", white: "#b1bac4",
      brightBlack: "#6e7681", brightRed: "#ffa198", brightGreen: "#56d364", brightYellow: "#e3b341",
      brightBlue: "#79c0ff", brightMagenta: "#d2a8ff", brightCyan: "#56d4dd", brightWhite: "#f0f6fc",
    },
  });
  var fitAddon = new window.FitAddon.FitAddon();
  term.loadAddon(fitAddon);
  term.open(ui.terminal);
  term.writeln("\x1b[2mEnter an access token, pick a profile and press Create.\x1b[0m");

  // ------------------------------------------------------------------ output and flow control
  //
  // The browser's WebSocket API cannot pause reading. Output is therefore queued here and handed to
  // xterm.js at the pace xterm.js parses it: term.write(data, callback) calls back once the bytes are
  // parsed, so `inFlight` counts what xterm.js holds. Above HIGH_WATER no more is handed over until it
  // falls below LOW_WATER; queued chunks are coalesced into one write per animation frame.
  //
  // Backpressure to the shell works through TCP: while this tab's main thread is busy parsing, the
  // browser delivers messages more slowly and stops reading the socket once its own buffers fill; the
  // gateway's socket then fills and it stops reading the shell's terminal, so `yes` blocks. Messages the
  // browser does deliver are cheap to queue, but the queue is capped at MAX_QUEUED: beyond it the
  // oldest queued output is dropped and a one-line "[output skipped]" notice is written in its place,
  // so a runaway command never freezes the tab or exhausts its memory.

  var out = {
    queue: [], queued: 0, inFlight: 0, throttled: false, scheduled: false, frame: null, timer: null, skipped: 0,
  };
  var stats = { received: 0, written: 0, dropped: 0, notices: 0, maxQueued: 0, maxInFlight: 0, frames: 0 };
  var generation = 0;  // bumped on every (re)attach: late callbacks of an older one are ignored

  function enqueueOutput(bytes) {
    stats.received += bytes.length;
    stats.frames += 1;
    out.queue.push(bytes);
    out.queued += bytes.length;
    if (out.queued > MAX_QUEUED) dropOldest();
    if (out.queued > stats.maxQueued) stats.maxQueued = out.queued;
    schedulePump();
  }

  // Text of the page's own (a notice), written in order after the output already queued.
  function writeLocal(text) {
    var bytes = encoder.encode(text);
    out.queue.push(bytes);
    out.queued += bytes.length;
    schedulePump();
  }

  function dropOldest() {
    // Drop down to half the cap, so a flood does not drop a little on every message.
    while (out.queue.length > 1 && out.queued > MAX_QUEUED / 2) {
      var chunk = out.queue.shift();
      out.queued -= chunk.length;
      out.skipped += chunk.length;
      stats.dropped += chunk.length;
    }
  }

  function schedulePump() {
    if (out.scheduled || out.throttled || !out.queue.length) return;
    out.scheduled = true;
    // Animation frames do not run in a hidden tab; a timer still does (slowly).
    if (document.hidden) out.timer = setTimeout(pump, 0);
    else out.frame = requestAnimationFrame(pump);
  }

  // A frame asked for just before the tab was hidden would not come until it is shown again.
  function visibilityChanged() {
    if (out.scheduled && document.hidden && out.frame !== null) {
      cancelAnimationFrame(out.frame);
      out.frame = null;
      out.scheduled = false;
    }
    schedulePump();
  }

  function pump() {
    out.scheduled = false;
    out.frame = out.timer = null;
    if (out.throttled || !out.queue.length) return;
    var budget = Math.max(HIGH_WATER - out.inFlight, 16 * 1024);
    var parts = [];
    var size = 0;
    if (out.skipped) {
      var notice = encoder.encode("\r\n\x1b[0;2m[output skipped: " + formatBytes(out.skipped) +
                                  " were dropped to keep this page responsive]\x1b[0m\r\n");
      parts.push(notice);
      size += notice.length;
      out.skipped = 0;
      stats.notices += 1;
    }
    while (out.queue.length && size < budget) {
      var chunk = out.queue[0];
      if (size + chunk.length > budget && size > 0) {
        var take = budget - size;
        parts.push(chunk.subarray(0, take));
        out.queue[0] = chunk.subarray(take);
        out.queued -= take;
        size += take;
        break;
      }
      out.queue.shift();
      out.queued -= chunk.length;
      parts.push(chunk);
      size += chunk.length;
    }
    var data = parts.length === 1 ? parts[0] : concat(parts, size);
    var gen = generation;
    out.inFlight += size;
    if (out.inFlight > stats.maxInFlight) stats.maxInFlight = out.inFlight;
    if (out.inFlight >= HIGH_WATER) out.throttled = true;
    // xterm.js decodes UTF-8 from byte arrays itself, across chunk boundaries.
    term.write(data, function () {
      if (gen !== generation) return;
      out.inFlight -= size;
      stats.written += size;
      if (out.throttled && out.inFlight <= LOW_WATER) out.throttled = false;
      schedulePump();
    });
    schedulePump();
  }

  function concat(parts, size) {
    var data = new Uint8Array(size);
    var offset = 0;
    parts.forEach(function (part) { data.set(part, offset); offset += part.length; });
    return data;
  }

  function formatBytes(n) {
    if (n >= 1024 * 1024) return (n / (1024 * 1024)).toFixed(1) + " MiB";
    if (n >= 1024) return Math.round(n / 1024) + " KiB";
    return n + " bytes";
  }

  // Forget queued output, let xterm.js finish what it holds, then clear the screen and scrollback.
  // Used before every attach: the gateway replays the session's scrollback to a new attachment.
  function resetTerminal() {
    generation += 1;
    out.queue = [];
    out.queued = 0;
    out.inFlight = 0;
    out.throttled = false;
    out.skipped = 0;
    return new Promise(function (resolve) {
      var done = false;
      function finish() {
        if (done) return;
        done = true;
        term.reset();
        resolve();
      }
      term.write("", finish);
      setTimeout(finish, 3000);
    });
  }

  // ------------------------------------------------------------------ the session and its socket

  var session = null;   // {id, placement}
  var socket = null;
  var exited = false;
  var terminating = false;
  var busy = false;     // a create, reconnect or terminate is under way
  var lastSize = null;
  var attachments = 0;  // WebSockets opened by this page (for tests)

  function updateButtons(nowBusy) {
    busy = !!nowBusy;
    ui.create.disabled = busy;
    ui.reconnect.disabled = busy || !session || exited;
    ui.terminate.disabled = busy || !session || exited;
  }

  function ptyUrl(sessionId, attachToken, wsUrl) {
    var path = "v1/sessions/" + encodeURIComponent(sessionId) + "/pty";
    var url;
    if (location.protocol === "http:" || location.protocol === "https:") {
      // Same host and path prefix as this page: a proxy in front of the gateway is honoured, while the
      // gateway's own ws_url names the address it was reached at.
      url = new URL(path, document.baseURI);
      url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    } else {
      url = new URL(wsUrl);
    }
    url.search = "?token=" + encodeURIComponent(attachToken);
    return url.href;
  }

  function closeSocket() {
    var old = socket;
    socket = null;
    if (!old) return;
    old.onopen = old.onmessage = old.onclose = old.onerror = null;
    if (old.readyState === WebSocket.OPEN) old.close(1000, "reattaching");
    else if (old.readyState === WebSocket.CONNECTING) old.onopen = function () { old.close(1000); };
  }

  async function attach(grant) {
    closeSocket();
    await resetTerminal();
    exited = false;
    lastSize = null;
    var gen = generation;
    var id = session.id;
    var ws = new WebSocket(ptyUrl(id, grant.token, grant.ws_url));
    var opened = false;
    socket = ws;
    setStatus("Connecting to session " + id.slice(0, 8) + "…", "busy");

    ws.onopen = function () {
      if (gen !== generation) return;
      opened = true;
      attachments += 1;
      term.options.disableStdin = false;
      setStatus("Connected to session " + id.slice(0, 8) + ".", "ok");
      fitTerminal();
      sendSize(true);
      term.focus();
      updateButtons();
    };
    ws.onmessage = function (event) {
      if (gen !== generation) return;
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame.type === "stdout" && typeof frame.data_b64 === "string") {
        enqueueOutput(base64ToBytes(frame.data_b64));
      } else if (frame.type === "exit") {
        shellExited(frame.code);
      }
    };
    ws.onclose = function (event) {
      if (gen !== generation) return;
      socket = null;
      term.options.disableStdin = true;
      if (exited || terminating) return;
      if (!opened) {
        explainRefusal(id);
      } else {
        setStatus("Disconnected (WebSocket closed with code " + event.code +
                  (event.reason ? ": " + event.reason : "") + "). Press Reconnect to attach again.", "error");
      }
      updateButtons();
    };
  }

  // The browser does not show why an upgrade was refused; the session's state usually says.
  async function explainRefusal(id) {
    try {
      var info = await api("GET", "v1/sessions/" + encodeURIComponent(id));
      if (info.status === "terminated") {
        var t = info.termination || {};
        shellExited(t.exit_code, t.reason);
        return;
      }
      setStatus("Could not attach to session " + id.slice(0, 8) + " (" + info.status +
                "). Press Reconnect to try with a fresh attach token.", "error");
    } catch (e) {
      if (e.code === "session_not_found") {
        session = null;
        showPlacement(null);
        updateButtons();
      }
      showError("Could not attach", e);
    }
  }

  function shellExited(code, reason) {
    exited = true;
    term.options.disableStdin = true;
    var text = "Shell exited with code " + code + ".";
    if (terminating) text = "Session terminated; the shell exited with code " + code + ".";
    else if (reason && reason !== "exited") text = "Session ended (" + reason + "); the shell exited with code " + code + ".";
    setStatus(text, terminating ? "" : (code === 0 ? "ok" : "error"));
    writeLocal("\r\n\x1b[0;2m[" + text.replace(/\.$/, "").toLowerCase() + "]\x1b[0m\x1b[?25l");
    updateButtons();
  }

  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  function sendInput(bytes) {
    if (exited || !socket || socket.readyState !== WebSocket.OPEN) return;
    for (var i = 0; i < bytes.length; i += STDIN_CHUNK) {
      send({ type: "stdin", data_b64: bytesToBase64(bytes.subarray(i, i + STDIN_CHUNK)) });
    }
  }

  function sendSize(force) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    var size = term.cols + "x" + term.rows;
    if (!force && size === lastSize) return;
    lastSize = size;
    send({ type: "resize", cols: term.cols, rows: term.rows });
  }

  term.onData(function (text) { sendInput(encoder.encode(text)); });
  term.onBinary(function (text) {
    var bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i) & 0xff;
    sendInput(bytes);
  });
  term.onResize(function () { sendSize(false); });

  // ------------------------------------------------------------------ sizing

  var fitScheduled = false;

  function fitTerminal() {
    if (!ui.terminal.clientWidth || !ui.terminal.clientHeight) return;
    try { fitAddon.fit(); } catch (e) { /* not laid out yet */ }
  }

  function scheduleFit() {
    if (fitScheduled) return;
    fitScheduled = true;
    requestAnimationFrame(function () {
      fitScheduled = false;
      fitTerminal();
      sendSize(false);
    });
  }

  window.addEventListener("resize", scheduleFit);
  if (typeof ResizeObserver === "function") new ResizeObserver(scheduleFit).observe(ui.terminal);
  document.addEventListener("visibilitychange", visibilityChanged);
  fitTerminal();

  // ------------------------------------------------------------------ profiles, create, reconnect, terminate

  var profiles = null;  // name -> profile, once loaded
  var profilesLoading = null;  // the load under way, shared by whoever needs the profiles

  function ensureProfiles() {
    if (profiles) return Promise.resolve(Object.keys(profiles).length);
    if (!profilesLoading) {
      var loading = loadProfiles();
      var settled = function () { if (profilesLoading === loading) profilesLoading = null; };
      profilesLoading = loading;
      loading.then(settled, settled);
    }
    return profilesLoading;
  }

  async function loadProfiles() {
    var answer = await api("GET", "v1/profiles");
    var previous = ui.profile.value;
    profiles = {};
    ui.profile.textContent = "";
    answer.profiles.forEach(function (p) {
      profiles[p.name] = p;
      var option = document.createElement("option");
      option.value = p.name;
      option.textContent = p.name + " (up to " + p.max_ttl_seconds + " s)";
      ui.profile.appendChild(option);
    });
    if (!answer.profiles.length) {
      var none = document.createElement("option");
      none.value = "";
      none.textContent = "no profile for this token";
      ui.profile.appendChild(none);
    }
    ui.profile.disabled = !answer.profiles.length;
    if (previous && profiles[previous]) ui.profile.value = previous;
    profileChanged();
    return answer.profiles.length;
  }

  function profileChanged() {
    var p = profiles && profiles[ui.profile.value];
    if (!p) return;
    ui.ttl.max = String(p.max_ttl_seconds);
    ui.ttl.value = String(Math.min(DEFAULT_TTL, p.max_ttl_seconds));
  }

  async function tokenChanged() {
    profiles = null;
    profilesLoading = null;
    if (!ui.token.value.trim()) {
      try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* ignore */ }
      return;
    }
    try {
      var count = await ensureProfiles();
      if (!session && !busy) {
        setStatus(count ? "Pick a profile and press Create." : "This token may use no profile.", count ? "" : "error");
      }
    } catch (e) {
      showError("Could not load profiles", e);
    }
  }

  async function createSession(event) {
    event.preventDefault();
    updateButtons(true);
    try {
      await ensureProfiles();
      var profile = ui.profile.value;
      if (!profile) throw new ApiError(0, "", "There is no profile to create a session with");
      var ttl = Number(ui.ttl.value);
      if (!Number.isInteger(ttl) || ttl < 1) {
        ui.ttl.focus();
        throw new ApiError(0, "", "TTL must be a whole number of seconds, 1 or more");
      }
      var body = { profile: profile, ttl_seconds: ttl };
      var hint = ui.hint.value.trim();
      if (hint) body.placement_hint = hint;
      setStatus("Creating a session…", "busy");
      var created = await api("POST", "v1/sessions", body);
      closeSocket();
      terminating = false;
      session = { id: created.session_id, placement: created.placement };
      showPlacement(session.id, session.placement);
      await attach(created.attach);
    } catch (e) {
      showError("Could not create a session", e);
    } finally {
      updateButtons();
    }
  }

  async function reconnect() {
    if (!session) return;
    updateButtons(true);
    try {
      setStatus("Asking for a fresh attach token…", "busy");
      var answer = await api("POST", "v1/sessions/" + encodeURIComponent(session.id) + "/attach");
      await attach(answer.attach);
    } catch (e) {
      if (e.code === "session_terminated") exited = true;
      showError("Could not reconnect", e);
    } finally {
      updateButtons();
    }
  }

  async function terminate() {
    if (!session) return;
    var id = session.id;
    updateButtons(true);
    terminating = true;
    try {
      setStatus("Terminating session " + id.slice(0, 8) + "…", "busy");
      await api("DELETE", "v1/sessions/" + encodeURIComponent(id));
      exited = true;
      term.options.disableStdin = true;
      closeSocket();
      session = null;
      showPlacement(null);
      setStatus("Session " + id.slice(0, 8) + " terminated.", "");
    } catch (e) {
      terminating = false;
      showError("Could not terminate the session", e);
    } finally {
      updateButtons();
    }
  }

  ui.form.addEventListener("submit", createSession);
  ui.token.addEventListener("change", tokenChanged);
  ui.profile.addEventListener("change", profileChanged);
  ui.reconnect.addEventListener("click", reconnect);
  ui.terminate.addEventListener("click", terminate);

  // ------------------------------------------------------------------ start

  // For tests and the curious: the terminal, and counters of the output path.
  window.cloudshell = {
    term: term,
    fit: fitAddon,
    stats: stats,
    get sessionId() { return session ? session.id : null; },
    get connected() { return !!socket && socket.readyState === WebSocket.OPEN; },
    get exited() { return exited; },
    get attachments() { return attachments; },
    get queued() { return out.queued; },
    get inFlight() { return out.inFlight; },
    // Feed bytes into the output path as if the gateway had sent them (tests of the flow control).
    receive: function (bytes) { enqueueOutput(bytes); },
    text: function () {
      var buffer = term.buffer.active;
      var lines = [];
      for (var i = 0; i < buffer.length; i++) {
        var line = buffer.getLine(i);
        if (line) lines.push(line.translateToString(true));
      }
      return lines.join("\n");
    },
  };

  var saved = null;
  try { saved = sessionStorage.getItem(TOKEN_KEY); } catch (e) { /* storage disabled */ }
  updateButtons();
  if (saved) {
    ui.token.value = saved;
    setStatus("Loading profiles…", "busy");
    tokenChanged();
  } else {
    setStatus("Enter your access token to begin.", "");
    ui.token.focus();
  }
})();
