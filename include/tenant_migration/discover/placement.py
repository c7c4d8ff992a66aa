"""Placing a schema's tables from its foreign keys: which tables are the tenant's, through which
hop, which are shared reference tables, and which cannot be placed (and why).

Pure: the input is a ``Catalog`` (what ``discover.read`` gets from the live catalog), the output a
``Draft``. The walk is breadth-first from the tenant root over single-column foreign keys, child to
parent: a table's depth is the length of its shortest path, and its hop the one foreign key of
that path. The engine's own rules decide what is refused, so that a draft never holds a table the
preflight would refuse:

* no primary key (and no replica identity index): the change stream carries no key for its updates
  and deletes, and chunks have no total order (``catalog.key_problem``);
* reached two ways: two foreign keys give the same shortest depth (a share row of a user and a
  device); either is a correct hop when the data is consistent (the preflight checks that every
  foreign key's rows belong to the tenant), but that is the platform owner's decision: the draft
  lists both lines, ``--choose table=column`` takes one;
* no path to the tenant: no foreign-key chain leads to the root (platform-wide tables, or a tenant
  column without a foreign key: the reason says which column looks like one);
* only through a composite foreign key, or only through a refused table;
* a foreign-key cycle among tenant tables (other than a table referencing itself): the copy loads
  parents before children and cannot order it.

Tables that the placed tables reference, directly or through each other, and that are not the
tenant's are shared reference tables (copied whole).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from graphlib import CycleError

from tenant_migration.postgres.catalog import ForeignKey, key_problem, order_tables
from tenant_migration.tenant_map import Hop, TableSpec, TenantMap


class DiscoveryError(ValueError):
    """The tenant root cannot anchor a tenant map (missing, no single-column primary key, in a cycle)."""


@dataclass(frozen=True)
class TableInfo:
    """What the catalog says of one table."""

    name: str
    columns: tuple[tuple[str, str], ...]  # (column, formatted type), ordinal order
    primary_key: tuple[str, ...] = ()
    # REPLICA IDENTITY: "d" default (the primary key), "i" an index (``identity_key``), "f" full, "n" nothing
    replica_identity: str = "d"
    identity_key: tuple[str, ...] = ()
    unique_keys: tuple[tuple[str, ...], ...] = ()  # NOT NULL unique keys, the primary key first

    @property
    def key(self) -> tuple[str, ...]:
        """The key a tenant map gives the table (empty: none the engine accepts)."""
        if key_problem(self.name, self.primary_key, self.replica_identity, self.identity_key, self.unique_keys,
                       schema=""):
            return ()
        return self.primary_key or self.identity_key or (self.unique_keys[0] if self.unique_keys else ())


@dataclass(frozen=True)
class Catalog:
    schema: str
    tables: Mapping[str, TableInfo]
    foreign_keys: Sequence[ForeignKey]


@dataclass(frozen=True)
class Placed:
    spec: TableSpec
    depth: int
    path: tuple[str, ...]  # the table, its parent, ... up to the root


@dataclass(frozen=True)
class Refused:
    table: str
    kind: str  # no-primary-key | two-ways | no-path | composite-only | through-refused | cycle
    reason: str
    # Lines of tenant map the owner may pick one of (two-ways): ``{key: [...], via: {...}}``
    candidates: tuple[str, ...] = ()


@dataclass
class Draft:
    schema: str
    root: str
    root_key: str
    placed: dict[str, Placed] = field(default_factory=dict)  # breadth-first order
    shared: list[str] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Edge:
    column: str
    parent: str
    parent_column: str

    def spec(self, table: str, key: tuple[str, ...], root: str, root_key: str,
             parent_key: tuple[str, ...]) -> TableSpec:
        if self.parent == root and self.parent_column == root_key:
            return TableSpec(table, key, tenant_column=self.column)
        return TableSpec(table, key, via=Hop(self.column, self.parent, self.parent_column))


def place(cat: Catalog, root: str, choose: Mapping[str, str] | None = None) -> Draft:
    """The draft of the tenant map of ``cat`` rooted at ``root`` (see the module docstring)."""
    choose = dict(choose or {})
    info = cat.tables.get(root)
    if info is None:
        raise DiscoveryError(f"{cat.schema}.{root}: no such table in schema {cat.schema!r} "
                             f"(its tables: {', '.join(sorted(cat.tables)) or 'none'})")
    if len(info.primary_key) != 1:
        raise DiscoveryError(f"{cat.schema}.{root}: the tenant root needs a single-column primary key "
                             f"(it has {list(info.primary_key) or 'none'})")
    for table in choose:
        if table not in cat.tables:
            raise DiscoveryError(f"--choose {table}=...: no table {cat.schema}.{table}")
    root_key = info.primary_key[0]
    refused: dict[str, Refused] = {}
    for name, t in cat.tables.items():
        if name != root and not t.key:
            refused[name] = Refused(name, "no-primary-key", key_problem(
                name, t.primary_key, t.replica_identity, t.identity_key, t.unique_keys, schema=cat.schema) or "")
    while True:
        placed = _walk(cat, root, root_key, refused, choose)
        cycle = _cycle(cat, root, root_key, placed)
        if not cycle:
            break
        if root in cycle:
            raise DiscoveryError(f"{cat.schema}.{root}: the tenant root is in a foreign-key cycle "
                                 f"({_cycle_text(cat, cycle)}): the copy loads parents before children")
        for name in cycle:
            refused[name] = Refused(name, "cycle", f"in a foreign-key cycle ({_cycle_text(cat, cycle)}): the copy "
                                                   "loads parents before children and cannot order these")
    draft = Draft(cat.schema, root, root_key, placed)
    draft.shared = _shared(cat, placed, refused)
    unplaced = [n for n in sorted(cat.tables) if n not in placed and n not in draft.shared]
    for name in unplaced:
        draft.refused.append(refused.get(name) or _why_not(cat, name, root_key, placed, refused))
    for fk in cat.foreign_keys:
        if fk.table in placed and "." in fk.ref_table:
            draft.notes.append(f"{cat.schema}.{fk.table}.{','.join(fk.columns)} references {fk.ref_table} "
                               f"(FK {fk.name}), in another schema: not copied; it must exist on the target")
    return draft


def _edges(cat: Catalog, table: str) -> list[tuple[ForeignKey, _Edge | None]]:
    """The table's foreign keys to other tables of the schema; single-column ones as an edge."""
    out = []
    for fk in cat.foreign_keys:
        if fk.table != table or fk.ref_table == table or fk.ref_table not in cat.tables:
            continue
        out.append((fk, _Edge(fk.columns[0], fk.ref_table, fk.ref_columns[0]) if len(fk.columns) == 1 else None))
    return out


