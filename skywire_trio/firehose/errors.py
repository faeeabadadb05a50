"""The decoder's one exception, shared by the codec and its field rules (``sanitize``)."""

from __future__ import annotations


class FrameError(ValueError):
    """The frame cannot be parsed or stored; its bytes should be saved for an operator."""
