"""Where the deployment's platform profiles live, and their names: a directory listing, nothing
parsed (the DAG form lists the names at parse time; ``profile`` reads a profile when a task runs).
Plain standard library: importing this module is cheap."""

from __future__ import annotations

import os
import re
from pathlib import Path

PROFILES_VARIABLE = "tm_profiles_dir"  # Airflow Variable, read at run time only
PROFILES_ENV = "TM_PROFILES_DIR"
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "profiles"  # include/profiles
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def env_dir() -> Path:
    """The folder the environment names, else the project's ``include/profiles``."""
    return Path(os.environ.get(PROFILES_ENV) or DEFAULT_DIR)


def available(folder: Path | None = None) -> list[str]:
    """Profile names in ``folder`` (the stems of its ``*.yaml``), sorted."""
    folder = folder if folder is not None else env_dir()
    return sorted(p.stem for p in folder.glob("*.yaml") if NAME.match(p.stem)) if folder.is_dir() else []
