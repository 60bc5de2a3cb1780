"""
The terminal hub: one per session, between its PTY stream and the clients
attached to it.

Output path (STACK-NOTES section 5): the PTY is read eagerly; bytes are
coalesced into frames.  A read goes out at once when it answers input (the
echo of a keystroke, even typed back-to-back) or when nothing was sent for
C{window} seconds (the leading edge); otherwise, under a stream of output
nobody typed for, reads are batched until the window passes or
C{flush_bytes} accumulate.  Each frame is encoded once and sent to every attachment.  What
was sent is kept in a bounded scrollback that a new attachment receives first.

Flow control both ways:
  - output: an attachment whose socket is full pauses the PTY (the shell
    blocks writing) until it drains; memory stays bounded;
  - input: when the shell does not read its input, every attachment's socket
    stops being read until the shell catches up.
"""

from __future__ import annotations

from binascii import b2a_base64

from twisted.logger import Logger
from zope.interface import Interface, implementer

from cloudshell_fog.runtime.interface import IPtyConsumer

COALESCE_SECONDS = 0.003
FLUSH_BYTES = 32 * 1024
FRAME_OVERHEAD = 64  # bytes of JSON around the base64 payload


def flush_bytes_for(max_message_bytes: int) -> int:
    """The largest batch whose stdout frame fits a WebSocket message limit (base64 grows by 4/3)."""
    return max(256, min(FLUSH_BYTES, (max_message_bytes - FRAME_OVERHEAD) * 3 // 4))


def stdout_frame(data: bytes) -> bytes:
    """The server's stdout frame for C{data}, as UTF-8 JSON text."""
    return b'{"type":"stdout","data_b64":"' + b2a_base64(data, newline=False) + b'"}'


def exit_frame(code: int) -> bytes:
    return b'{"type":"exit","code":%d}' % code


class IAttachment(Interface):
    """One client attached to a hub (a WebSocket, or a test double)."""

    def sendOutput(frame: bytes) -> None:
        """Send an encoded stdout frame."""

    def sendExit(code: int) -> None:
        """Send the exit frame, then close."""

    def pauseReading() -> None:
        """Stop reading client input (the shell is not reading its own)."""

    def resumeReading() -> None:
        """Read client input again."""


class _InputGate:
    """The IPushProducer the PTY pauses when the shell stops reading input."""

    def __init__(self, hub: "TerminalHub"):
        self._hub = hub

    def pauseProducing(self):
        self._hub._set_input_paused(True)

    def resumeProducing(self):
        self._hub._set_input_paused(False)

    def stopProducing(self):
        pass


@implementer(IPtyConsumer)
class TerminalHub:
    _log = Logger()

    def __init__(
        self,
        stream,
        clock,
        scrollback_bytes: int,
        on_input=lambda: None,
        on_exit=lambda code: None,
        window: float = COALESCE_SECONDS,
        flush_bytes: int = FLUSH_BYTES,
        metrics=None,
    ):
        self._metrics = metrics
        self._stream, self._clock = stream, clock
        self._scrollback = bytearray()
        self._scrollback_limit = scrollback_bytes
        self.offset = 0  # bytes of output sent since the shell started
        self._on_input, self._on_exit = on_input, on_exit
        self._window, self._flush_bytes = window, flush_bytes
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._flush_call = None
        self._last_flush = float("-inf")
        self._attachments: list = []
        self._output_paused_by: set = set()
        self._input_paused = False
        self._answering = False  # input arrived since the last frame: send the next output at once
        self.exit_code: int | None = None
        stream.registerInputProducer(_InputGate(self))
        stream.setConsumer(self)

    @property
    def attachments(self) -> int:
        return len(self._attachments)

    # -- output: PTY -> clients

    def outputReceived(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_len += len(data)
        if self._answering or self._pending_len >= self._flush_bytes:
            # Output after input is the answer to it (an echo, a prompt): it goes out at once,
            # however recently the last frame went.  Only output nobody typed for is batched.
            self._answering = False
            self._flush()
        elif self._flush_call is None:
            wait = self._last_flush + self._window - self._clock.seconds()
            if wait <= 0:
                self._flush()
            else:
                self._flush_call = self._clock.callLater(wait, self._flush)

    def _flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._pending_len:
            return
        self._last_flush = self._clock.seconds()
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending, self._pending_len = [], 0
        self.offset += len(data)
        if self._metrics is not None:
            self._metrics.bytes_out += len(data)
        self._remember(data)
        if self._attachments:
            size = self._flush_bytes  # one read can be larger than a frame may be (SSH windows)
            for start in range(0, len(data), size):
                frame = stdout_frame(data[start : start + size] if len(data) > size else data)
                for attachment in list(self._attachments):
                    attachment.sendOutput(frame)

    def _remember(self, data: bytes) -> None:
        limit = self._scrollback_limit
        if not limit:
            return
        if len(data) >= limit:
            self._scrollback[:] = data[-limit:]
        else:
            self._scrollback += data
            excess = len(self._scrollback) - limit
            if excess > 0:
                del self._scrollback[:excess]

    def scrollback(self) -> bytes:
        """
        The recent output, starting at a line boundary when the buffer has
        been trimmed (a replay then never begins mid-line or mid-character).
        """
        data = bytes(self._scrollback)
        if self.offset > len(data):
            cut = data.find(b"\n", 0, 4096)
            if cut != -1:
                data = data[cut + 1 :]
        return data

    def exited(self, code: int) -> None:
        self._flush()
        self.exit_code = code
        attachments, self._attachments = self._attachments, []
        self._output_paused_by.clear()
        for attachment in attachments:
            attachment.sendExit(code)
        self._on_exit(code)

    # -- attachments

    def attach(self, attachment) -> None:
        """Replay the scrollback to C{attachment}, then send it live output."""
        if self.exit_code is not None:
            attachment.sendExit(self.exit_code)
            return
        self._flush()  # what was read so far goes to the others first, and into the scrollback
        replay = self.scrollback()
        for start in range(0, len(replay), self._flush_bytes):
            attachment.sendOutput(stdout_frame(replay[start : start + self._flush_bytes]))
        self._attachments.append(attachment)
        if self._input_paused:
            attachment.pauseReading()

    def detach(self, attachment) -> None:
        if attachment in self._attachments:
            self._attachments.remove(attachment)
        self.resume_output(attachment)

    def pause_output(self, attachment) -> None:
        """C{attachment} cannot take more output now: stop reading the PTY."""
        if self.exit_code is None and attachment in self._attachments:
            if not self._output_paused_by:
                self._stream.pauseProducing()
                if self._metrics is not None:
                    self._metrics.pauses += 1
            self._output_paused_by.add(attachment)

    def resume_output(self, attachment) -> None:
        if attachment in self._output_paused_by:
            self._output_paused_by.discard(attachment)
            if not self._output_paused_by and self.exit_code is None:
                self._stream.resumeProducing()

    # -- input: clients -> PTY

    def write(self, data: bytes) -> None:
        if self.exit_code is None:
            self._answering = True
            self._on_input()
            if self._metrics is not None:
                self._metrics.bytes_in += len(data)
            self._stream.write(data)

    def resize(self, cols: int, rows: int) -> None:
        if self.exit_code is None:
            self._on_input()
            self._stream.resize(cols, rows)

    def _set_input_paused(self, paused: bool) -> None:
        self._input_paused = paused
        for attachment in list(self._attachments):
            if paused:
                attachment.pauseReading()
            else:
                attachment.resumeReading()

    def close(self) -> None:
        """Cancel the pending flush (shutdown, tests)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
