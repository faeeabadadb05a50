"""examples/huddle_indexer.py against the real service fed a capture with Huddle records.

The capture is built here with the reference codec: com.huddle.* commits (creates, updates,
deletes, multi-op commits, records that break the lexicon) between real relay frames. The
test keeps its own model of what the tables must hold, from how it built each record.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

from skywire_trio.firehose.framefile import write_frames

from .support import (
    ROOT,
    commit_frame,
    query,
    relay_frames,
    renumbered,
    replay_process,
    service_env,
    service_process,
    wait_for,
)
from .test_api import SALT, _make_token

DIDS = [f"did:plc:huddle{i:018d}" for i in range(5)]
EXAMPLE = ROOT / "examples" / "huddle_indexer.py"


class Workload:
    """Huddle activity as commit frames, and the index it implies."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.tables: dict[str, dict[str, tuple]] = {"groups": {}, "memberships": {},
                                                    "messages": {}}
        self.dead: list[tuple[str, str]] = []  # (uri, collection) in log order
        self._clock = 0
        self._rkeys = 0

    def created_at(self) -> str:
        self._clock += 1
        return f"2026-11-2{self._clock // 3600 % 10}T{self._clock // 60 % 60:02d}:" \
               f"{self._clock % 60:02d}:00.000Z"

    def rkey(self) -> str:
        self._rkeys += 1
        return f"3huddle{self._rkeys:06d}"

    def commit(self, did: str, ops: list[tuple[str, str, str, dict | None, tuple | None]]
               ) -> list[str]:
        """One commit; ops are (action, collection, rkey, record, expected row or None
        when the record is invalid). Returns the URIs."""
        table_of = {"com.huddle.group": "groups", "com.huddle.membership": "memberships",
                    "com.huddle.message": "messages"}
        for action, collection, rkey, _, row in ops:
            uri = f"at://{did}/{collection}/{rkey}"
            table = self.tables.get(table_of.get(collection, ""), {})
            if action == "delete":
                table.pop(uri, None)
            elif row is None:
                self.dead.append((uri, collection))
                table.pop(uri, None)
            else:
                table[uri] = (uri, did, *row)
        self.frames.append(commit_frame(1, did, [(a, f"{c}/{k}", r) for a, c, k, r, _ in ops],
                                        rev=f"3rev{len(self.frames):06d}"))
        return [f"at://{did}/{c}/{k}" for _, c, k, _, _ in ops]

    def group(self, did: str, name: str, rkey: str | None = None,
              action: str = "create") -> str:
        at = self.created_at()
        record = {"$type": "com.huddle.group", "name": name, "createdAt": at}
        valid = 1 <= len(name) <= 64
        return self.commit(did, [(action, "com.huddle.group", rkey or self.rkey(), record,
                                  (name, None, at) if valid else None)])[0]

    def member(self, did: str, group: str) -> str:
        at = self.created_at()
        record = {"$type": "com.huddle.membership", "group": group, "createdAt": at}
        valid = group.startswith("at://")
        return self.commit(did, [("create", "com.huddle.membership", self.rkey(), record,
                                  (group, at) if valid else None)])[0]

    def message(self, did: str, group: str, text: str, rkey: str | None = None,
                action: str = "create", created_at: str | None = None) -> str:
        at = created_at or self.created_at()
        record = {"$type": "com.huddle.message", "group": group, "text": text, "createdAt": at}
        valid = 1 <= len(text) <= 1000 and created_at is None
        return self.commit(did, [(action, "com.huddle.message", rkey or self.rkey(), record,
                                  (group, text, at) if valid else None)])[0]

    def delete(self, uri: str) -> None:
        did, collection, rkey = uri.removeprefix("at://").split("/")
        self.commit(did, [("delete", collection, rkey, None, None)])


