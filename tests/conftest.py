"""Shared fixtures: every test gets its own database on the real PostgreSQL server.

Tiers: tests marked ``quick`` need no PostgreSQL and no service process (``scripts/test
-m quick``); everything else is the full suite, which ``scripts/test`` and CI run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import fresh_database


@pytest.fixture
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a new, migrated database, dropped after the test."""
    if request.node.get_closest_marker("quick"):
        pytest.fail("a test marked quick must not need PostgreSQL (drop the marker)")
    with fresh_database() as url:
        yield url
