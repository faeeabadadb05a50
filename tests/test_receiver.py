"""The pipe between the receiver process and the service: nothing lost, split or reordered."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skywire_trio.firehose.receiver import (
    BINARY,
    CLOSED,
    CONNECTED,
    TEXT,
    RecordBuffer,
    encode_record,
)

pytestmark = pytest.mark.quick  # no PostgreSQL: the quick tier (README)

records = st.lists(st.tuples(st.sampled_from([BINARY, TEXT, CONNECTED, CLOSED]),
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
