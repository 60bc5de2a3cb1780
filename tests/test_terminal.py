"""The terminal hub on a fake stream and task.Clock: coalescing, scrollback, flow control, exit."""

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from cloudshell_fog.terminal import COALESCE_SECONDS, FLUSH_BYTES, TerminalHub


class FakeStream:
    def __init__(self):
        self.consumer = self.input_producer = None
        self.paused = False
        self.written, self.sizes = [], []

    def setConsumer(self, consumer):
        self.consumer = consumer

    def registerInputProducer(self, producer):
        self.input_producer = producer

    def write(self, data):
        self.written.append(data)

    def resize(self, cols, rows):
        self.sizes.append((cols, rows))

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False


class FakeAttachment:
    def __init__(self):
        self.frames, self.exit_code, self.reading = [], None, True

    def sendOutput(self, frame):
        self.frames.append(frame)

    def sendExit(self, code):
        self.exit_code = code

    def pauseReading(self):
        self.reading = False

    def resumeReading(self):
        self.reading = True

    @property
    def data(self) -> bytes:
        out = b""
        for frame in self.frames:
            parsed = json.loads(frame)
            assert parsed["type"] == "stdout" and set(parsed) == {"type", "data_b64"}
            out += base64.b64decode(parsed["data_b64"])
        return out


def make(scrollback=1024, **kw):
    clock, stream = Clock(), FakeStream()
    clock.advance(1000)
    hub = TerminalHub(stream, clock, scrollback, **kw)
    return clock, stream, hub


def test_first_output_after_quiet_goes_out_at_once():
    """A keystroke's echo after a quiet spell is sent without waiting for the window."""
    clock, stream, hub = make()
    a = FakeAttachment()
    hub.attach(a)
    stream.consumer.outputReceived(b"x")
    assert a.data == b"x"
    clock.advance(1)
    stream.consumer.outputReceived(b"y")
    assert a.data == b"xy" and len(a.frames) == 2


def test_output_under_load_is_batched_until_the_window_passes():
    """Reads that follow a send within the window are coalesced into one frame."""
    clock, stream, hub = make()
    a = FakeAttachment()
    hub.attach(a)
    stream.consumer.outputReceived(b"first")
    for part in (b"a", b"b", b"c"):
        stream.consumer.outputReceived(part)
    assert a.data == b"first"
    clock.advance(COALESCE_SECONDS)
    assert a.data == b"firstabc" and len(a.frames) == 2


def test_flush_at_size_threshold_without_waiting():
    """A batch reaching the flush size goes out at once."""
    clock, stream, hub = make()
    a = FakeAttachment()
    hub.attach(a)
    stream.consumer.outputReceived(b"0")
    stream.consumer.outputReceived(b"z" * FLUSH_BYTES)
    assert a.data == b"0" + b"z" * FLUSH_BYTES


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=5000), max_size=40),
       gaps=st.lists(st.sampled_from([0, 0, 0.001, 0.002, 0.01]), min_size=40, max_size=40))
def test_coalescing_never_reorders_or_drops_bytes(chunks, gaps):
    """Whatever the chunking and timing, every attachment receives exactly the bytes in order."""
    clock, stream, hub = make(scrollback=0)
    a = FakeAttachment()
    hub.attach(a)
    for chunk, gap in zip(chunks, gaps):
        stream.consumer.outputReceived(chunk)
        clock.advance(gap)
    clock.advance(1)
    assert a.data == b"".join(chunks)
    assert hub.offset == len(b"".join(chunks))


def test_exit_flushes_pending_output_then_sends_exit():
    """Output still being coalesced reaches clients before the exit frame."""
    clock, stream, hub = make()
    a = FakeAttachment()
    hub.attach(a)
    stream.consumer.outputReceived(b"a")
    stream.consumer.outputReceived(b"tail")
    stream.consumer.exited(3)
    assert a.data == b"atail" and a.exit_code == 3
    late = FakeAttachment()
    hub.attach(late)
    assert late.exit_code == 3


