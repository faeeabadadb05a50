"""Which webhook destinations are allowed (server-side request forgery guard).

In production only ``https`` URLs are accepted, and a destination that resolves to a
loopback, private, link-local, metadata or otherwise non-global address is refused unless
``SKYWIRE_WEBHOOK_ALLOW_PRIVATE=1``. The address check runs when a subscription is created
and again on every connection (``GuardedBackend``), so a name that later resolves to an
internal address (DNS rebinding) is still refused. In development ``http`` and loopback
receivers work, so a local receiver can be tried at once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore
import trio

MAX_URL_LENGTH = 2000


class UnsafeDestination(ValueError):
    """A webhook URL or the address it resolves to is not allowed."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the guard enforces (from ``Settings``)."""

    https_only: bool
    check_addresses: bool

    @classmethod
    def for_environment(cls, production: bool, allow_private: bool) -> Policy:
        """Production: https, global addresses unless allowed; development: anything."""
        return cls(https_only=production, check_addresses=production and not allow_private)


def check_url(url: str, policy: Policy) -> None:
    """Refuse a malformed URL, or a scheme the policy does not allow."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeDestination(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeDestination(f"not a valid URL: {exc}") from None
    allowed = ("https",) if policy.https_only else ("http", "https")
    if parts.scheme not in allowed:
        raise UnsafeDestination(f"the URL must start with {' or '.join(a + '://' for a in allowed)}"
                                + (" in production" if policy.https_only else ""))
    if not parts.hostname:
        raise UnsafeDestination("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeDestination("credentials in the URL are not allowed (use the signature)")
    if port == 0:
        raise UnsafeDestination("the URL's port must be 1..65535")
    if any(c.isspace() for c in url):
        raise UnsafeDestination("the URL contains white space")


def address_refusal(address: str) -> str | None:
    """Why ``address`` may not be connected to under the guard, or None if it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (("loopback", ip.is_loopback), ("link-local or metadata", ip.is_link_local),
                       ("unspecified", ip.is_unspecified), ("multicast", ip.is_multicast),
                       ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return kind
    if not ip.is_global:  # shared address space (100.64/10, cloud metadata), documentation...
        return "non-global"
    return None


def check_addresses(host: str, addresses: Iterable[str]) -> str:
    """The first allowed address of ``host``; raises if any address is refused.

    One refused address refuses the host: a name that mixes public and internal records is
    the classic rebinding trick.
    """
    allowed = None
    for address in addresses:
        reason = address_refusal(address)
        if reason is not None:
            raise UnsafeDestination(f"{host} resolves to {address}, a {reason} address "
                                    "(set SKYWIRE_WEBHOOK_ALLOW_PRIVATE=1 to allow it)")
        allowed = allowed or address
    if allowed is None:
        raise UnsafeDestination(f"{host} does not resolve to any address")
    return allowed


def resolve_now(url: str, policy: Policy) -> None:
    """At creation: check the URL, and under the guard where its host resolves to."""
    check_url(url, policy)
    if not policy.check_addresses:
        return
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeDestination(f"{parts.hostname} cannot be resolved: {exc}") from None
    check_addresses(parts.hostname or "", [info[4][0] for info in infos])


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend, connecting only to addresses the guard allows.

    The name is resolved here and the connection made to the vetted address; TLS still
    verifies the certificate against the name (httpcore passes it as the SNI host).
    """

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._inner = httpcore.TrioBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[object] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        """Resolve ``host``, refuse internal addresses, connect to an allowed one."""
        if self._policy.check_addresses:
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise httpcore.ConnectError(f"{host} cannot be resolved: {exc}") from exc
            host = check_addresses(host, [info[4][0] for info in infos])
        return await self._inner.connect_tcp(host, port, timeout, local_address,
                                             socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[object] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        """Webhooks never use Unix sockets."""
        raise UnsafeDestination("Unix sockets are not webhook destinations")

    async def sleep(self, seconds: float) -> None:
        """As the trio backend."""
        await trio.sleep(seconds)
