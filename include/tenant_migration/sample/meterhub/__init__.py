"""meterhub, the second bundled platform: an energy-metering SaaS, deliberately unlike the sample
(schema ``hub``, keyspace ``hub_metrics``; see ``schema.sql`` and ``schema.cql``). Its profile is
``profiles/meterhub.yaml`` (``PROFILE``); ``PROFILES`` is a folder holding it alone."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
PROFILES = HERE / "profiles"
PROFILE = PROFILES / "meterhub.yaml"
TENANT_MAP = HERE / "tenant_map.yaml"
