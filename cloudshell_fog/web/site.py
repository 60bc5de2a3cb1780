"""
The HTTP site: bounded request bodies answered early, and an access log that
never contains a query string (attach tokens travel in one) or a referrer.
"""

from __future__ import annotations

import json

from twisted.web import http
from twisted.web.server import Request, Site

from cloudshell_fog.web.api import MAX_BODY_BYTES, header


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
        path = getattr(self.channel, "_path", b"") or b""
        if path.startswith(b"/v1/") and self.requestHeaders.getRawHeaders(b"authorization") is None:
            status, code, message = 401, "missing_token", "Send an access token as Authorization: Bearer <token>."
        else:
            status, code = 413, "body_too_large"
            message = f"The request body is over {MAX_BODY_BYTES // 1024} KiB."
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        head = [
            b"HTTP/1.1 %d %s" % (status, http.RESPONSES[status]),
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
        if status == 401:
            head.append(b'WWW-Authenticate: Bearer realm="cloudshell-fog"')  # RFC 6750: no error without credentials
        transport = self.channel.transport
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        transport.loseConnection()


def make_site(root, reactor=None) -> Site:
    site = Site(root, requestFactory=GatewayRequest, logFormatter=access_log_line,
                reactor=reactor, parsePOSTFormSubmission=False)
    site.displayTracebacks = False
    return site
