"""
The HTTP site: bounded request bodies answered early, and an access log that
never contains a query string (attach tokens travel in one) or a referrer.
"""

from __future__ import annotations

import json

from twisted.web import http
from twisted.web.server import Request, Site

from cloudshell_fog.web.api import MAX_BODY_BYTES, REASON_PHRASES, header, requires_bearer


def access_log_line(timestamp, request) -> str:
    """Combined log format with the path only: no query, no referrer."""
    try:
        client = request.getClientAddress().host
    except AttributeError:
        client = "-"
    agent = (header(request, b"user-agent") or "-").replace('"', "'")[:200]
    return '{} - - {} "{} {} {}" {} {} "-" "{}"'.format(
        client,
        timestamp,
        request.method.decode("ascii", "replace"),
        request.path.decode("ascii", "replace"),
        request.clientproto.decode("ascii", "replace"),
        request.code,
        request.sentLength or "-",
        agent,
    )


class GatewayRequest(Request):
    """A request whose body is refused with 413 as soon as it passes the limit."""

    _refused = False
    _received = 0

    def gotLength(self, length):
        super().gotLength(length)
        if length is not None and length > MAX_BODY_BYTES:
            self._refuse()

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY_BYTES:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        # Authentication is answered first on the API's routes, as everywhere else.
        # (The request line is parsed, but self.path is only set once the body is in.)
        target = getattr(self.channel, "_path", b"") or b""
        if requires_bearer(target) and self.requestHeaders.getRawHeaders(b"authorization") is None:
            status, code, message = 401, "missing_token", "Send an access token as Authorization: Bearer <token>."
        else:
            status, code = 413, "body_too_large"
            message = f"The request body is over {MAX_BODY_BYTES // 1024} KiB."
        extra = [b'WWW-Authenticate: Bearer realm="cloudshell-fog"'] if status == 401 else []
        _raw_error(self.channel.transport, status, code, message, extra)


def _raw_error(transport, status: int, code: str, message: str, extra=()) -> None:
    """Answer with our JSON error body on a bare transport, then close it."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    phrase = http.RESPONSES.get(status) or REASON_PHRASES[status]
    head = [b"HTTP/1.1 %d %s" % (status, phrase), b"Content-Type: application/json",
            b"Cache-Control: no-store", b"Content-Length: %d" % len(body), b"Connection: close", *extra]
    transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    transport.loseConnection()


class GatewayChannel(http.HTTPChannel):
    """
    HTTP/1.1 with two more guards: headers over the limit answer 431 in our
    JSON shape (not a bare 400), and a request must arrive whole within
    C{request_timeout} seconds of its first byte (slowloris), else 408.
    Idle keep-alive connections close after the site's C{timeOut}.
    """

    request_timeout = 15.0
    _deadline = None

    def dataReceived(self, data):
        if self._deadline is None and self.transport is not None:
            self._deadline = self.callLater(self.request_timeout, self._request_too_slow)
        super().dataReceived(data)

    def allContentReceived(self):
        self._cancel_deadline()
        super().allContentReceived()

    def connectionLost(self, reason):
        self._cancel_deadline()
        super().connectionLost(reason)

    def _cancel_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _request_too_slow(self):
        self._deadline = None
        if self.transport is not None:
            _raw_error(self.transport, 408, "request_timeout",
                       f"The request did not arrive within {self.request_timeout:g} seconds.")

    def lineLengthExceeded(self, line):
        self._cancel_deadline()
        _raw_error(self.transport, 431, "headers_too_large",
                   f"A request line or header is over {self.MAX_LENGTH // 1024} KiB.")

    def _respondToBadRequestAndDisconnect(self):
        self._cancel_deadline()
        if self._receivedHeaderSize > self.totalHeadersSize or self._receivedHeaderCount > self.maxHeaders:
            _raw_error(self.transport, 431, "headers_too_large",
                       f"The request's headers are over {self.totalHeadersSize // 1024} KiB or "
                       f"{self.maxHeaders} fields.")
        else:
            _raw_error(self.transport, 400, "bad_request", "The request is not valid HTTP/1.1.")


def make_site(root, reactor=None, idle_timeout: float = 60.0, request_timeout: float = 15.0) -> Site:
    site = Site(root, requestFactory=GatewayRequest, logFormatter=access_log_line,
                reactor=reactor, parsePOSTFormSubmission=False, timeout=idle_timeout)
    site.protocol = type("Channel", (GatewayChannel,), {"request_timeout": request_timeout})
    site.displayTracebacks = False
    return site
