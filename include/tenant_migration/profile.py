"""The platform profile: everything the engine needs to know about one platform, in one YAML
document, validated on load (a pydantic model; errors name the key and the line).

A profile holds the tenant map (inline, or a file beside the profile), how a tenant's slug is
found, the registration switch, the DNS records a cutover moves, the replica mode, the load check's
workload and extra warm-up queries. The engine names no platform's schema or table: every step
asks the profile of its run (``MigrationSpec.platform``).

Where profiles come from: a folder of ``<name>.yaml`` files, named at run time by the Airflow
Variable ``tm_profiles_dir``, else the environment's ``TM_PROFILES_DIR``, else ``include/profiles``.
The DAG form lists the folder's names (a directory listing at parse time, no Variable and no YAML
read); the profile itself is read when a task runs (docs/adr/0013).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tenant_migration.profile_folder import PROFILES_VARIABLE, available, env_dir
from tenant_migration.tenant_map import TenantMap, TenantMapError, parse_tenant_map

# What a template or a switch statement may name; anything else is refused on load.
DNS_FIELDS = frozenset({"slug", "zone", "prefix", "tenant_id"})
SWITCH_PARAMS = {"status": {"tenant_id"}, "suspend": {"tenant_id", "expires_in", "reason"}, "resume": {"tenant_id"}}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


class ProfileError(ValueError):
    """A profile cannot be read, does not validate, or does not fit the tenant it is used for."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# The tenant map's shape (its meaning -- hops, cycles, the root -- is checked by ``parse_tenant_map``)


class _Root(_Strict):
    table: str
    key: str


class _Via(_Strict):
    column: str
    table: str
    parent_column: str | None = None


class _Table(_Strict):
    key: list[str] = Field(min_length=1)
    tenant_column: str | None = None
    via: _Via | None = None

    @model_validator(mode="after")
    def _one_way(self) -> _Table:
        if (self.tenant_column is None) == (self.via is None):
            raise ValueError("give exactly one of 'tenant_column' or 'via'")
        return self


class _Postgres(_Strict):
    schema_: str = Field("public", alias="schema")
    tenant_root: _Root
    tables: dict[str, _Table] = Field(min_length=1)
    shared_tables: list[str] = []


class _PartitionsFrom(_Strict):
    table: str
    columns: list[str] = Field(min_length=1)


class _CqlTable(_Strict):
    partition_key: list[str] = Field(min_length=1)
    partitions_from: _PartitionsFrom
    day_column: str | None = None
    empty_keys: Literal["refuse", "skip"] = "refuse"


class _Cassandra(_Strict):
    keyspace: str
    tables: dict[str, _CqlTable] = {}
    retention_days: int = Field(90, ge=1, le=36_500)


class TenantMapDoc(_Strict):
    platform: str = "unnamed"
    postgres: _Postgres
    cassandra: _Cassandra | None = None


# ---------------------------------------------------------------------------------------------
# The profile


class TenantLookup(_Strict):
    """How a tenant's slug (its DNS label) is found on the replica: a column of the root table, or
    a query returning one row and one column (``%(tenant_id)s``)."""

    slug_column: str | None = None
    slug_query: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> TenantLookup:
        if (self.slug_column is None) == (self.slug_query is None):
            raise ValueError("give exactly one of 'slug_column' or 'slug_query'")
        if self.slug_query is not None:
            _placeholders(self.slug_query, {"tenant_id"})
        return self


class SqlSwitch(_Strict):
    """Registrations switched by SQL on a named Airflow connection. ``status`` returns one row with
    the columns ``enabled`` (boolean), ``suspended_until`` (timestamptz or NULL) and ``reason``;
    ``suspend`` must keep the later expiry on a repeat (the platform enforces the expiry itself:
    the dead-man switch); ``resume`` is idempotent. ``resume_also_on`` are connections of other
    sides that may take traffic once flipped (the target's copy of the flag)."""

    kind: Literal["sql"]
    connection: str
    resume_also_on: list[str] = []
    # Columns the switch (or the platform's triggers) rewrite when registrations are suspended and
    # resumed: the rehearsal's "shared platform unchanged" check ignores them.
    bookkeeping_columns: list[str] = []
    status: str
    suspend: str
    resume: str

    @model_validator(mode="after")
    def _params(self) -> SqlSwitch:
        for name, allowed in SWITCH_PARAMS.items():
            try:
                _placeholders(getattr(self, name), allowed)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return self


HTTP_FIELDS = {"status": {"tenant_id"}, "suspend": {"tenant_id", "expires_in_s", "until", "reason"},
               "resume": {"tenant_id"}}


