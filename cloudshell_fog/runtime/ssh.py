"""
Shells on remote nodes over SSH (Twisted Conch): no agent of ours on the node,
only its OpenSSH server.

One SSH connection per node is shared by that node's sessions (a channel per
session) and re-established on demand when it drops.  The node's host key is
configured and checked strictly: never trust-on-first-use, never a prompt.
Authentication is by public key only.

Per session: C{pty-req} (TERM and the initial size), then C{shell} (or
C{exec} of the node's configured command), C{window-change} on resize,
C{exit-status}/C{exit-signal} to the exit code (128+N on signal N).  Flow
control rides on the SSH channel windows: while a client cannot take more
output, the channel's window is not replenished, so the remote shell blocks
as it would locally; input waits for the remote window.

When the connection is lost under running sessions, each ends with the
stream's C{end_reason} C{node-lost} and exit code 255 (as ssh(1) reports it).
"""

from __future__ import annotations

import signal
import struct

from twisted.conch.error import ConchError
from twisted.conch.ssh import channel, common, connection, keys, session, transport, userauth
from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import TimeoutError as TxTimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cloudshell_fog.runtime.interface import (
    IPtyStream,
    IRuntimeConnector,
    OutputDelivery,
    RuntimeUnavailable,
    TerminalSize,
)

NODE_LOST_EXIT = 255
KILL_GRACE_SECONDS = 2.0
_log = Logger()


class SshFailure(Exception):
    """Why a connection to a node failed: C{why} is a short token for placement reasons."""

    def __init__(self, why: str, message: str):
        super().__init__(message)
        self.why, self.message = why, message


# ---------------------------------------------------------------- the client stack


