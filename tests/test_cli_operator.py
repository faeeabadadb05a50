"""`tail` follows a replay live; `status` shows one screen; list commands print tables."""

from __future__ import annotations

import json
import subprocess
import sys

from .support import (
    PDS_CAPTURE,
    ROOT,
    query,
    replay_process,
    service_env,
    service_process,
    wait_for,
)


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_tail_follows_a_replay_live(database, tmp_path):
    env = service_env(database, "ws://127.0.0.1:9", tmp_path)
    subprocess.run([sys.executable, "-m", "skywire_trio", "migrate"], env=env, cwd=ROOT,
                   check=True, capture_output=True)
    out, out_json, err = tmp_path / "tail.txt", tmp_path / "tail.jsonl", tmp_path / "err.txt"
    with out.open("w") as f, out_json.open("w") as g, err.open("w") as e:
        # Started before the service: `tail` (from the head, 0) sees every event arrive.
        tail = subprocess.Popen([sys.executable, "-m", "skywire_trio", "tail"], env=env,
                                cwd=ROOT, stdout=f, stderr=e)
        tail_json = subprocess.Popen([sys.executable, "-m", "skywire_trio", "tail", "--json",
                                      "--collection", "app.bsky.feed.*", "--since", "0"],
                                     env=env, cwd=ROOT, stdout=g, stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: "following the log after id 0" in err.read_text(), 60)
            assert _lines(out) == [] and tail.poll() is None
            with replay_process(PDS_CAPTURE, "--rate", "200") as relay:
                env["SKYWIRE_RELAY_URL"] = relay
                with service_process(env, tmp_path / "service.log"):
                    assert wait_for(lambda: len(_lines(out)) >= 473, 60), _lines(out)[-3:]
                    ids = query(database, "SELECT id FROM firehose_events WHERE "
                                          "collection LIKE 'app.bsky.feed.%' OR event_type IN "
                                          "('identity', 'account') ORDER BY id")
                    assert wait_for(lambda: len(_lines(out_json)) >= len(ids), 30)
        finally:
            tail.terminate(), tail_json.terminate()
            tail.wait(10), tail_json.wait(10)
    lines = _lines(out)
    assert [int(x.split()[0]) for x in lines] == list(range(1, 474))
    commit = next(x for x in lines if " create " in x)
    assert "did:" in commit and "app.bsky." in commit and commit.split()[1].endswith("+00:00")
    events = [json.loads(x) for x in _lines(out_json)]
    assert [e["id"] for e in events] == [i for (i,) in ids]


def test_status_and_tables(database, tmp_path):
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path)
        with service_process(env, tmp_path / "service.log"):
            assert wait_for(lambda: query(database, "SELECT last_id FROM firehose_cursor")
                            == [(473,)], 30)
            for name in ("a", "b"):
                subprocess.run([sys.executable, "-m", "skywire_trio", "tokens", "create", name],
                               env=env, cwd=ROOT, check=True, capture_output=True)
            subprocess.run([sys.executable, "-m", "skywire_trio", "tokens", "revoke", "b"],
                           env=env, cwd=ROOT, check=True, capture_output=True)
            shown = subprocess.run([sys.executable, "-m", "skywire_trio", "status"], env=env,
                                   cwd=ROOT, capture_output=True, text=True, timeout=30)
            live = json.loads(subprocess.run(
                [sys.executable, "-m", "skywire_trio", "status", "--json"], env=env, cwd=ROOT,
                capture_output=True, text=True, check=True).stdout)
            listed = subprocess.run([sys.executable, "-m", "skywire_trio", "tokens", "list"],
                                    env=env, cwd=ROOT, capture_output=True, text=True,
                                    check=True).stdout.splitlines()
        stopped = subprocess.run([sys.executable, "-m", "skywire_trio", "status"], env=env,
                                 cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    screen = shown.stdout
    assert "status      ok (role all" in screen and "last id 473" in screen
    assert "tokens      1 active" in screen and "firehose_events_default" in screen
    assert live["cursor"]["last_id"] == 473 and live["live"]["health"]["last_id"] == 473
    assert live["tokens_active"] == 1 and live["partitions"][-1]["default"]
    assert listed[0].split()[:3] == ["name", "collections", "event_types"]
    assert [x.split()[0] for x in listed[1:]] == ["a", "b"]
    revoked_at = listed[2].split()[-2]
    assert "T" in revoked_at and revoked_at.endswith("+00:00")
    # Stopped: what the database knows is still shown, and it says the service is not there.
    assert stopped.returncode == 0 and "not answering" in stopped.stdout
    assert "last id 473" in stopped.stdout


def test_refusals_exit_2_with_one_line(database, tmp_path):
    env = service_env(database, "ws://127.0.0.1:9", tmp_path)
    cases = [(["tokens", "revoke", "nobody"], "no active token"),
             (["tail", "--collection", "not an nsid"], "is not an NSID"),
             (["cursor", "set", "-1"], "SEQ must be")]
    for argv, message in cases:
        result = subprocess.run([sys.executable, "-m", "skywire_trio", *argv], env=env,
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (argv, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
