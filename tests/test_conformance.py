"""Real bytes through the real service into PostgreSQL, checked against peers' outputs."""

from __future__ import annotations

import json
from collections import Counter

from .support import (
    PDS_CAPTURE,
    PDS_SUMMARY,
    RELAY_EXPECTED,
    RELAY_FRAMES,
    query,
    replay_process,
    service_env,
    service_process,
    wait_for,
)

ROW_SQL = """SELECT repo, event_type, rev, action, collection, rkey, cid, record::text,
                    record_error, seq FROM firehose_events ORDER BY id"""


def test_relay_fixture_matches_jetstream(database, tmp_path):
    expected = [json.loads(line) for line in RELAY_EXPECTED.read_text().splitlines()]
    with replay_process(RELAY_FRAMES, "--le") as relay:
        env = service_env(database, relay, tmp_path)
        with service_process(env, tmp_path / "service.log"):
            assert wait_for(lambda: query(database, "SELECT count(*) FROM firehose_events")
                            [0][0] >= len(expected), 30), (tmp_path / "service.log").read_text()
    rows = query(database, ROW_SQL)
    assert len(rows) == len(expected) == 152
    for row, want in zip(rows, expected, strict=True):
        repo, event_type, rev, action, collection, rkey, cid, record, error, seq = row
        assert repo == want["did"]
        assert event_type == want["kind"]
        assert error is None
        if want["kind"] == "commit":
            commit = want["commit"]
            got = {"rev": rev, "operation": action, "collection": collection, "rkey": rkey,
                   "cid": cid, "record": json.loads(record) if record else None}
            assert got == {key: commit.get(key) for key in got}, (seq, got, commit)
        else:
            # Identity and account events are stored whole; Jetstream serves the same body.
            assert json.loads(record) == want[want["kind"]]
    seqs = [row[-1] for row in rows]
    assert seqs == sorted(seqs) and seqs[0] == 31527015322 and seqs[-1] == 31527015471
    cursor = query(database, "SELECT last_seq, last_id FROM firehose_cursor")
    assert cursor == [(31527015471, 152)]


def test_pds_capture_ingests_completely(database, tmp_path):
    summary = json.loads(PDS_SUMMARY.read_text())["decoded"]
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path)
        with service_process(env, tmp_path / "service.log"):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(summary["seq"]["last"],)], 30)
    by_type = dict(query(database, "SELECT '#' || event_type, count(DISTINCT seq) "
                                   "FROM firehose_events GROUP BY 1"))
    assert by_type == summary["by_t"]
    ops = query(database, "SELECT collection, action, record IS NOT NULL, record_error "
                          "FROM firehose_events WHERE action IS NOT NULL")
    assert Counter(c for c, _, _, _ in ops) == Counter(summary["by_collection"])
    assert Counter(a for _, a, _, _ in ops) == Counter(summary["by_action"])
    assert Counter(f"{c}:{a}" for c, a, _, _ in ops) == Counter(summary["by_collection_action"])
    # Every create/update has its record; deletes have none; no decode errors.
    assert all(has == (a != "delete") and err is None for _, a, has, err in ops)
    types = Counter(r[0] for r in query(
        database, "SELECT record->>'$type' FROM firehose_events WHERE action <> 'delete'"))
    assert types == Counter(summary["record_types"])
    empty = query(database, "SELECT count(*) FROM firehose_events "
                            "WHERE event_type = 'commit' AND action IS NULL")
    assert empty == [(summary["ops_per_commit_histogram"]["0"],)]
    seqs = [s for (s,) in query(database, "SELECT DISTINCT seq FROM firehose_events ORDER BY 1")]
    assert seqs == list(range(1, 360))
