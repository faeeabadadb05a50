"""The HTTP client of webhook delivery: pooled httpx clients, signed POSTs, outcomes.

httpx runs on trio through anyio/httpcore. Each subscription has its own client whose
connections are kept alive across batches; redirects are never followed (a 3xx is a
failure: following one could lead past the address guard); a request has ``timeout``
seconds in all; at most 64 KiB of a response body is read (kept for the error message),
so a hostile receiver cannot make us buffer.
Proxy variables from the environment are ignored.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpcore
import httpx
import trio

from . import signing
from .safety import GuardedBackend, Policy, UnsafeDestination

MAX_RESPONSE_BYTES = 64 * 1024
ERROR_TEXT = 300  # characters of a response body kept in last_error
USER_AGENT = "skywire-trio-webhooks/1"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one attempt came to.

    ``kind``: ``ok`` (2xx), ``status`` (any other status), ``timeout``, ``connect``
    (refused, reset, DNS), ``refused`` (the address guard), ``error`` (anything else the
    transport raised).
    """

    kind: str
    status: int | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """The receiver acknowledged with a 2xx."""
        return self.kind == "ok"


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with a connection pool whose network backend is guarded."""

    def __init__(self, policy: Policy, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        # The parent builds its own pool; ours differs only in the network backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy))


class WebhookClient:
    """Sends signed batches; one instance (one pool) for every subscription."""

    def __init__(self, client: httpx.AsyncClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def send(self, url: str, secret: str, webhook_id: str, body: bytes) -> Outcome:
        """POST ``body`` to ``url``, signed; never raises for what the receiver does."""
        headers = signing.headers(secret, webhook_id, int(time.time()), body)
        try:
            with trio.fail_after(self._timeout):
                async with self._client.stream("POST", url, content=body,
                                               headers=headers) as response:
                    text = await _read_some(response)
        except (trio.TooSlowError, httpx.TimeoutException):
            return Outcome("timeout", error=f"no response within {self._timeout:g} s")
        except UnsafeDestination as exc:
            return Outcome("refused", error=str(exc))
        except httpx.ConnectError as exc:
            return Outcome("connect", error=f"cannot connect: {exc or type(exc).__name__}")
        except httpx.TransportError as exc:
            return Outcome("error", error=f"{type(exc).__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return Outcome("ok", response.status_code)
        shown = text.decode("utf-8", "replace")[:ERROR_TEXT].strip()
        return Outcome("status", response.status_code,
                       f"HTTP {response.status_code}" + (f": {shown}" if shown else ""))


async def _read_some(response: httpx.Response) -> bytes:
    """At most MAX_RESPONSE_BYTES of the body; the rest is never read."""
    received = bytearray()
    async for chunk in response.aiter_raw():
        received += chunk
        if len(received) >= MAX_RESPONSE_BYTES:
            break
    return bytes(received[:MAX_RESPONSE_BYTES])


class Clients:
    """Makes each subscription's client: its own small pool, one settings and TLS context.

    One pool per subscription, not one for all: a subscription has one request in flight,
    and httpcore scans every connection of a pool on each request (with a hundred
    subscriptions that scan was the largest CPU cost of delivery, measured).
    """

    def __init__(self, policy: Policy, timeout: float) -> None:
        self._policy = policy
        self._timeout = timeout
        self._ssl = httpx.create_ssl_context(trust_env=False)  # loading CAs once

    @asynccontextmanager
    async def open(self) -> AsyncIterator[WebhookClient]:
        """A client with keep-alive connections, for one subscription's life."""
        limits = httpx.Limits(max_connections=2, max_keepalive_connections=1,
                              keepalive_expiry=30.0)
        transport = _GuardedTransport(self._policy, self._ssl, limits)
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(self._timeout),
                                     follow_redirects=False, trust_env=False,
                                     headers={"user-agent": USER_AGENT}) as client:
            yield WebhookClient(client, self._timeout)


@asynccontextmanager
async def open_client(policy: Policy, timeout: float) -> AsyncIterator[WebhookClient]:
    """One client (for a single destination or a one-off check)."""
    async with Clients(policy, timeout).open() as client:
        yield client
