"""Shared error formatting for the supervisors' one-line log messages."""

from __future__ import annotations


def describe(exc: BaseException) -> str:
    """One line for an exception or an exception group (trio nests them)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"
