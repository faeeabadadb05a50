"""Deployment files are checked by real tools (no Docker engine runs here, so they are
linted and validated, not built)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from skywire_trio.api.http_server import ConnectionCounts
from skywire_trio.api.longpoll import LongPolls
from skywire_trio.api.prometheus import render_metrics
from skywire_trio.stats import IngestStats

from .support import ROOT

pytestmark = pytest.mark.quick  # no PostgreSQL: the quick tier (README)

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def test_dockerfile_passes_hadolint():
    result = subprocess.run([BIN / "hadolint", DEPLOY / "Dockerfile"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("FROM ") == 2 and "USER 10001" in text and "HEALTHCHECK" in text
    assert "/health" in text


def test_compose_file_matches_the_compose_spec():
    result = subprocess.run([BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec",
                             DEPLOY / "compose.yaml"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies():
    result = subprocess.run(["systemd-analyze", "verify",
                             DEPLOY / "systemd" / "skywire-trio.service"],
                            capture_output=True, text=True)
    # The install path does not exist on a build machine; anything else is a real problem.
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "is not executable" not in line]
    assert problems == []


def test_fly_toml_runs_migrations_as_release_step():
    config = tomllib.loads((DEPLOY / "fly.toml").read_text())
    assert config["deploy"]["release_command"] == "migrate"
    assert config["http_service"]["checks"][0]["path"] == "/health"


def test_grafana_dashboard_charts_the_metrics_the_service_exports():
    dashboard = json.loads((DEPLOY / "grafana" / "skywire-trio.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = set(re.findall(r"skywire_[a-z_]+", exprs))
    text = render_metrics(IngestStats(), Counter(), connections=ConnectionCounts(1000),
                          polls=LongPolls(None))
    exported = set(re.findall(r"^# TYPE (skywire_[a-z_]+)", text, re.M))
    assert used <= exported, used - exported
    for needed in ("skywire_events_committed_total", "skywire_lag_seconds",
                   "skywire_batch_seconds_total", "skywire_buffered_frames",
                   "skywire_reconnects_total", "skywire_api_responses_total"):
        assert needed in used


def test_deploy_files_give_the_connection_cap_its_descriptors_and_the_grace_its_time():
    """LimitNOFILE / nofile cover the default cap plus what the service keeps for itself,
    and SIGKILL comes later than the shutdown grace."""
    from skywire_trio.api.http_server import MAX_REFUSING
    from skywire_trio.api.server import RESERVED_DESCRIPTORS
    from skywire_trio.config import Settings

    defaults = Settings()
    needed = (defaults.max_connections + RESERVED_DESCRIPTORS + defaults.api_pool_size
              + MAX_REFUSING)
    unit = (DEPLOY / "systemd" / "skywire-trio.service").read_text()
    assert int(re.search(r"^LimitNOFILE=(\d+)$", unit, re.M)[1]) >= needed
    assert int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)[1]) > defaults.shutdown_grace
    # The service's block is the last one in the file (no YAML parser among the deps).
    service = (DEPLOY / "compose.yaml").read_text().split("\n  skywire:\n", 1)[1]
    assert int(re.search(r"^ +soft: (\d+)$", service, re.M)[1]) >= needed
    assert int(re.search(r"^ +stop_grace_period: (\d+)s$", service, re.M)[1]) > (
        defaults.shutdown_grace)
