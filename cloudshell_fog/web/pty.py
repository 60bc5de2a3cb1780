"""
The PTY WebSocket: one protocol instance is one attachment to one session's
terminal hub.  The attach token and the session were checked before the
upgrade (L{cloudshell_fog.web.api}); this protocol owns nothing but the
attachment.

Frames are documented in L{cloudshell_fog.web.frames} (client -> server) and
L{cloudshell_fog.terminal} (server -> client).  Close codes: 1000 after the
exit frame; 1007/1008 for a malformed frame (the session goes on); 1009 for a
message over the size limit (autobahn's own check).
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from cloudshell_fog import audit as events
from cloudshell_fog.eager import write_now
from cloudshell_fog.terminal import IAttachment, exit_frame
from cloudshell_fog.web.frames import BadFrame, Resize, parse_client_frame


class _OutputFlow:
    """
    The IPushProducer registered on the attachment's socket: a full socket
    pauses the session's PTY through the hub.  Never the PTYProcess itself:
    on disconnect the transport calls stopProducing, which would kill the shell.
    """

    def __init__(self, protocol: "PtyWebSocket"):
        self._protocol = protocol

    def pauseProducing(self):
        self._protocol.hub.pause_output(self._protocol)

    def resumeProducing(self):
        self._protocol.hub.resume_output(self._protocol)

    def stopProducing(self):
        self._protocol.hub.detach(self._protocol)


class ConnectionTracker:
    """The open attach sockets, so shutdown can wait for their close handshakes."""

    def __init__(self):
        self._open: set = set()
        self._waiters: list[Deferred] = []

    def __len__(self):
        return len(self._open)

    def opened(self, protocol) -> None:
        self._open.add(protocol)

    def closed(self, protocol) -> None:
        self._open.discard(protocol)
        if not self._open:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def drained(self, clock, timeout: float) -> Deferred:
        """Fires when every socket has closed, or after C{timeout} seconds."""
        if not self._open:
            return succeed(None)
        d = Deferred()
        self._waiters.append(d)
        return d.addTimeout(timeout, clock).addErrback(lambda _: None)


@implementer(IAttachment)
class PtyWebSocket(WebSocketServerProtocol):
    _log = Logger()  # autobahn owns self.log
    session = None  # set by AttachFactory before the connection starts
    audit = None

    @property
    def hub(self):
        return self.session.hub

    def connectionMade(self):
        super().connectionMade()
        self.factory.tracker.opened(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.tracker.closed(self)

    def onOpen(self):
        # After the takeover, HTTPChannel is still the transport's producer
        # (autobahn-python#1064): replace it with ours, or there is no backpressure.
        self.transport.unregisterProducer()
        self.transport.registerProducer(_OutputFlow(self), True)
        self._attached = True
        self.audit.emit(events.SESSION_ATTACHED, self.session.id, self.session.subject,
                        self.session.placement, attachments=self.hub.attachments + 1)
        self.hub.attach(self)

    def onMessage(self, payload, isBinary):
        try:
            frame = parse_client_frame(payload, isBinary)
        except BadFrame as e:
            self.sendCloseFrame(code=e.code, reasonUtf8=e.reason.encode("utf-8"))
            return
        if isinstance(frame, Resize):
            self.hub.resize(frame.cols, frame.rows)
            self.audit.emit(events.PTY_RESIZE, self.session.id, self.session.subject,
                            self.session.placement, cols=frame.cols, rows=frame.rows)
        else:
            self.hub.write(frame.data)

    def onClose(self, wasClean, code, reason):
        if getattr(self, "_attached", False):
            self._attached = False
            self.hub.detach(self)
            self.audit.emit(events.SESSION_DETACHED, self.session.id, self.session.subject,
                            self.session.placement, close_code=code)

    # -- IAttachment

    def sendOutput(self, frame: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(frame)
            write_now(self.transport)

    def sendExit(self, code: int) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(exit_frame(code))
            self.sendClose(1000)

    def pauseReading(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeReading(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()


def make_ws_factory(max_message_bytes: int, ping_interval: float = 30.0) -> WebSocketServerFactory:
    """The shared factory; origins are checked before the upgrade, not here."""
    factory = WebSocketServerFactory()
    factory.protocol = PtyWebSocket
    factory.tracker = ConnectionTracker()
    factory.setProtocolOptions(
        maxMessagePayloadSize=max_message_bytes,
        maxFramePayloadSize=max_message_bytes,
        openHandshakeTimeout=10,
        closeHandshakeTimeout=5,
        # Pings find dead peers (their attachment is then dropped, the shell stays)
        # and keep proxies from cutting idle terminals.
        autoPingInterval=ping_interval,
        autoPingTimeout=2 * ping_interval,
        webStatus=False,
        failByDrop=False,
        allowedOrigins=["*"],
    )
    return factory


class AttachFactory:
    """What WebSocketResource needs of a factory, binding one session to the protocol."""

    def __init__(self, factory: WebSocketServerFactory, session, audit):
        self._factory, self._session, self._audit = factory, session, audit

    def buildProtocol(self, addr):
        protocol = self._factory.buildProtocol(addr)
        protocol.session = self._session
        protocol.audit = self._audit
        return protocol
