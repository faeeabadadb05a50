"""The decoder against oracles (interop fixtures, the dag-cbor reference codec) and bad input."""

from __future__ import annotations

import base64
import hashlib
import json

import cbor2
import dag_cbor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID

from skywire_trio.firehose.codec import (
    FrameError,
    decode_cbor,
    decode_frame,
    find_block,
    parse_car,
    to_json,
)

from .support import FIXTURES, car, frame, record_block, relay_frames

pytestmark = pytest.mark.quick  # no PostgreSQL: the quick tier (README)


def _commit(records: list[object], seq: int = 7, extra_ops: list[dict] | None = None) -> bytes:
    blocks = [record_block(r) for r in records]
    ops = [{"action": "create", "path": f"app.test.thing/r{i}",
            "cid": CID.decode(cid)} for i, (cid, _) in enumerate(blocks)]
    body = {"seq": seq, "repo": "did:plc:test", "rev": "3abc", "since": None,
            "commit": CID.decode(blocks[0][0]) if blocks else None,
            "blocks": car(blocks) if blocks else b"", "ops": ops + (extra_ops or []),
            "time": "2026-11-23T10:00:00.000Z", "rebase": False, "tooBig": False, "blobs": []}
    return dag_cbor.encode({"op": 1, "t": "#commit"}) + dag_cbor.encode(body)


def test_interop_data_model_fixtures():
    cases = json.loads((FIXTURES / "atproto-data-model" / "data-model-fixtures.json").read_text())
    for case in cases:
        value = decode_cbor(base64.b64decode(case["cbor_base64"] + "=="))
        assert json.loads(to_json(value)) == case["json"]


def test_relay_frames_car_lookup_agrees_with_full_parse():
    # find_block (hash-checked search) must agree with a full CAR parse on real commits.
    import libipld
    for raw in relay_frames():
        _, body = libipld.decode_dag_cbor_multi(raw)
        if "ops" not in body:
            continue
        blocks = parse_car(body["blocks"])
        for op in body["ops"]:
            if op.get("cid"):
                assert find_block(body["blocks"], op["cid"]) == blocks[op["cid"]]


# Storable text: no NUL (tested separately) and no lone surrogates (not UTF-8 at all).
chars = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
text = st.text(alphabet=chars)
keys = st.text(alphabet=chars, max_size=8)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), text,
                         st.binary())
records = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(keys, children, max_size=4)),
    max_leaves=20)


def _reference_json(value: object) -> object:
    """The atproto JSON data model, computed independently from dag-cbor's decode."""
    if isinstance(value, CID):
        return {"$link": value.encode("base32")}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode().rstrip("=")}
    if isinstance(value, list):
        return [_reference_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _reference_json(v) for k, v in value.items()}
    return value


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, records, max_size=6), st.booleans())
def test_records_match_reference_codec(record, with_link):
    record = {"$type": "app.test.thing", **record}
    if with_link:
        record["blob"] = {"$type": "blob", "ref": CID.decode(record_block({"x": 1})[0]),
                          "mimeType": "image/png", "size": 3}
    [row] = decode_frame(_commit([record])).rows
    assert row.record_error is None
    expected = _reference_json(dag_cbor.decode(dag_cbor.encode(record)))
    assert json.loads(row.record) == expected


def test_nul_in_record_keeps_the_event():
    [row] = decode_frame(_commit([{"$type": "app.test.thing", "text": "a\x00b"}])).rows
    assert row.record is None and "NUL" in row.record_error
    assert dag_cbor.decode(row.raw) == {"$type": "app.test.thing", "text": "a\x00b"}
    assert row.cid and row.rkey == "r0" and row.seq == 7


def test_invalid_utf8_record_keeps_the_event():
    bad = b"\xa1\x64text\x62\xff\xfe"  # {"text": <invalid UTF-8>}
    cid = bytes(CID("base32", 1, "dag-cbor", ("sha2-256", hashlib.sha256(bad).digest())))
    body = {"seq": 9, "repo": "did:plc:test", "rev": "3abc", "blocks": car([(cid, bad)]),
            "ops": [{"action": "create", "path": "app.test.thing/x", "cid": CID.decode(cid)}],
            "time": "2026-11-23T10:00:00Z"}
    [row] = decode_frame(dag_cbor.encode({"op": 1, "t": "#commit"}) + dag_cbor.encode(body)).rows
    assert row.record is None and "undecodable" in row.record_error and row.raw == bad


def _commit_block(block: bytes) -> bytes:
    """A commit whose one record is ``block``, bytes as given (not re-encoded)."""
    cid = bytes(CID("base32", 1, "dag-cbor", ("sha2-256", hashlib.sha256(block).digest())))
    body = {"seq": 9, "repo": "did:plc:test", "rev": "3abc", "blocks": car([(cid, block)]),
            "ops": [{"action": "create", "path": "app.test.thing/x", "cid": CID.decode(cid)}],
            "time": "2026-11-23T10:00:00Z"}
    return dag_cbor.encode({"op": 1, "t": "#commit"}) + dag_cbor.encode(body)


