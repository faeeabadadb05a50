"""The Python example in docs/consumers.md works against a real service."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

from .nats import nats_server, wait_stream_count
from .support import (
    PDS_CAPTURE,
    ROOT,
    query,
    replay_process,
    service_env,
    service_process,
    wait_for,
)


def test_consumer_example_follows_the_log(database, tmp_path):
    doc = (ROOT / "docs" / "consumers.md").read_text()
    example = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path)
        with service_process(env, tmp_path / "service.log"):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 30)
            token = subprocess.run(
                [sys.executable, "-m", "skywire_trio", "tokens", "create", "my-app",
                 "--collection", "app.bsky.feed.post"], env=env, cwd=ROOT, check=True,
                capture_output=True, text=True).stdout.strip()
            script = tmp_path / "consumer.py"
            script.write_text(example)
            proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                                    stdout=subprocess.PIPE, text=True,
                                    env={**env, "SKYWIRE_URL": f"http://127.0.0.1:{env['PORT']}",
                                         "SKYWIRE_TOKEN": token})
            cursor_file = tmp_path / "cursor.txt"
            last_id = query(database, "SELECT max(id) FROM firehose_events WHERE "
                                      "collection = 'app.bsky.feed.post' OR event_type IN "
                                      "('identity', 'account')")[0][0]
            try:
                assert wait_for(lambda: cursor_file.exists()
                                and cursor_file.read_text() == str(last_id), 20)
                time.sleep(0.5)  # now long-polling at the head
            finally:
                proc.terminate()
                out = proc.communicate(timeout=10)[0]
    creates = query(database, "SELECT repo FROM firehose_events WHERE "
                              "collection = 'app.bsky.feed.post' AND action = 'create' "
                              "ORDER BY id")
    lines = out.splitlines()
    assert len(lines) == len(creates) == 260
    assert [line.split(" ", 1)[0] for line in lines] == [r[0] for r in creates]


def test_nats_consumer_example_follows_the_stream(database, tmp_path):
    doc = (ROOT / "docs" / "consumers.md").read_text()
    example = re.search(r"```python nats-consumer\n(.*?)```", doc, re.S).group(1)
    with nats_server(tmp_path) as nats, replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path, SKYWIRE_NATS_URL=nats.url)
        with service_process(env, tmp_path / "service.log"):
            assert wait_stream_count(nats.url, 473, 30)
            script = tmp_path / "nats_consumer.py"
            script.write_text(example.replace('"nats://127.0.0.1:4222"', f'"{nats.url}"'))
            proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                                    stdout=subprocess.PIPE, text=True)
            lines = []
            watchdog = threading.Timer(30, proc.kill)  # readline must not block forever
            watchdog.start()
            try:
                while len(lines) < 260:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    lines.append(line)
            finally:
                watchdog.cancel()
                proc.kill()
                proc.wait(10)
    creates = query(database, "SELECT repo FROM firehose_events WHERE "
                              "collection = 'app.bsky.feed.post' AND action = 'create' "
                              "ORDER BY id")
    assert len(lines) == len(creates) == 260
    assert [line.split(" ", 1)[0] for line in lines] == [r[0] for r in creates]
