"""Property-based fuzzing of the HTTP API of a real service process.

Random query strings and Authorization headers must never produce a server error, and
every answer must have the documented shape (the /openapi.json schemas).
"""

from __future__ import annotations

import itertools
import string
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .support import (
    PDS_CAPTURE,
    ROOT,
    fresh_database,
    query,
    replay_process,
    service_env,
    service_process,
    wait_for,
)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[str, str, dict]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with fresh_database() as url, replay_process(PDS_CAPTURE) as relay:
        env = service_env(url, relay, tmp, API_TOKEN_SALT="fuzz-salt")
        token = subprocess.run([sys.executable, "-m", "skywire_trio", "tokens", "create", "fuzz",
                                "--rate-limit", "100000"], env=env, cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
        with service_process(env, tmp / "service.log"):
            base = f"http://127.0.0.1:{env['PORT']}"
            assert wait_for(lambda: query(url, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 30)
            spec = httpx.get(f"{base}/openapi.json").json()
            yield base, token, spec


values = st.one_of(
    st.text(max_size=30), st.integers().map(str),
    st.sampled_from(["app.bsky.feed.post", "app.bsky.*", "app.*", "commit", "identity",
                     "delete", "did:plc:abc", "0", "1000", "1001", "-1", "nan", "inf", "1e3",
                     "", " ", "\x00", "%00", "9223372036854775807", "9223372036854775808"]))
names = st.sampled_from(["since", "limit", "collection", "repo", "event_type", "action",
                         "wait", "other", ""])


def _check_shape(response: httpx.Response, spec: dict) -> None:
    assert response.status_code < 500, response.text
    documented = spec["paths"]["/events"]["get"]["responses"]
    assert str(response.status_code) in documented, response.status_code
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if response.status_code == 200:
        assert set(body) == {"events", "cursor"} and isinstance(body["cursor"], int)
        required = spec["components"]["schemas"]["Event"]["required"]
        assert all(set(required) <= set(event) for event in body["events"])
    else:
        assert set(body) == {"error", "message"}


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(names, values), max_size=6))
def test_random_queries_never_fail(live, params):
    base, token, spec = live
    # Keep long-polls short: any wait value that parses becomes 0.
    params = [(n, "0") if n == "wait" else (n, v) for n, v in params]
    response = httpx.get(f"{base}/events", params=params,
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)
    _check_shape(response, spec)


_SOURCES = itertools.count()


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
# Header values a client can send at all (no control characters).
@given(st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ",
               max_size=80))
def test_random_authorization_headers_get_401(live, header):
    base, _, spec = live
    # Failed authentications are rate limited per client address: each example comes from
    # its own loopback address, so every one of them must be a plain 401.
    source = f"127.0.1.{1 + next(_SOURCES) % 250}"
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source)) as client:
        response = client.get(f"{base}/events", headers={"Authorization": header.strip()},
                              timeout=10)
    assert response.status_code == 401
    _check_shape(response, spec)
