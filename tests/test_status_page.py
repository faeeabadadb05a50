"""The status page in a real browser (Debian's Chromium via Playwright), fed by a replay."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .support import (
    PDS_CAPTURE,
    ROOT,
    query,
    replay_process,
    service_env,
    service_process,
    wait_for,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Where the screenshot for docs/ lands (set SKYWIRE_SCREENSHOT=docs/status-page.png to refresh).
SCREENSHOT = os.environ.get("SKYWIRE_SCREENSHOT")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed "
                    "(scripts/setup installs Debian's chromium)")
def test_status_page_charts_a_replay(database, tmp_path):
    with replay_process(PDS_CAPTURE, "--rate", "60") as relay:
        env = service_env(database, relay, tmp_path, SKYWIRE_PROGRESS_INTERVAL="1")
        base = f"http://127.0.0.1:{env['PORT']}"
        with service_process(env, tmp_path / "service.log"):
            # A few samples with events flowing (the replay sends ~60 frames/s for ~6 s).
            assert wait_for(lambda: _ready(base), 30), (tmp_path / "service.log").read_text()
            # Playwright's sync API runs an asyncio loop of its own, which trio-asyncio (used
            # by other tests in this process) refuses to nest: the browser runs in a child.
            browse = subprocess.run([sys.executable, "-m", "tests.test_status_page", base,
                                     str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                                    timeout=120)
            assert browse.returncode == 0, browse.stdout + browse.stderr
        # The progress line, once a second here (SKYWIRE_PROGRESS_INTERVAL=1).
        progress = [line for line in (tmp_path / "service.log").read_text().splitlines()
                    if "progress:" in line]
        assert len(progress) >= 3
        last_id = _get_last_id(database)
        assert any(f"last id {last_id}" in line for line in progress)


def _get_last_id(database: str) -> int:
    return query(database, "SELECT last_id FROM firehose_cursor")[0][0]


def _browse(base: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base + "/")
        page.wait_for_selector("#rate-chart canvas", timeout=10_000)
        page.wait_for_selector("#lag-chart canvas", timeout=10_000)
        # The charts hold the service's history, and a committed rate above zero.
        points = page.evaluate(
            "() => [...document.querySelectorAll('.u-title')].map(t => t.textContent)")
        assert points == ["committed events/s", "lag (s)"]
        status = _get(base + "/status.json")
        assert page.text_content("#status") == status["status"] == "ok"
        # What the charts plot is the service's history: unix times, a rate above 0.
        xs, rates = page.evaluate("() => charts['rate-chart'].data")
        assert len(xs) >= 3 and max(rates) > 0
        assert xs == sorted(xs) and set(xs) <= set(status["history"]["at"]) | {None}
        last_id = page.evaluate("() => [...document.querySelectorAll('#ingest .card')]"
                                ".find(c => c.textContent.endsWith('last id'))"
                                ".querySelector('b').textContent")
        assert 0 < int(last_id) <= status["health"]["last_id"]
        # The page refreshes itself from /status.json.
        first = page.text_content("#updated")
        page.wait_for_function(f"document.getElementById('updated').textContent "
                               f"!== {json.dumps(first)}", timeout=10_000)
        names = page.eval_on_selector_all(
            "#partitions tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
        assert names == [p["name"] for p in _get(base + "/status.json")["partitions"]]
        assert len(names) >= 2 and names[-1] == "firehose_events_default"
        shot = tmp_path / "status-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if SCREENSHOT:
            shutil.copy(shot, SCREENSHOT)
        assert errors == []
        browser.close()


def _ready(base: str) -> bool:
    try:
        status = _get(base + "/status.json")
    except OSError:
        return False
    rates = status["history"]["rate"]
    return len(rates) >= 3 and max(rates) > 0 and len(status["partitions"]) >= 2


if __name__ == "__main__":
    _browse(sys.argv[1], Path(sys.argv[2]))