def _walk(cat: Catalog, root: str, root_key: str, refused: dict[str, Refused],
          choose: dict[str, str]) -> dict[str, Placed]:
    placed = {root: Placed(TableSpec(root, (root_key,), tenant_column=root_key), 0, (root,))}
    frontier = {root}
    depth = 0
    while frontier:
        depth += 1
        found: dict[str, list[_Edge]] = {}
        for name in sorted(cat.tables):
            if name in placed or name in refused:
                continue
            edges = sorted({e for _, e in _edges(cat, name) if e is not None and e.parent in frontier},
                           key=lambda e: (e.parent, e.column))
            if edges:
                found[name] = edges
        frontier = set()
        for name, edges in found.items():
            key = cat.tables[name].key
            lines = tuple(_line(e.spec(name, key, root, root_key, placed[e.parent].spec.key), placed)
                          for e in edges)
            if name in choose:
                edges = [e for e in edges if e.column == choose[name]]
                if len(edges) != 1:
                    refused[name] = Refused(name, "two-ways", f"--choose {name}={choose[name]}: not one of the "
                                                              f"columns of its shortest paths", lines)
                    continue
            if len(edges) > 1:
                ways = "; ".join(f"{e.column} -> {e.parent}.{e.parent_column} ({_path(placed, e.parent)})"
                                 for e in edges)
                refused[name] = Refused(name, "two-ways", f"reached two ways at depth {depth}: {ways}. Keep one "
                                                          f"(--choose {name}=<column>)", lines)
                continue
            edge = edges[0]
            placed[name] = Placed(edge.spec(name, key, root, root_key, placed[edge.parent].spec.key), depth,
                                  (name, *placed[edge.parent].path))
            frontier.add(name)
    return placed


