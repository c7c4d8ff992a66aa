"""The sample shared IoT platform: its schemas, its tenant map and a deterministic data generator.

``data`` builds the rows (pure, no I/O); ``generate`` loads them into PostgreSQL and Cassandra.
"""

from __future__ import annotations