_HOST_KEY_ALGORITHMS = {
    b"ssh-rsa": [b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa"],
}


class _Transport(transport.SSHClientTransport):
    def connectionMade(self):
        # Keystrokes are tiny packets: Nagle with delayed ACKs would add ~40 ms to each echo.
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        # Ask only for the type of host key we were given: a node with several host keys would
        # otherwise offer its preferred one (ECDSA, say) and fail the check against an Ed25519 key.
        key_type = self.factory.host_key_type
        self.supportedPublicKeys = _HOST_KEY_ALGORITHMS.get(key_type, [key_type])
        super().connectionMade()

    def verifyHostKey(self, hostKey, fingerprint):
        if hostKey == self.factory.host_key_blob:
            return succeed(True)
        self.factory.failure = SshFailure(
            "host-key-mismatch",
            f"node {self.factory.node_id} presented host key {fingerprint.decode() if isinstance(fingerprint, bytes) else fingerprint}, "
            "not the one configured in nodes.yaml",
        )
        return fail(self.factory.failure)

    def connectionSecure(self):
        self.requestService(_UserAuth(self.factory.user, _Connection(self.factory)))

    def sendDisconnect(self, reason, desc):
        if reason == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE and self.factory.failure is None:
            self.factory.failure = SshFailure(
                "auth-failed", f"node {self.factory.node_id} refused the key for user {self.factory.user.decode()}"
            )
        super().sendDisconnect(reason, desc)

    def receiveError(self, reasonCode, description):
        if self.factory.failure is None:
            why = "auth-failed" if reasonCode == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE else "refused"
            text = description.decode("utf-8", "replace") if isinstance(description, bytes) else str(description)
            self.factory.failure = SshFailure(why, f"node {self.factory.node_id} disconnected: {text}")

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.lost(self, reason)


class _UserAuth(userauth.SSHUserAuthClient):
    preferredOrder = [b"publickey"]

    def __init__(self, user, instance):
        super().__init__(user, instance)
        self._offered = False

    def getPublicKey(self):
        if self._offered:
            return None  # one key, offered once
        self._offered = True
        return self.transport.factory.private_key.public()

    def getPrivateKey(self):
        return succeed(self.transport.factory.private_key)

    def auth_password(self):
        return False  # never a password, never a prompt

    def auth_keyboard_interactive(self):
        return False


class _Connection(connection.SSHConnection):
    def __init__(self, factory):
        super().__init__()
        self._factory = factory

    def serviceStarted(self):
        super().serviceStarted()
        self._factory.ready(self)

    def adjustWindow(self, chan, bytesToAdd):
        # Flow control: a paused channel gets no more window until it resumes.
        if getattr(chan, "paused", False):
            return
        super().adjustWindow(chan, bytesToAdd)


class _ClientFactory(protocol.ClientFactory):
    protocol = _Transport

    def __init__(self, node_id, user, host_key, private_key):
        self.node_id, self.user = node_id, user
        self.host_key_blob, self.host_key_type = host_key.blob(), host_key.sshType()
        self.private_key = private_key
        self.failure: SshFailure | None = None
        self.connected: Deferred = Deferred()
        self.on_lost = lambda reason: None
        self._transport = None

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        self._transport = proto
        return proto

    def ready(self, conn):
        if not self.connected.called:
            self.connected.callback(conn)

    def lost(self, proto, reason):
        if not self.connected.called:
            self.connected.errback(self.failure or SshFailure(
                "unreachable", f"node {self.node_id} closed the connection during the handshake"))
        else:
            self.on_lost(reason)

    def clientConnectionFailed(self, connector, reason):
        if not self.connected.called:
            why = "timed-out" if reason.check(TxTimeoutError) else "unreachable"
            self.connected.errback(SshFailure(why, f"cannot reach node {self.node_id}: {reason.getErrorMessage()}"))

    def abort(self):
        if self._transport is not None and self._transport.transport is not None:
            self._transport.transport.abortConnection()


# ---------------------------------------------------------------- one session's channel


@implementer(IPtyStream)
class SshPtyStream(OutputDelivery, channel.SSHChannel):
    name = b"session"

    def __init__(self, conn, size: TerminalSize, command: bytes | None, clock, term=b"xterm-256color"):
        super().__init__(conn=conn)
        self._size, self._command, self._clock, self._term = size, command, clock, term
        self.opened: Deferred = Deferred()
        self._input_producer = None
        self._status: int | None = None
        self._ended: list[Deferred] = []
        self._kill_call = None
        self.paused = False
        self.exit_code: int | None = None
        self.end_reason: str | None = None
        self.on_closed = lambda stream: None

    # -- channel lifecycle

    def channelOpen(self, specificData):
        d = self.conn.sendRequest(
            self, b"pty-req",
            session.packRequest_pty_req(self._term, (self._size.rows, self._size.cols, 0, 0), b""),
            wantReply=True,
        )
        if self._command:
            d.addCallback(lambda _: self.conn.sendRequest(self, b"exec", common.NS(self._command), wantReply=True))
        else:
            d.addCallback(lambda _: self.conn.sendRequest(self, b"shell", b"", wantReply=True))
        d.addCallbacks(lambda _: self.opened.callback(self), self._start_failed)

    def _start_failed(self, reason):
        if not self.opened.called:
            self.opened.errback(SshFailure("shell-refused", "the node refused a terminal or a shell for this session"))
        self.loseConnection()

    def openFailed(self, reason):
        if not self.opened.called:
            self.opened.errback(SshFailure("channel-refused", f"the node refused a session channel: {reason}"))

    def dataReceived(self, data):
        self.deliver(data)

    def extReceived(self, dataType, data):
        self.dataReceived(data)  # stderr: with a PTY there is none, but never drop bytes

    def request_exit_status(self, data):
        self._status = struct.unpack(">L", data[:4])[0]
        return True

    def request_exit_signal(self, data):
        name = common.getNS(data)[0].decode("ascii", "replace")
        number = getattr(signal, f"SIG{name}", None)
        self._status = 128 + (int(number) if number is not None else 0)
        return True

    def closed(self):
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        if self._status is None and self.end_reason is None:
            self.end_reason = "node-lost"
        self.exit_code = self._status if self._status is not None else NODE_LOST_EXIT
        if not self.opened.called:
            self.opened.errback(SshFailure("channel-closed", "the node closed the session before the shell started"))
            return
        self.on_closed(self)
        if self._consumer is not None:
            self._consumer.exited(self.exit_code)
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(self.exit_code)

    # -- flow control

    def stopWriting(self):
        if self._input_producer is not None:
            self._input_producer.pauseProducing()

    def startWriting(self):
        if self._input_producer is not None:
            self._input_producer.resumeProducing()

    # -- IPtyStream

    def registerInputProducer(self, producer):
        self._input_producer = producer

    def resize(self, cols, rows):
        if self.exit_code is None and not self.localClosed:
            self.conn.sendRequest(self, b"window-change", struct.pack(">4L", cols, rows, 0, 0))

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        if self.paused:
            self.paused = False
            if not self.localClosed and self.localWindowLeft < self.localWindowSize:
                self.conn.adjustWindow(self, self.localWindowSize - self.localWindowLeft)

    def terminate(self, grace=None):
        """HUP the remote shell, KILL it after the grace, and close the channel."""
        if self.exit_code is not None:
            return succeed(self.exit_code)
        d = Deferred()
        self._ended.append(d)
        if self.end_reason is None:
            self._signal(b"HUP")
            self._kill_call = self._clock.callLater(KILL_GRACE_SECONDS if grace is None else grace, self._kill)
        return d

    def _signal(self, name: bytes):
        if not self.localClosed:
            self.conn.sendRequest(self, b"signal", common.NS(name))

    def _kill(self):
        self._signal(b"KILL")
        self.paused = False
        self.loseConnection()  # closing the channel hangs up the remote terminal

    def clean_now(self):
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
            self._kill()


# ---------------------------------------------------------------- the connector


@implementer(IRuntimeConnector)
class SshConnector:
    """
    Starts shells on one remote node over shared SSH connections: a channel
    per session, at most C{max_sessions_per_connection} channels on one
    connection (OpenSSH's MaxSessions, 10 by default), more connections
    when those are full.
    """

    def __init__(self, node, reactor, clock=None):
        self.node_id = node.id
        self._node = node
        self._ssh = node.ssh
        self._reactor = reactor
        self._clock = clock or reactor
        self._waiters: list[Deferred] = []
        self._conns: dict = {}  # live connection -> its factory
        self._channels: dict = {}  # live connection -> open session channels on it
        self._streams: set[SshPtyStream] = set()
        self._private_key = keys.Key.fromFile(self._ssh.key_file)
        self._host_key = keys.Key.fromString(self._ssh.host_key.encode())

    # -- the shared connections

    def connection(self, spare: bool = False) -> Deferred:
        """
        A live SSH connection to the node, established when there is none
        (with C{spare}: one with room for another session channel).
        """
        for conn in self._conns:
            if not spare or self._channels[conn] < self._ssh.max_sessions_per_connection:
                return succeed(conn)
        waiter = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._connect()
        return waiter

    def _connect(self) -> None:
        factory = _ClientFactory(self.node_id, self._ssh.user.encode(), self._host_key, self._private_key)
        tcp = self._reactor.connectTCP(self._ssh.host, self._ssh.port, factory,
                                       timeout=max(1, int(self._ssh.connect_timeout)))
        d = factory.connected.addTimeout(self._ssh.connect_timeout, self._clock)
        d.addBoth(self._connect_done, factory, tcp)

    def _connect_done(self, result, factory, tcp) -> None:
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            if tcp.state == "connecting":
                tcp.stopConnecting()
            factory.abort()
            if isinstance(result.value, SshFailure):
                error = result.value
            elif factory.failure is not None:
                error = factory.failure
            elif result.check(DeferredTimeoutError, TxTimeoutError, CancelledError):
                error = SshFailure("timed-out", f"node {self.node_id} did not complete the SSH handshake in "
                                                f"{self._ssh.connect_timeout:g} s")
            else:
                error = SshFailure("unreachable", f"cannot reach node {self.node_id}: {result.getErrorMessage()}")
            for waiter in waiters:
                waiter.errback(error)
            return
        self._conns[result] = factory
        self._channels[result] = 0
        factory.on_lost = lambda reason: self._lost(result)
        for waiter in waiters:
            waiter.callback(result)

    def _lost(self, conn):
        if self._conns.pop(conn, None) is not None:
            self._channels.pop(conn, None)
            _log.warn("lost an SSH connection to node {node_id}", node_id=self.node_id)

    def drop(self):
        """Abort every connection (the node stopped answering): their sessions end as node-lost."""
        for factory in list(self._conns.values()):
            factory.abort()

    # -- IRuntimeConnector

    async def _allocate(self, session_id, size):
        try:
            conn = await self.connection(spare=True)
        except SshFailure as e:
            raise RuntimeUnavailable(e.why, e.message) from None
        command = " ".join(self._node.shell).encode() if self._node.shell else None
        stream = SshPtyStream(conn, size, command, self._clock)
        self._channels[conn] += 1
        conn.openChannel(stream)
        try:
            await stream.opened.addTimeout(self._ssh.connect_timeout, self._clock)
        except Exception as e:
            self._closed(stream, conn)
            if isinstance(e, SshFailure):
                raise RuntimeUnavailable(e.why, f"node {self.node_id}: {e.message}") from None
            stream.loseConnection()
            raise RuntimeUnavailable("timed-out", f"node {self.node_id} did not start a shell in time") from None
        self._streams.add(stream)
        stream.on_closed = lambda s: self._closed(s, conn)
        return stream

    def _closed(self, stream, conn) -> None:
        self._streams.discard(stream)
        if conn in self._channels:
            self._channels[conn] = max(0, self._channels[conn] - 1)

    def allocate(self, session_id, profile, image_ref, size: TerminalSize = TerminalSize(), subject=None):
        return Deferred.fromCoroutine(self._allocate(session_id, size))

    def supports(self, profile, image_ref=None) -> bool:
        """A remote node's isolation is its own: images, sandboxes and no-network go elsewhere."""
        return image_ref is None and (profile is None or (profile.sandbox == "none" and profile.network == "host"))

    async def _probe(self) -> float:
        fresh = not self._conns
        conn = await self.connection()
        if fresh:
            await self._round_trip(conn)  # the first exchange after the handshake is slow (~40 ms): skip it
        start = self._clock.seconds()
        await self._round_trip(conn)
        return (self._clock.seconds() - start) * 1000.0

    async def _round_trip(self, conn) -> None:
        reply = conn.sendGlobalRequest(b"keepalive@openssh.com", b"", wantReply=True)
        reply.addErrback(lambda f: None if f.check(ConchError) else f)  # "unknown request" proves liveness too
        try:
            await reply.addTimeout(self._ssh.connect_timeout, self._clock)
        except Exception:
            self.drop()
            raise SshFailure("timed-out", f"node {self.node_id} stopped answering") from None

    def probe(self):
        """A round trip over the node's SSH connection (made first if needed): RTT in ms."""
        return Deferred.fromCoroutine(self._probe())

    def stop(self):
        for stream in list(self._streams):
            stream.clean_now()
        self.drop()
