"""The error every gate raises after it stored its evidence."""

from __future__ import annotations


class GateFailed(RuntimeError):
    """A gate's expectations were not met; the message names what failed with the numbers."""
