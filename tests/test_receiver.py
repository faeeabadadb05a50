"""The pipe between the receiver process and the service: nothing lost, split or reordered."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skywire_trio.firehose.codec import Frame, Row, decode_frame
from skywire_trio.firehose.receiver import (
    CLOSED,
    CONNECTED,
    FRAMES,
    REJECTED,
    TEXT,
    RecordBuffer,
    _decoded,
    decode_frames,
    decode_rejected,
    encode_record,
)

from .support import relay_frames

pytestmark = pytest.mark.quick  # no PostgreSQL: the quick tier (README)

records = st.lists(st.tuples(st.sampled_from([FRAMES, REJECTED, TEXT, CONNECTED, CLOSED]),
                             st.binary(max_size=300)), max_size=20)


@settings(max_examples=300, deadline=None)
@given(records, st.lists(st.integers(min_value=1, max_value=400), min_size=1))
def test_records_survive_any_split_of_the_stream(sent, cuts):
    stream = b"".join(encode_record(kind, payload) for kind, payload in sent)
    buffer, received, pos, i = RecordBuffer(), [], 0, 0
    while pos < len(stream):  # read sizes cycle through `cuts`, like pipe reads
        step = cuts[i % len(cuts)]
        received += buffer.feed(stream[pos:pos + step])
        pos, i = pos + step, i + 1
    assert received == sent


def test_decoded_messages_keep_their_order_and_every_byte():
    """What one socket read turns into: runs of frames, each message that is not a frame
    (with its reason and every byte) in its place between them."""
    valid = relay_frames()[:5]
    messages = [(False, valid[0]), (False, valid[1]), (False, b"\xa1not a frame"),
                (True, b'{"text": 1}'), (False, valid[2]), (False, valid[3][:40]),
                (False, valid[4])]
    records = RecordBuffer().feed(_decoded(messages))
    assert [kind for kind, _ in records] == [FRAMES, REJECTED, TEXT, FRAMES, REJECTED, FRAMES]
    frames = [f for kind, p in records if kind == FRAMES for f in decode_frames(p)]
    assert frames == [decode_frame(m) for m in (valid[0], valid[1], valid[2], valid[4])]
    assert [f.data for f in frames] == [valid[0], valid[1], valid[2], valid[4]]
    # Rebuilt as the named tuples themselves, not plain tuples that compare equal.
    assert {type(f) for f in frames} == {Frame}
    assert {type(r) for f in frames for r in f.rows} == {Row}
    rejected = [decode_rejected(p) for kind, p in records if kind == REJECTED]
    assert [message for _, message in rejected] == [b"\xa1not a frame", valid[3][:40]]
    assert all(reason for reason, _ in rejected)
    assert records[2] == (TEXT, b'{"text": 1}')