def build_workload() -> Workload:
    rng = random.Random(12)
    work = Workload()
    groups = [work.group(DIDS[i % 3], f"group {i}") for i in range(6)]
    members = [work.member(did, g) for did in DIDS for g in rng.sample(groups, 3)]
    messages = [work.message(rng.choice(DIDS), rng.choice(groups), f"hello {i} " * (i % 7 + 1))
                for i in range(100)]
    # One commit with three operations: a group, its founder's membership, a first message.
    did, rkeys = DIDS[4], [work.rkey() for _ in range(3)]
    uri = f"at://{did}/com.huddle.group/{rkeys[0]}"
    at = work.created_at()
    work.commit(did, [
        ("create", "com.huddle.group", rkeys[0],
         {"$type": "com.huddle.group", "name": "tri", "description": "three ops", "createdAt": at},
         ("tri", "three ops", at)),
        ("create", "com.huddle.membership", rkeys[1],
         {"$type": "com.huddle.membership", "group": uri, "createdAt": at}, (uri, at)),
        ("create", "com.huddle.message", rkeys[2],
         {"$type": "com.huddle.message", "group": uri, "text": "first", "createdAt": at},
         (uri, "first", at)),
    ])
    # Edits, renames, deletes.
    for uri in messages[10:15]:
        did, _, rkey = uri.removeprefix("at://").split("/")
        work.message(did, groups[0], "edited", rkey=rkey, action="update")
    work.group(DIDS[0], "renamed", rkey=groups[0].rsplit("/", 1)[1], action="update")
    for uri in messages[20:24] + members[:2] + groups[5:]:
        work.delete(uri)
    # Records that break the lexicon, each in its own way.
    work.message(DIDS[1], groups[1], "")
    work.message(DIDS[1], groups[1], "x" * 1001)
    work.group(DIDS[2], "n" * 65)
    work.member(DIDS[3], "https://example.com/not-a-group")
    work.message(DIDS[3], groups[2], "when?", created_at="yesterday")
    at = work.created_at()
    work.commit(DIDS[2], [("create", "com.huddle.message", work.rkey(),
                           {"$type": "com.huddle.group", "name": "wrong type",
                            "createdAt": at}, None)])
    work.commit(DIDS[2], [("create", "com.huddle.reaction", work.rkey(),
                           {"$type": "com.huddle.reaction", "emoji": "+1",
                            "createdAt": at}, None)])
    # A valid message broken by an edit (it leaves the index); a broken one mended.
    did, _, rkey = messages[30].removeprefix("at://").split("/")
    work.message(did, groups[1], "", rkey=rkey, action="update")
    bad = work.message(DIDS[0], groups[1], "")
    did, _, rkey = bad.removeprefix("at://").split("/")
    work.message(did, groups[1], "mended", rkey=rkey, action="update")
    return work


def capture(work: Workload) -> list[bytes]:
    """The Huddle commits between real relay traffic (two relay frames after each)."""
    relay = relay_frames()
    mixed = []
    for i, frame in enumerate(work.frames):
        mixed += [frame, relay[(2 * i) % len(relay)], relay[(2 * i + 1) % len(relay)]]
    return renumbered(mixed, len(mixed))  # contiguous seqs from 1


def run_example(url: str, token: str, db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLE), "--url", url, "--token", token,
                           "--db", str(db), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_huddle_indexer_builds_the_index_the_capture_implies(database, tmp_path):
    work = build_workload()
    frames = capture(work)
    recording = tmp_path / "huddle.bin"
    write_frames(recording, frames)
    with replay_process(recording) as relay:
        env = service_env(database, relay, tmp_path, API_TOKEN_SALT=SALT)
        with service_process(env, tmp_path / "service.log"):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(len(frames),)], 30)
            url = f"http://127.0.0.1:{env['PORT']}"
            token = _make_token(database, "huddle", collections=["com.huddle.*"])
            huddle = [i for (i,) in query(
                database, "SELECT id FROM firehose_events WHERE event_type = 'commit' "
                          "AND collection LIKE 'com.huddle.%' ORDER BY id")]
            assert len(huddle) > 140
            db = tmp_path / "huddle.sqlite"
            # Killed after 120 events: the checkpoint is the 100th event's id.
            crashed = run_example(url, token, db, "--crash-after", "120")
            assert crashed.returncode == 3, crashed.stderr
            with sqlite3.connect(db) as conn:
                assert conn.execute("SELECT cursor FROM checkpoint").fetchall() == \
                    [(huddle[99],)]
            # Started again, it replays from there and stops once caught up.
            done = run_example(url, token, db, "--once", "--limit", "20",
                               "--report-every", "0")
            assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["cursor"] == huddle[-1] and stats["events"] == len(huddle) - 100
    assert stats["scanned"] == huddle[-1] - huddle[99]
    assert stats["hit_rate"] == round((len(huddle) - 100) / stats["scanned"], 4)
    assert 0.2 < stats["hit_rate"] < 0.5
    reports = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(reports) >= 3 and all(r["lag_seconds"] > 0 for r in reports[:-1])
    with sqlite3.connect(db) as conn:
        for table, expected in work.tables.items():
            columns = "uri, did, name, description, created_at" if table == "groups" else \
                "uri, did, group_uri, created_at" if table == "memberships" else \
                "uri, did, group_uri, text, created_at"
            stored = conn.execute(f"SELECT {columns} FROM {table} ORDER BY uri").fetchall()
            assert stored == sorted(expected.values()), table
            assert len(stored) > 3
        dead = conn.execute("SELECT uri, collection, reason FROM dead_letters "
                            "ORDER BY event_id").fetchall()
        assert [(u, c) for u, c, _ in dead] == work.dead
        assert all(reason for _, _, reason in dead)
        assert dead[0][2] == "text must be a string of 1 to 1000 characters"
        assert conn.execute("SELECT cursor FROM checkpoint").fetchall() == [(huddle[-1],)]
