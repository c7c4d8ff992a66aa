"""Live migration of one tenant out of a shared IoT platform into a dedicated deployment."""

from __future__ import annotations

__version__ = "0.1.0"