def _line(spec: TableSpec, placed: Mapping[str, Placed]) -> str:
    parent = placed[spec.via.table].spec if spec.via is not None else None
    return table_line(spec, parent)


def _path(placed: Mapping[str, Placed], table: str) -> str:
    return " -> ".join(placed[table].path)


def _cycle(cat: Catalog, root: str, root_key: str, placed: dict[str, Placed]) -> list[str]:
    tmap = TenantMap("draft", cat.schema, root, root_key, {n: p.spec for n, p in placed.items()}, (), "")
    try:
        order_tables(tmap, cat.foreign_keys)
    except CycleError as exc:
        return list(dict.fromkeys(exc.args[1]))
    return []


def _cycle_text(cat: Catalog, members: Sequence[str]) -> str:
    ring = set(members)
    return ", ".join(f"{fk.table}.{','.join(fk.columns)} -> {fk.ref_table}" for fk in cat.foreign_keys
                     if fk.table in ring and fk.ref_table in ring and fk.table != fk.ref_table)


def _shared(cat: Catalog, placed: Mapping[str, Placed], refused: Mapping[str, Refused]) -> list[str]:
    """Tables the placed ones reference, transitively, that are not the tenant's (nor refused:
    a refused table may hold tenant rows)."""
    shared: list[str] = []
    todo = list(placed)
    seen = set(placed) | set(refused)
    while todo:
        table = todo.pop(0)
        for fk in cat.foreign_keys:
            if fk.table == table and fk.ref_table in cat.tables and fk.ref_table not in seen:
                seen.add(fk.ref_table)
                shared.append(fk.ref_table)
                todo.append(fk.ref_table)
    return sorted(shared)


def _why_not(cat: Catalog, name: str, root_key: str, placed: Mapping[str, Placed],
             refused: Mapping[str, Refused]) -> Refused:
    fks = _edges(cat, name)
    composite = [fk for fk, e in fks if e is None and fk.ref_table in placed]
    if composite:
        fk = composite[0]
        return Refused(name, "composite-only", f"reached only through the composite foreign key {fk.name} "
                                               f"({', '.join(fk.columns)}) -> {fk.ref_table} ({', '.join(fk.ref_columns)}): "
                                               "a tenant map hops on one column; give the table its own tenant column")
    blocked = sorted({fk.ref_table for fk, _ in fks if fk.ref_table in refused})
    if blocked:
        return Refused(name, "through-refused", f"reached only through {', '.join(f'{cat.schema}.{b}' for b in blocked)}, "
                                                "refused itself (see there)")
    hint = ""
    cols = [c for c, _ in cat.tables[name].columns]
    if root_key in cols:
        hint = (f"; it has a column {root_key} without a foreign key: if that holds the tenant, add "
                f"'{name}: {{key: [...], tenant_column: {root_key}}}' by hand")
    return Refused(name, "no-path", f"no foreign-key path to the tenant root (platform-wide data, left behind){hint}")


# ---------------------------------------------------------------------------------------------
# One table's line of tenant map, as the bundled maps write it


def flow(items: Sequence[str]) -> str:
    return "[" + ", ".join(scalar(i) for i in items) + "]"


def scalar(value: str) -> str:
    """A plain YAML scalar where it reads back as the same string, else a quoted one."""
    import yaml

    plain = value.isidentifier() or value.replace("-", "_").replace(".", "_").isidentifier()
    if plain and yaml.safe_load(value) == value:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def table_line(spec: TableSpec, parent: TableSpec | None) -> str:
    """``{key: [...], tenant_column: c}`` or ``{key: [...], via: {column: c, table: t}}`` (the parent's
    column only where it is not the parent's single-column key)."""
    if spec.via is None:
        return f"{{key: {flow(spec.key)}, tenant_column: {scalar(str(spec.tenant_column))}}}"
    hop = spec.via
    tail = "" if parent is not None and parent.key == (hop.parent_column,) else \
        f", parent_column: {scalar(hop.parent_column)}"
    return f"{{key: {flow(spec.key)}, via: {{column: {scalar(hop.column)}, table: {scalar(hop.table)}{tail}}}}}"
