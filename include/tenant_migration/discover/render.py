"""A draft as tenant-map YAML, written the way the bundled maps are (one flow mapping per table,
aligned), with what could not be placed as comments beside the lines they concern. The text is
checked by the tenant map's own loader before it is returned (``discover.draft_text``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from tenant_migration.discover.placement import Draft, flow, scalar, table_line


class CassandraLines(Protocol):
    """What ``render`` needs of a keyspace's draft (``discover.cassandra.KeyspaceDraft``)."""

    def lines(self) -> list[str]: ...


def render(draft: Draft, platform: str, source: str, cassandra: CassandraLines | None = None) -> str:
    """The draft's YAML text."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    refused = [r for r in draft.refused if r.kind != "no-path"]
    behind = [r for r in draft.refused if r.kind == "no-path"]
    out = [
        f"# Tenant map of {platform}, drafted by `python -m tenant_migration.discover` on {when} from the foreign",
        f"# keys of schema {draft.schema} ({source}): {len(draft.placed)} tenant tables, {len(draft.shared)} shared, "
        f"{len(refused)} refused, {len(behind)} left behind.",
        "# Review it before a rehearsal: a hop is the shortest foreign-key path, not necessarily the one the",
        "# application means; refused tables are listed with the reason, and a run is refused while a table",
        "# that references the tenant's data is in neither list.",
        f"platform: {scalar(platform)}",
        "postgres:",
        f"  schema: {scalar(draft.schema)}",
        f"  tenant_root: {{table: {scalar(draft.root)}, key: {scalar(draft.root_key)}}}",
        "  tables:",
    ]
    width = max(len(n) for n in draft.placed) + 1
    for name, p in draft.placed.items():
        parent = draft.placed[p.spec.via.table].spec if p.spec.via is not None else None
        out.append(f"    {(scalar(name) + ':').ljust(width + 1)}{table_line(p.spec, parent)}")
    for r in refused:
        out.append(f"    # refused {r.table}: {r.reason}")
        for line in r.candidates:
            out.append(f"    #   {r.table}: {line}")
    out.append(f"  shared_tables: {flow(draft.shared)}")
    for r in behind:
        out.append(f"  # left behind {r.table}: {r.reason}")
    for note in draft.notes:
        out.append(f"  # note: {note}")
    if cassandra is not None:
        out += cassandra.lines()
    return "\n".join(out) + "\n"
