"""
Eager writes.  Twisted buffers C{transport.write} and writes on the reactor's
next turn, once epoll says the descriptor is writable.  For a keystroke that
is two extra turns of the loop on its way through the gateway (into the PTY,
and back out to the WebSocket).  When the descriptor is almost always
writable (an idle socket, a PTY), writing at once saves them; whatever the
kernel does not take stays buffered and goes out on the next turn as before.
"""


def write_now(transport) -> None:
    """Try to write what C{transport} (a FileDescriptor) has buffered, now."""
    if not getattr(transport, "connected", False) or getattr(transport, "disconnecting", False):
        return
    buffered = getattr(transport, "_tempDataBuffer", None)
    if buffered or len(getattr(transport, "dataBuffer", b"")) > getattr(transport, "offset", 0):
        transport.doWrite()  # an error is left for the reactor, which meets it on its next turn