# Records without a float are written by a faster JSON encoder than the others; both paths
# must store the same thing, and refuse the same things.
@pytest.mark.parametrize("value, stored", [
    (2**64 - 1, 2**64 - 1), (-(2**64), -(2**64)), (2**70, 2**70),
    (1.5, 1.5), ({1: "x"}, {"1": "x"}), (" ", " "),
])
def test_records_past_the_fast_encoder_are_stored_as_before(value, stored):
    [row] = decode_frame(_commit_block(cbor2.dumps({"$type": "app.test.thing", "v": value}))).rows
    assert row.record_error is None and json.loads(row.record)["v"] == stored


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_record_with_a_non_finite_float_keeps_the_event(value):
    block = cbor2.dumps({"$type": "app.test.thing", "v": value})
    [row] = decode_frame(_commit_block(block)).rows
    assert row.record is None and "not representable" in row.record_error and row.raw == block


@pytest.mark.parametrize("record", [["a", "list"], 7, "text", None])
def test_a_record_that_is_not_a_map_keeps_the_event(record):
    [row] = decode_frame(_commit([record])).rows
    assert row.record is None and row.record_error.endswith("not a map")
    assert dag_cbor.decode(row.raw) == record and row.rkey == "r0"


def test_deeply_nested_record_is_an_error_not_a_crash():
    nested: object = "leaf"
    for _ in range(300):
        nested = [nested]
    [row] = decode_frame(_commit([{"$type": "app.test.thing", "deep": nested}])).rows
    assert row.record is None and row.record_error and row.raw


def test_missing_block_and_multi_op_commit():
    frame_bytes = _commit([{"a": 1}, {"b": 2}], extra_ops=[
        {"action": "delete", "path": "app.test.thing/gone", "cid": None}])
    rows = decode_frame(frame_bytes).rows
    assert [r.action for r in rows] == ["create", "create", "delete"]
    assert [json.loads(r.record) if r.record else None for r in rows] == [{"a": 1}, {"b": 2}, None]
    # An op whose record is not in the CAR still gives a row, marked.
    missing = _commit([{"a": 1}], extra_ops=[{"action": "create", "path": "app.test.thing/z",
                                              "cid": CID.decode(record_block({"z": 1})[0])}])
    rows = decode_frame(missing).rows
    assert rows[1].record is None and "missing" in rows[1].record_error


def test_unknown_event_type_is_kept():
    result = decode_frame(frame({"op": 1, "t": "#brandnew"},
                                {"seq": 5, "did": "did:plc:x", "data": b"\x01", "n": 3}))
    [row] = result.rows
    assert row.event_type == "brandnew" and row.seq == 5 and row.repo == "did:plc:x"
    assert json.loads(row.record) == {"seq": 5, "did": "did:plc:x", "data": {"$bytes": "AQ"},
                                      "n": 3}


def test_error_and_info_frames():
    err = decode_frame(frame({"op": -1}, {"error": "FutureCursor", "message": "ahead"}))
    assert (err.kind, err.error, err.message, err.rows) == ("error", "FutureCursor", "ahead", [])
    info = decode_frame(frame({"op": 1, "t": "#info"}, {"name": "OutdatedCursor"}))
    assert info.kind == "info" and info.seq is None and info.rows[0].event_type == "info"


@pytest.mark.parametrize("raw", [
    b"",
    b"\xff\xff\xff",
    b"not cbor at all",
    frame({"op": 1, "t": "#commit"}, {"seq": 1}),  # no repo / ops
    frame({"op": 1, "t": "#commit"}, {"seq": 1, "repo": "did:x", "ops": []})[:-1] + b"",
    frame({"op": 1, "t": "#identity"}, {"did": "did:x"}),  # no seq
    frame({"op": 2, "t": "#commit"}, {"seq": 1}),
    frame({"op": 1, "t": "#identity"}, {"seq": 1, "did": "x"}) + b"\x00",  # trailing bytes
    b"\x81" * 100_000,  # deeply nested
    b"\x00" * (5 * 1024 * 1024 + 1),  # over the 5 MB frame cap
])
def test_malformed_frames_raise_frame_error(raw):
    with pytest.raises(FrameError):
        decode_frame(raw)


def test_non_canonical_frame_is_still_read():
    # Keys out of DAG-CBOR order: libipld refuses, the lenient path must keep the event.
    import cbor2
    raw = cbor2.dumps({"op": 1, "t": "#identity"}) + cbor2.dumps(
        {"time": "2026-11-23T00:00:00Z", "seq": 3, "did": "did:plc:y"})
    [row] = decode_frame(raw).rows
    assert row.seq == 3 and row.repo == "did:plc:y"
