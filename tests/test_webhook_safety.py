"""Webhook input checks: the address guard, URLs, expressions, signatures, unknown names.

Refused input gets a clear message and stores nothing.
"""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from skywire_trio.delivery import signing
from skywire_trio.delivery.client import open_client
from skywire_trio.delivery.matching import BadExpression, compile_expression, truthy
from skywire_trio.delivery.safety import Policy, UnsafeDestination, address_refusal, check_url

from .support import query
from .webhooks_support import cli

PRODUCTION = Policy.for_environment(production=True, allow_private=False)
DEVELOPMENT = Policy.for_environment(production=False, allow_private=False)


@pytest.mark.quick
@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private"), ("192.168.0.10", "private"), ("172.16.5.4", "private"),
    ("fd00:ec2::254", "private"),  # AWS's IPv6 metadata address
    ("169.254.169.254", "link-local or metadata"), ("fe80::1", "link-local or metadata"),
    ("100.100.100.200", "non-global"),  # Alibaba's metadata address (shared space)
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
    ("93.184.215.14", None), ("2606:4700:4700::1111", None),
])
def test_the_guard_refuses_every_internal_address_kind(address, kind):
    assert address_refusal(address) == kind


@pytest.mark.quick
def test_urls_production_wants_https_development_allows_http():
    check_url("https://hooks.example.com/x", PRODUCTION)
    check_url("http://127.0.0.1:8080/x", DEVELOPMENT)
    for url, policy, message in [
        ("http://hooks.example.com/x", PRODUCTION, "must start with https://"),
        ("ftp://hooks.example.com/x", DEVELOPMENT, "must start with http:// or https://"),
        ("https:///path", PRODUCTION, "no host"),
        ("https://user:pw@hooks.example.com/", PRODUCTION, "credentials"),
        ("https://hooks.example.com:99999/", PRODUCTION, "not a valid URL"),
        ("not a url", DEVELOPMENT, "must start with"),
    ]:
        with pytest.raises(UnsafeDestination, match=message):
            check_url(url, policy)


@pytest.mark.quick
def test_signatures_verify_with_the_independent_implementation():
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body = b'{"events":[{"id":1}],"cursor":1}'
    headers = signing.headers(secret, "msg_1_0_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == {"events": [{"id": 1}], "cursor": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"1", b"2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)


@pytest.mark.quick
def test_jmespath_expressions_compile_once_and_use_jmespath_truth():
    with pytest.raises(BadExpression, match="invalid JMESPath expression"):
        compile_expression("commit.[?")
    assert compile_expression("kind == 'commit'").search({"kind": "commit"}) is True
    assert [truthy(v) for v in (0, "", [], {}, None, False, "x", [0])] == [
        True, False, False, False, False, False, True, True]


@pytest.mark.quick
async def test_the_guard_also_runs_at_connect_time():
    # A name that resolves to loopback is refused when connecting, not only at creation
    # (DNS can change after a subscription was accepted): nothing is sent.
    async with open_client(PRODUCTION, timeout=2.0) as client:
        outcome = await client.send("https://localhost:9/hook", signing.new_secret(),
                                    "msg_1_0_1", b"{}")
    assert outcome.kind == "refused" and "loopback" in outcome.error


def test_refused_input_is_explained_and_stores_nothing(database, tmp_path):
    env = {"DATABASE_URL": database, "SKYWIRE_ENV": "production"}
    dev = {"DATABASE_URL": database}

    def refused(environment: dict, *args: str, code: int = 2) -> str:
        done = cli(environment, *args)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert done.stdout == ""
        return done.stderr

    create = ("subscriptions", "create", "s1", "--url")
    assert "must start with https://" in refused(env, *create, "http://hooks.example.com/")
    for url, kind in [("https://127.0.0.1:8443/", "loopback"), ("https://localhost/", "loopback"),
                      ("https://10.0.0.7/", "private"),
                      ("https://169.254.169.254/latest/meta-data", "link-local or metadata")]:
        message = refused(env, *create, url)
        assert f"a {kind} address" in message and "SKYWIRE_WEBHOOK_ALLOW_PRIVATE" in message
    assert "not a valid URL" in refused(dev, *create, "http://[::1/")
    assert "must start with http:// or https://" in refused(dev, *create, "file:///etc/passwd")
    ok = ("http://127.0.0.1:9/hook",)
    assert "invalid JMESPath expression" in refused(dev, *create, *ok, "--jmespath", "a.[?")
    assert "is not an NSID" in refused(dev, *create, *ok, "--collection", "app..bad")
    assert "--action 'upsert'" in refused(dev, *create, *ok, "--action", "upsert")
    assert "--batch must be from 1 to 1000" in refused(dev, *create, *ok, "--batch", "0")
    assert "--start must be" in refused(dev, *create, *ok, "--start", "yesterday")
    assert "NAME must be" in refused(dev, "subscriptions", "create", "bad name", "--url", *ok)
    assert query(database, "SELECT count(*) FROM webhook_subscriptions") == [(0,)]

    # Allowed on purpose: production with SKYWIRE_WEBHOOK_ALLOW_PRIVATE=1.
    done = cli({**env, "SKYWIRE_WEBHOOK_ALLOW_PRIVATE": "1"}, *create, "https://127.0.0.1:8443/")
    assert done.returncode == 0, done.stderr
    secret = done.stdout.splitlines()[-1]
    assert secret.startswith("whsec_") and " " not in secret
    assert query(database, "SELECT name, secret, cursor FROM webhook_subscriptions") == [
        ("s1", secret, 0)]
    assert "already exists" in refused(dev, *create, *ok)

    for args in (("subscriptions", "pause", "nope"), ("subscriptions", "resume", "nope"),
                 ("subscriptions", "delete", "nope"), ("deadletters", "list", "nope"),
                 ("deadletters", "retry", "nope", "--all")):
        assert "no subscription named 'nope'" in refused(dev, *args, code=2)
    assert "has no dead letter 7" in refused(dev, "deadletters", "retry", "s1", "7", code=2)
    assert query(database, "SELECT count(*) FROM webhook_subscriptions") == [(1,)]
    assert query(database, "SELECT count(*) FROM webhook_dead_letters") == [(0,)]