def test_scrollback_is_replayed_bounded_and_from_a_line_start():
    """A new attachment first gets the recent output, trimmed to the limit and to a line boundary."""
    clock, stream, hub = make(scrollback=64)
    for i in range(20):
        stream.consumer.outputReceived(b"line %02d\r\n" % i)
        clock.advance(1)
    late = FakeAttachment()
    hub.attach(late)
    assert len(late.data) <= 64
    assert late.data.startswith(b"line ") and late.data.endswith(b"line 19\r\n")


def test_a_full_attachment_pauses_the_pty_until_every_one_drains():
    """Output backpressure: the PTY is paused while any attachment is full."""
    clock, stream, hub = make()
    a, b = FakeAttachment(), FakeAttachment()
    hub.attach(a)
    hub.attach(b)
    hub.pause_output(a)
    hub.pause_output(b)
    assert stream.paused
    hub.resume_output(a)
    assert stream.paused
    hub.detach(b)  # a vanished client no longer holds the shell
    assert not stream.paused


def test_a_shell_not_reading_input_pauses_every_client():
    """Input backpressure: when the PTY's input is full, clients stop being read, new ones too."""
    clock, stream, hub = make()
    a = FakeAttachment()
    hub.attach(a)
    stream.input_producer.pauseProducing()
    assert not a.reading
    b = FakeAttachment()
    hub.attach(b)
    assert not b.reading
    stream.input_producer.resumeProducing()
    assert a.reading and b.reading


def test_input_and_resize_reach_the_stream_and_count_as_activity():
    """stdin and resize go to the PTY and call the activity hook; nothing after exit."""
    touched = []
    clock, stream, hub = make(on_input=lambda: touched.append(1))
    hub.write(b"ls\r")
    hub.resize(100, 40)
    assert stream.written == [b"ls\r"] and stream.sizes == [(100, 40)] and len(touched) == 2
    stream.consumer.exited(0)
    hub.write(b"late")
    assert stream.written == [b"ls\r"]


def test_detached_session_keeps_output_in_scrollback_only():
    """With nobody attached, output is kept for the next attach and nothing is encoded."""
    clock, stream, hub = make()
    stream.consumer.outputReceived(b"while you were away\r\n")
    clock.advance(1)
    a = FakeAttachment()
    hub.attach(a)
    assert a.data == b"while you were away\r\n"


def test_frames_always_fit_the_message_limit():
    """A batch's frame stays under the WebSocket message limit, which autobahn applies to our frames too."""
    from cloudshell_fog.terminal import flush_bytes_for, stdout_frame

    for limit in (1024, 4096, 65536, 16 * 2**20):
        size = flush_bytes_for(limit)
        assert len(stdout_frame(b"\xff" * size)) <= limit
    clock, stream, hub = make(flush_bytes=flush_bytes_for(1024))
    a = FakeAttachment()
    hub.attach(a)
    stream.consumer.outputReceived(b"x")
    stream.consumer.outputReceived(b"y" * 5000)
    clock.advance(1)
    assert all(len(f) <= 1024 for f in a.frames) and a.data == b"x" + b"y" * 5000


def test_output_answering_input_goes_out_at_once_even_back_to_back():
    """Back-to-back keystrokes: each echo is sent without waiting for the window; bulk output still batches."""
    clock, stream, hub = make()
    a = FakeAttachment()
    hub.attach(a)
    for key in (b"a", b"b", b"c"):
        hub.write(key)
        stream.consumer.outputReceived(key)  # the echo, within the same millisecond
        assert a.data.endswith(key)
    frames = len(a.frames)
    for chunk in (b"x" * 100, b"y" * 100, b"z" * 100):  # output nobody typed for
        stream.consumer.outputReceived(chunk)
    assert len(a.frames) == frames  # batched
    clock.advance(COALESCE_SECONDS)
    assert a.data.endswith(b"x" * 100 + b"y" * 100 + b"z" * 100) and len(a.frames) == frames + 1
