"""Every implementation provides its seam's interface (STYLE section 4)."""

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from cloudshell_fog.auth import IAccessTokenVerifier
from cloudshell_fog.auth.dev import DevVerifier
from cloudshell_fog.config import NodeConfig
from cloudshell_fog.runtime.interface import IPtyConsumer, IPtyStream, IRuntimeConnector
from cloudshell_fog.runtime.local import LocalPtyConnector, LocalPtyStream
from cloudshell_fog.terminal import IAttachment, TerminalHub
from cloudshell_fog.web.pty import PtyWebSocket


def test_local_runtime_provides_its_interfaces(tmp_path):
    """The local connector and its stream implement IRuntimeConnector and IPtyStream."""
    node = NodeConfig("n", "r", "fog", "local", 1, ("/bin/bash",), str(tmp_path))
    assert verifyObject(IRuntimeConnector, LocalPtyConnector(node, Clock()))
    assert verifyObject(IPtyStream, LocalPtyStream(Clock(), str(tmp_path), b"X=1", "/dev/pts/0"))


def test_dev_verifier_provides_the_verifier_interface():
    """DevVerifier implements IAccessTokenVerifier."""
    assert verifyObject(IAccessTokenVerifier, DevVerifier())


def test_hub_and_websocket_provide_their_interfaces():
    """The hub consumes a PTY stream; the WebSocket protocol is an attachment."""
    assert IPtyConsumer.implementedBy(TerminalHub)
    assert IAttachment.implementedBy(PtyWebSocket)
