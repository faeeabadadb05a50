"""Which events a subscription receives: the /events filter, then optional refinements.

The filter part is an ``EventFilter``, so the log selects events with the same SQL as
``/events`` and followers of the commit feed with the same rule in memory
(``EventFilter.matches``). Two refinements need the event's JSON: a JMESPath expression
(compiled once, an event passes when the result is true in JMESPath's sense) and a set of
two actions (the filter holds at most one; the same rule: identity and account events pass,
other events need one of the actions).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.parser

from ..identifiers import ACTIONS, split_collections
from ..types import COLLECTION_EXEMPT, EventFilter, LogEvent, Subscription

MAX_EXPRESSION = 2000


class BadExpression(ValueError):
    """A JMESPath expression that does not compile."""


def compile_expression(text: str) -> jmespath.parser.ParsedResult:
    """Compile a JMESPath expression, or raise ``BadExpression`` saying why."""
    if len(text) > MAX_EXPRESSION:
        raise BadExpression(f"the JMESPath expression is longer than {MAX_EXPRESSION} characters")
    try:
        return jmespath.compile(text)
    except jmespath.exceptions.JMESPathError as exc:
        raise BadExpression(f"invalid JMESPath expression: {exc}".replace("\n", " ")) from None


def truthy(value: object) -> bool:
    """JMESPath truth: false, null and empty strings, lists and objects are false; 0 is not."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return True


class Matcher:
    """A subscription's selection: ``filter`` for the SQL and the feed, ``refine`` after."""

    def __init__(self, subscription: Subscription) -> None:
        exact, prefixes = split_collections(subscription.collections)
        actions = set(subscription.actions)
        single = actions.pop() if len(actions) == 1 else None
        self.filter = EventFilter(collections=exact, prefixes=prefixes,
                                  repos=subscription.repos,
                                  event_types=subscription.event_types, action=single,
                                  limit=subscription.batch_size)
        # Two actions out of three: the filter cannot say it, the JSON can.
        self._actions = (frozenset(subscription.actions)
                         if 1 < len(set(subscription.actions)) < len(ACTIONS) else None)
        self._expression = (compile_expression(subscription.jmespath)
                            if subscription.jmespath else None)
        # Equal for subscriptions that select the same events (batch size aside).
        self.key = (dataclasses.replace(self.filter, limit=0), self._actions,
                    subscription.jmespath)

    @property
    def refines(self) -> bool:
        """Whether events passing ``filter`` must also pass ``accepts`` (their JSON)."""
        return self._expression is not None or self._actions is not None

    def matches(self, event: LogEvent, parsed: Callable[[LogEvent], Any]) -> bool:
        """The whole rule for a committed event; ``parsed`` gives its JSON as Python."""
        if not self.filter.matches(event):
            return False
        if self._actions is not None and event.event_type not in COLLECTION_EXEMPT \
                and event.action not in self._actions:
            return False
        return self._expression is None or self.accepts(parsed(event))

    def accepts(self, document: Any) -> bool:
        """The refinements, on an event's parsed JSON (the filter already passed)."""
        if self._actions is not None and document.get("kind") not in COLLECTION_EXEMPT \
                and (document.get("commit") or {}).get("operation") not in self._actions:
            return False
        if self._expression is None:
            return True
        try:
            return truthy(self._expression.search(document))
        except jmespath.exceptions.JMESPathError:
            # e.g. length(null) on an event without the field: it does not match.
            return False


def split_page(fragment: bytes) -> Iterator[tuple[Any, bytes]]:
    """Each event of a page's comma-joined JSON, parsed, with its exact bytes."""
    text = fragment.decode()
    decoder = json.JSONDecoder()
    position = 0
    while position < len(text):
        document, end = decoder.raw_decode(text, position)
        yield document, text[position:end].encode()
        position = end + 1  # the comma
