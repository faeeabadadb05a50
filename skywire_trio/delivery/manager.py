"""The delivery task: leads webhook delivery and keeps one worker per active subscription.

    delivery            leader only (its own advisory lock, waited for blocking)
    └── workers         a nursery of their own: one task per active subscription

The subscription table is read every ``POLL_SECONDS``: a subscription created, paused,
resumed or deleted with the command line takes effect within that, without a restart.
Database faults end the whole task tree, which ``supervise`` starts again from what is
saved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..config import Settings
from ..log.leadership import DELIVERY_LOCK, lead
from ..log.notify import CommitFeed
from ..log.reader import ReadStore
from ..log.subscriptions import open_delivery_store
from ..stats import DeliveryStats, SubscriptionStats
from ..supervise import TaskHealth, supervise
from ..types import Subscription
from .client import Clients
from .safety import Policy
from .worker import Deps, ParsedCache, RetryPolicy, SharedMatches, SubscriptionWorker

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0


async def run_delivery(settings: Settings, read_store: ReadStore, feed: CommitFeed,
                       stats: DeliveryStats, tasks: dict[str, TaskHealth], *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Deliver webhooks until cancelled (as a standby while another instance leads).

    Under the one supervision rule (supervise.py): a database or network fault, or the loss
    of the lock's connection, restarts the tree from what is saved, with backoff; a bug is
    reported as a crash.
    """
    assert settings.database_url is not None
    database_url = settings.database_url
    retry = RetryPolicy(settings.webhook_retry_min, settings.webhook_retry_max,
                        settings.webhook_max_attempts, settings.webhook_max_age)
    policy = Policy.for_environment(settings.environment == "production",
                                    settings.webhook_allow_private)

    async def deliver(ready: Callable[[], None]) -> None:
        ready()  # waiting for the lock is this task's normal state on a standby
        try:
            async with lead(database_url, DELIVERY_LOCK):
                stats.leader = True
                log.info("webhook delivery: this instance delivers")
                async with open_delivery_store(database_url) as store:
                    clients = Clients(policy, settings.webhook_timeout)
                    parsed = ParsedCache()
                    deps = Deps(store, read_store, feed, clients, retry, parsed,
                                SharedMatches(parsed))
                    await _manage(deps, stats)
        finally:
            stats.leader = False
            stats.subscriptions.clear()

    await supervise("delivery", deliver, settings, tasks, task_status=task_status)


async def _manage(deps: Deps, stats: DeliveryStats) -> None:
    """Start and stop workers as subscriptions become active or stop being active."""
    running: dict[int, trio.CancelScope] = {}
    workers: dict[int, SubscriptionWorker] = {}
    # When a worker stopped its subscription itself (410, pause policy): a listing read
    # before that still says "active" and must not start it again.
    stopped_at: dict[int, float] = {}

    async def work(subscription: Subscription, *,
                   task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            entry = stats.subscriptions.setdefault(subscription.id,
                                                   SubscriptionStats(subscription.name))
            worker = workers[subscription.id] = SubscriptionWorker(subscription, deps, entry)
            task_status.started(scope)
            try:
                await worker.run()
                stopped_at[subscription.id] = trio.current_time()
            finally:
                if running.get(subscription.id) is scope:
                    del running[subscription.id]
                if workers.get(subscription.id) is worker:
                    del workers[subscription.id]

    async with trio.open_nursery() as nursery:
        while True:
            read_at = trio.current_time()
            active = {s.id: s for s in await deps.store.active_subscriptions()}
            for subscription_id in list(running):
                if subscription_id not in active:
                    log.info("webhook delivery: stopping subscription %d", subscription_id)
                    running.pop(subscription_id).cancel()
            for subscription_id in list(stats.subscriptions):
                if subscription_id not in active and subscription_id not in running:
                    del stats.subscriptions[subscription_id]
            for subscription in active.values():
                if subscription.id not in running and \
                        stopped_at.get(subscription.id, -1.0) < read_at:
                    log.info("webhook delivery: starting subscription %s (after id %d)",
                             subscription.name, subscription.cursor)
                    running[subscription.id] = await nursery.start(work, subscription)
            # One query for every subscription's `deadletters retry` requests.
            for subscription_id in await deps.store.with_requested_retries():
                if subscription_id in workers:
                    workers[subscription_id].retries_requested = True
            await trio.sleep(POLL_SECONDS)

