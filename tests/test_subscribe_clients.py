"""Third-party clients against /subscribe: a real Jetstream library (@skyware/jetstream on
Node.js) and the plain `websockets` example of docs/consumers.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import trio

from skywire_trio.firehose.codec import decode_frame

from .support import ROOT, relay_frames
from .test_subscribe import JETSTREAM_KINDS, commit_rows, events_answer, start_service

JS = ROOT / "tests" / "jetstream_js"
NODE = shutil.which("node")
_PRINTED = re.compile(r"^(\d+) (did:\S+) ", re.M)


@pytest.fixture
async def service(database, nursery, tmp_path):
    return await start_service(database, nursery, tmp_path)


async def _lines(process: trio.Process, count: int, timeout: float = 30) -> list[dict]:
    """``count`` JSON lines from the process's stdout."""
    assert process.stdout is not None
    buffer, lines = b"", []
    with trio.fail_after(timeout):
        while len(lines) < count:
            chunk = await process.stdout.receive_some(65536)
            assert chunk, f"the client exited after {len(lines)} lines"
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines += [json.loads(line) for line in complete if line.strip()]
    return lines


@pytest.mark.skipif(NODE is None or not (JS / "node_modules" / "@skyware").exists(),
                    reason="Node.js or tests/jetstream_js/node_modules missing: scripts/setup")
async def test_a_jetstream_client_library_gets_what_events_answers(service, nursery):
    endpoint = service.url(None).split("?")[0] + f"?token={service.tokens['all']}"
    combos = [({"wantedCollections": ["app.bsky.feed.post", "app.bsky.graph.*"]},
               {"collection": ["app.bsky.feed.post", "app.bsky.graph.*"]}),
              ({}, {})]
    for wanted, filters in combos:
        expected = await events_answer(service, **filters, **JETSTREAM_KINDS)
        # The library drops what it considers malformed (a commit without collection,
        # rkey or rev, a create without a record); the log's commits all have them.
        expected = [e for e in expected if e["kind"] != "commit" or e["commit"].get("rkey")]
        options = {"endpoint": endpoint, "cursor": 1, "count": len(expected) + 1, **wanted}
        process = await nursery.start(lambda task_status, o=options: trio.run_process(
            ["node", str(JS / "follow.mjs"), json.dumps(o)], stdout=subprocess.PIPE,
            check=False, task_status=task_status))
        try:
            assert await _lines(process, len(expected)) == expected, wanted
            # Then live: a post committed now arrives too.
            post = next(f for f in relay_frames()
                        if decode_frame(f).rows[0].collection == "app.bsky.feed.post")
            head = await commit_rows(service.database, [post])
            [live] = await _lines(process, 1, timeout=10)
            assert live["id"] == head
        finally:
            process.kill()


async def test_the_plain_websocket_example_of_the_docs(service, tmp_path):
    doc = (ROOT / "docs" / "consumers.md").read_text()
    section = doc[doc.index("A plain websocket client"):]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "follow.py"
    script.write_text(example
                      .replace('"ws://127.0.0.1:4000/subscribe"',
                               repr(service.url(None).split("?")[0]))
                      .replace('"swt_..."', repr(service.tokens["all"])))
    posts = await events_answer(service, collection="app.bsky.feed.post", event_type="commit",
                                action="create")
    async with trio.open_nursery() as nursery:
        process = await nursery.start(lambda task_status: trio.run_process(
            [sys.executable, str(script)], stdout=subprocess.PIPE, check=False,
            task_status=task_status))
        assert process.stdout is not None
        output = b""
        try:
            with trio.fail_after(30):
                while len(printed := _PRINTED.findall(output.decode())) < len(posts):
                    chunk = await process.stdout.receive_some(65536)
                    assert chunk, output[-500:]
                    output += chunk
        finally:
            process.kill()
    # Each post printed as "id did text" (texts may hold line breaks of their own).
    assert [(int(i), did) for i, did in printed] == [(e["id"], e["did"]) for e in posts]
