"""
The runtime seams.

A connector (L{IRuntimeConnector}) starts and ends shells on one node; each
shell is reached through an L{IPtyStream}, which delivers output and the exit
status to one registered L{IPtyConsumer} and takes input and window sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Attribute, Interface


class RuntimeUnavailable(Exception):
    """
    The runtime could not start a shell.  C{why} is a short stable token
    (C{shell-missing}, C{pty-exhausted}, C{spawn-failed}, ...) used in
    placement reasons; C{message} is a sentence for people.
    """

    def __init__(self, why: str, message: str):
        super().__init__(message)
        self.why, self.message = why, message


@dataclass(frozen=True)
class TerminalSize:
    cols: int = 80
    rows: int = 24


class IPtyConsumer(Interface):
    def outputReceived(data: bytes) -> None:
        """Bytes the shell wrote to its terminal (stdout and stderr together)."""

    def exited(code: int) -> None:
        """The shell ended with C{code} (128+N when killed by signal N); no more output follows."""


class IPtyStream(Interface):
    exit_code = Attribute("The exit code once the shell has ended, else None.")

    def setConsumer(consumer: IPtyConsumer) -> None:
        """Deliver output and the exit to C{consumer}; what came before is delivered at once."""

    def write(data: bytes) -> None:
        """Send bytes to the shell's terminal input."""

    def resize(cols: int, rows: int) -> None:
        """Set the terminal's window size; the foreground job gets SIGWINCH."""

    def pauseProducing() -> None:
        """Stop reading output until L{resumeProducing} (the consumer is full)."""

    def resumeProducing() -> None:
        """Read output again."""

    def registerInputProducer(producer) -> None:
        """
        Pause C{producer} (an IPushProducer) while the shell does not read its
        input fast enough, and resume it when it does.
        """

    def terminate():
        """
        End the shell and every process it started.

        @return: a Deferred firing with the exit code once all have ended;
            safe to call more than once.
        """


class IRuntimeConnector(Interface):
    node_id = Attribute("The id of the node this connector starts shells on.")

    def allocate(session_id: str, profile, image_ref: str | None, size: TerminalSize, subject: str | None):
        """
        Start a shell for a session of C{subject} (who may get an account of its own).

        @return: a Deferred firing with an L{IPtyStream}, or failing with
            L{RuntimeUnavailable}.
        """

    def supports(profile, image_ref) -> bool:
        """Whether shells here honour C{profile}'s isolation (sandbox, network) and run C{image_ref} (or none)."""

    def probe():
        """
        @return: a Deferred firing with the round-trip time to the node in
            milliseconds (None when there is no network to measure), or
            failing when the node cannot start shells now.
        """

    def stop() -> None:
        """Gateway shutdown, after every session has ended: finish any cleanup still pending."""


class OutputDelivery:
    """
    The consumer side every stream shares: output and the exit go to the
    registered consumer; what arrives before L{setConsumer} is kept and
    delivered then.  Needs C{exit_code} on the stream.
    """

    _consumer = None
    _early: list = None

    def deliver(self, data: bytes) -> None:
        if self._consumer is not None:
            self._consumer.outputReceived(data)
        else:
            self._early = (self._early or []) + [data]

    def setConsumer(self, consumer) -> None:
        self._consumer = consumer
        early, self._early = self._early or [], None
        for data in early:
            consumer.outputReceived(data)
        if self.exit_code is not None:
            consumer.exited(self.exit_code)