def _template_fields(value: Any) -> set[str]:
    """The ``{field}`` names of a template string, or of every string inside a JSON body."""
    if isinstance(value, str):
        return {f for _, f, _, _ in string.Formatter().parse(value) if f}
    if isinstance(value, dict):
        return set().union(*(_template_fields(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_template_fields(v) for v in value)) if value else set()
    return set()


class HttpCall(_Strict):
    """One call of an admin API: ``path`` (appended to the connection's base URL) and the string
    values of the JSON ``body`` are templates; an answer outside ``expect`` is an error."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str
    body: dict[str, Any] | None = None
    expect: list[int] = Field(default_factory=lambda: [200], min_length=1)


class HttpAnswer(_Strict):
    """Where the status call's JSON answer keeps each field (dotted paths). ``suspended_until``
    is an ISO-8601 time or epoch seconds (or null)."""

    enabled: str = "enabled"
    suspended_until: str = "suspended_until"
    reason: str = "reason"


class HttpSwitch(_Strict):
    """Registrations switched through the platform's admin API: base URL and auth (basic, or
    headers in the connection's extra ``headers``) from an Airflow HTTP connection; each call
    with a timeout, and retried on connection errors and 5xx answers (the calls are idempotent:
    a repeated suspend keeps the later expiry). ``not_found`` answers mean the side holds no flag
    for the tenant (nothing to resume there)."""

    kind: Literal["http"]
    connection: str
    resume_also_on: list[str] = []
    bookkeeping_columns: list[str] = []
    timeout_s: float = Field(5.0, gt=0, le=120)
    retries: int = Field(2, ge=0, le=10)
    status: HttpCall
    suspend: HttpCall
    resume: HttpCall
    answer: HttpAnswer = HttpAnswer()
    not_found: list[int] = Field(default_factory=lambda: [404])

    @model_validator(mode="after")
    def _fields(self) -> HttpSwitch:
        for name, allowed in HTTP_FIELDS.items():
            call = getattr(self, name)
            unknown = sorted((_template_fields(call.path) | _template_fields(call.body)) - allowed)
            if unknown:
                raise ValueError(f"{name}: unknown field(s) {unknown}; this call may use {sorted(allowed)}")
        return self


class DnsRecord(_Strict):
    """One name the tenant's clients resolve: where it points on the shared platform and where it
    points once the tenant is on its dedicated deployment. Templates of {slug}, {zone}, {prefix}
    (the run's ``target_endpoint_prefix``) and {tenant_id}."""

    name: str
    shared: str
    dedicated: str

    @field_validator("name", "shared", "dedicated")
    @classmethod
    def _fields(cls, value: str) -> str:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"not a template: {exc}") from None
        unknown = sorted(names - DNS_FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} in {value!r}; a template may use {sorted(DNS_FIELDS)}")
        if not value.endswith("{zone}"):
            raise ValueError(f"{value!r} must end with '{{zone}}' (names live in the run's zone)")
        return value


class Dns(_Strict):
    records: list[DnsRecord] = Field(min_length=1)


def _ref(value: str | None) -> str | None:
    if value is not None:
        module, _, fn = value.partition(":")
        if not module or not fn:
            raise ValueError(f"{value!r}: expected 'package.module:function'")
    return value


class RdsReplica(_Strict):
    """Mode ``rds``: the run's read replica of ``source_instance`` through the RDS API (the
    amazon provider's ``RdsHook`` on ``aws_connection``). ``servers`` only where the API has no
    servers of its own (moto): ``package.module:function`` returning a ``replica.InstanceServers``."""

    source_instance: str = Field(min_length=1)
    aws_connection: str = "tm_aws"
    instance_class: str | None = None
    servers: str | None = None
    poll_seconds: float = Field(15.0, gt=0, le=300)
    timeout_minutes: float = Field(60.0, gt=0, le=24 * 60)

    @field_validator("servers")
    @classmethod
    def _servers_ref(cls, value: str | None) -> str | None:
        return _ref(value)


class Replica(_Strict):
    """How the replica is detached (docs/replica-modes.md). ``local``: pause replay on the
    platform's streaming standby (``tm_replica_control``). ``promote``: the run gets a standby of
    its own from ``provisioner`` (``package.module:function`` returning a
    ``replica.StandbyProvisioner``), promotes it, and drops it in the detach's teardown. ``rds``:
    the same with an RDS read replica made, promoted and deleted through the RDS API (``rds``)."""

    mode: Literal["local", "promote", "rds"] = "local"
    provisioner: str | None = None
    rds: RdsReplica | None = None

    @field_validator("provisioner")
    @classmethod
    def _provisioner_ref(cls, value: str | None) -> str | None:
        return _ref(value)

    @model_validator(mode="after")
    def _per_mode(self) -> Replica:
        if self.mode == "promote" and self.provisioner is None:
            raise ValueError("mode promote needs a provisioner (package.module:function) that makes the run's "
                             "standby, e.g. tenant_migration.stack.run_standby:provisioner on the local stack")
        if self.mode != "promote" and self.provisioner is not None:
            raise ValueError(f"provisioner is for mode promote, not {self.mode}")
        if self.mode == "rds" and self.rds is None:
            raise ValueError("mode rds needs an rds section (source_instance: the primary's RDS instance id)")
        if self.mode != "rds" and self.rds is not None:
            raise ValueError(f"the rds section is for mode rds, not {self.mode}")
        return self

    @property
    def own_standby(self) -> bool:
        """The run makes a standby of its own (promote, rds) rather than pausing the platform's."""
        return self.mode in ("promote", "rds")


class LoadCheck(_Strict):
    """The SET phase's load check: ``workload`` names ``package.module:function`` (a
    ``tenant_migration.workload.LoadWorkload``), or ``none`` for a platform without one."""

    workload: str

    @field_validator("workload")
    @classmethod
    def _ref(cls, value: str) -> str:
        module, _, fn = value.partition(":")
        if value != "none" and (not module or not fn):
            raise ValueError(f"{value!r}: expected 'package.module:function' or 'none'")
        return value


class Warmup(_Strict):
    """Queries the tenant's app runs, warmed on the target besides one per table (``%(tenant_id)s``)."""

    postgres: list[str] = []

    @field_validator("postgres")
    @classmethod
    def _params(cls, value: list[str]) -> list[str]:
        for q in value:
            _placeholders(q, {"tenant_id"})
        return value


class ProfileDoc(_Strict):
    description: str = ""
    tenant_map: Any  # a file beside the profile, or the map inline (validated as ``TenantMapDoc``)
    tenant: TenantLookup
    registrations: Annotated[SqlSwitch | HttpSwitch, Field(discriminator="kind")]
    dns: Dns
    replica: Replica = Replica()
    load_check: LoadCheck
    warmup: Warmup = Warmup()


def _placeholders(text: str, allowed: set[str]) -> None:
    found = set(_PLACEHOLDER.findall(text))
    unknown = sorted(found - allowed)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; this statement may use {sorted(allowed)}")


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    doc: ProfileDoc
    tenant_map: TenantMap
    document: dict[str, Any]  # what was validated, the tenant map inlined: what a run is bound to

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.document, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def registrations(self) -> SqlSwitch | HttpSwitch:
        return self.doc.registrations

    @property
    def dns(self) -> Dns:
        return self.doc.dns

    @property
    def workload(self) -> str | None:
        return None if self.doc.load_check.workload == "none" else self.doc.load_check.workload


def changes(before: Any, after: Any, limit: int = 20) -> list[str]:
    """What differs between two profile documents, one line per key path (``dns.records[0].name:
    'a' -> 'b'``), at most ``limit`` lines."""
    old, new = _flatten(before), _flatten(after)
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, _ABSENT) != new.get(key, _ABSENT):
            a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
            out.append(f"{key}: {'(absent)' if a is _ABSENT else repr(a)} -> {'(absent)' if b is _ABSENT else repr(b)}")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


