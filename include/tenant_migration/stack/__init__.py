"""The embedded local stack: real servers on loopback, all state under ``.stack/`` of the repo.

Design note: every component module exposes ``up(topology)``, ``down(topology)`` and
``status(topology) -> list[ServiceStatus]``. ``up`` is idempotent (a running server is left alone, a
dead one is restarted) and ends only when the server answers, or raises ``StackError`` with a message
that says what to do.
"""
