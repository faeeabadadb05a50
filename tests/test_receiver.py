"""The pipe between the receiver process and the service: nothing lost, split or reordered."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from skywire_trio.firehose.codec import decode_frame
from skywire_trio.firehose.receiver import (
    MessageBuffer,
    Rejected,
    encode_message,
    from_wire,
    to_wire,
)

from .support import pds_frames, relay_frames

FRAMES = [decode_frame(f) for f in relay_frames() + pds_frames()]

messages = st.lists(st.tuples(st.sampled_from(["frames", "connected", "closed"]),
                              st.binary(max_size=300), st.integers()), max_size=20)


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(min_value=1, max_value=400), min_size=1))
def test_messages_survive_any_split_of_the_stream(sent, cuts):
    stream = b"".join(map(encode_message, sent))
    buffer, received, pos, i = MessageBuffer(), [], 0, 0
    while pos < len(stream):  # read sizes cycle through `cuts`, like pipe reads
        step = cuts[i % len(cuts)]
        received += buffer.feed(stream[pos:pos + step])
        pos, i = pos + step, i + 1
    assert received == sent


def test_frames_cross_the_pipe_unchanged():
    items = [to_wire(f) for f in FRAMES] + [Rejected(b"\xff", "bad")]
    (message,) = MessageBuffer().feed(encode_message(("frames", items, 0)))
    assert [from_wire(item) for item in message[1]] == [*FRAMES, Rejected(b"\xff", "bad")]