_ABSENT = object()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: value}


def profiles_dir() -> Path:
    """The folder of the deployment's profiles, at run time: the Airflow Variable (inside a task),
    the environment, else the project's ``include/profiles``."""
    named = None
    if "airflow.sdk.execution_time.task_runner" in sys.modules:  # a task: Variables are reachable
        from airflow.sdk import Variable

        named = Variable.get(PROFILES_VARIABLE, default=None)
    return Path(named) if named else env_dir()


def named(name: str, folder: Path | None = None) -> Profile:
    """The profile ``name`` of the deployment. An empty name is the folder's only profile."""
    folder = folder if folder is not None else profiles_dir()
    names = available(folder)
    if not name:
        if len(names) != 1:
            raise ProfileError(f"param 'platform' is required: the profiles in {folder} are {names or 'none'}")
        name = names[0]
    if name not in names:
        raise ProfileError(f"param 'platform': no profile {name!r} in {folder}; the deployment has {names or 'none'}")
    return load(folder / f"{name}.yaml")


_CACHE: dict[tuple[Path, float, int], Profile] = {}


def load(path: Path | str) -> Profile:
    """Read and validate a profile. Errors name the file, the key and the line."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError as exc:
        raise ProfileError(f"profile {path}: {exc.strerror}") from None
    key = (path, stat.st_mtime, stat.st_size)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _load(path)
    return _CACHE[key]


def _load(path: Path) -> Profile:
    raw, root = _read(path)
    try:
        doc = ProfileDoc.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(_explain(path, root, exc)) from None
    document = doc.model_dump(mode="json", by_alias=True, exclude_none=True)
    prefix: tuple[Any, ...] = ()
    if isinstance(doc.tenant_map, str):
        where = (path.parent / doc.tenant_map).resolve()
        map_doc, where_root = _read(where)
    elif isinstance(doc.tenant_map, dict):
        where, where_root, map_doc, prefix = path, root, doc.tenant_map, ("tenant_map",)
    else:
        raise ProfileError(f"{path}:{_line(root, ('tenant_map',))}: tenant_map: a file name or the map itself")
    try:
        shape = TenantMapDoc.model_validate(map_doc)
    except ValidationError as exc:
        raise ProfileError(_explain(where, where_root, exc, prefix)) from None
    document["tenant_map"] = shape.model_dump(mode="json", by_alias=True, exclude_none=True)
    try:
        tmap = parse_tenant_map(map_doc)
    except TenantMapError as exc:
        # The tenant map's own checks name a dotted key first ("postgres.tables.x.via: ...").
        dotted, _, rest = str(exc).partition(": ")
        loc = prefix + tuple(dotted.split("."))
        raise ProfileError(f"{where}:{_line(where_root, loc)}: {'.'.join(map(str, loc))}: {rest or exc}") from None
    return Profile(name=path.stem, path=path, doc=doc, tenant_map=tmap, document=document)


def _read(path: Path) -> tuple[Any, yaml.Node | None]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(f"profile {path}: {exc.strerror}") from None
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        raw = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
        root = yaml.compose(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: a profile is a YAML mapping")
    return raw, root


def _explain(path: Path, root: yaml.Node | None, exc: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    lines = []
    for err in exc.errors():
        # A tagged union (the registration switch's ``kind``) puts the tag into the location: drop it.
        raw = tuple(err["loc"])
        loc = prefix + tuple(p for i, p in enumerate(raw)
                             if not (i and raw[i - 1] == "registrations" and p in ("sql", "http")))
        key = ".".join(str(p) for p in loc) or "(top)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            ctx = err.get("ctx") or {}
            field = str(ctx.get("discriminator", "kind")).strip("'")
            loc, key = (*loc, field), f"{key}.{field}"
            msg = (f"{ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}" if err["type"] == "union_tag_invalid"
                   else f"missing; one of {ctx.get('expected_tags', 'sql, http')}")
        lines.append(f"{path}:{_line(root, loc)}: {key}: {msg}")
    return "profile does not validate:\n  " + "\n  ".join(dict.fromkeys(lines))


def _line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The line of the deepest node of ``loc`` that exists (1-based)."""
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if str(k.value) == str(part):
                    child, line = v, k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def main(argv: list[str] | None = None) -> int:
    """``python -m tenant_migration.profile [FILE|NAME ...]``: validate profiles before a run names
    them (default: every profile of the folder). Exit 1 when one does not validate."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("profiles", nargs="*", help="profile files, or names in the profiles folder")
    args = parser.parse_args(argv)
    folder = profiles_dir()
    targets = args.profiles or [str(folder / f"{n}.yaml") for n in available(folder)]
    if not targets:
        print(f"no profiles in {folder}", file=sys.stderr)
        return 1
    failed = 0
    for target in targets:
        path = Path(target) if target.endswith((".yaml", ".yml")) or "/" in target else folder / f"{target}.yaml"
        try:
            prof = load(path)
        except ProfileError as exc:
            failed += 1
            print(f"{path}: {exc}", file=sys.stderr)
            continue
        t, switch = prof.tenant_map, prof.registrations
        print(f"{prof.path}: ok -- platform {prof.name!r} (profile {prof.digest}): {len(t.tables)} tenant tables in "
              f"{t.schema!r}, {len(t.shared_tables)} shared, {len(t.cassandra_tables)} Cassandra tables in "
              f"{t.keyspace!r}; registrations by {switch.kind} on {switch.connection}; {len(prof.dns.records)} DNS "
              f"record(s); replica {prof.doc.replica.mode}; load check {prof.workload or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
