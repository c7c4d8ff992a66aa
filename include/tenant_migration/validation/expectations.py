"""The gates' own Great Expectations: a metric and two expectations GX does not have.

GX compares one batch at a time and has no notion of "the same rows on two servers". A gate's batch
is therefore a frame of aggregates computed on both sides (one row per unit: a chunk, a table, a
check), and these expectations read it the way an auditor asks:

- ``ExpectSidesToMatch``: for one table, every unit's row count and checksum (PostgreSQL) or rows,
  partitions and fingerprint of (key, value, write time) (Cassandra) equal on source and target.
  Its observed value gives both sides' numbers, pass or fail; a failure names the differing units
  and a bounded sample of the differing keys with both sides' values (the ``differences`` column,
  filled by ``validation.differences`` for the units that differ).
- ``ExpectNoViolatingRows``: one check that counts violating rows (an orphan, a row of another
  tenant, an unplanned partition...); the observed value is the count and a sample of the rows.

Both read the frame through ``tenant_migration.section_rows`` (a table metric: the rows of one
section and subject), so GX computes them like any of its own. They are registered when this
module is imported (GX's metaclass registers every expectation and metric class): a file-backed
context reopened in another process drops an expectation whose class is unknown, so
``gx_gate`` imports this module before it opens a context.

Imports Great Expectations at module level: never imported by anything the DAG parser loads.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import BatchExpectation
from great_expectations.expectations.metrics.metric_provider import metric_value
from great_expectations.expectations.metrics.table_metric_provider import TableMetricProvider
from great_expectations.render import RenderedStringTemplateContent
from great_expectations.render.components import LegacyRendererType
from great_expectations.render.renderer.renderer import renderer

SECTION_ROWS = "tenant_migration.section_rows"
SHOWN_UNITS = 5  # differing units named in an observed value
SHOWN_KEYS = 10  # differing keys / violating rows named in an observed value


class SectionRows(TableMetricProvider):
    """The frame's rows whose ``section`` is the expectation's, and whose ``subject`` (a table, a
    check) is its subject when it names one: a list of dicts, missing values as None."""

    metric_name = SECTION_ROWS
    value_keys = ("section", "subject")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine: PandasExecutionEngine, metric_domain_kwargs: dict[str, Any],
                metric_value_kwargs: dict[str, Any], metrics: dict[str, Any],
                runtime_configuration: dict[str, Any]) -> list[dict[str, Any]]:
        df, _, _ = execution_engine.get_compute_domain(domain_kwargs=metric_domain_kwargs,
                                                       domain_type=MetricDomainTypes.TABLE)
        grouped = _grouped(df)
        section, subject = metric_value_kwargs["section"], metric_value_kwargs.get("subject")
        if subject is not None:
            return list(grouped.get((section, subject), []))
        return [row for (s, _), rows in grouped.items() if s == section for row in rows]


_GROUPED: dict[int, tuple[Any, dict[tuple[Any, Any], list[dict[str, Any]]]]] = {}


def _grouped(df: Any) -> dict[tuple[Any, Any], list[dict[str, Any]]]:
    """The frame's rows by (section, subject), missing values left out: computed once per frame
    (a gate's expectations each ask for their rows; filtering the frame per expectation cost ~5 ms
    each). Keyed by the frame's identity, the frame kept alive with its entry."""
    known = _GROUPED.get(id(df))
    if known is not None and known[0] is df:
        return known[1]
    import pandas as pd

    out: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for row in df.to_dict(orient="records"):
        clean = {k: v for k, v in row.items() if v is not None and not (not isinstance(v, (list, dict)) and pd.isna(v))}
        out.setdefault((row.get("section"), row.get("subject")), []).append(clean)
    _GROUPED.clear()  # one frame at a time: a gate validates one batch
    _GROUPED[id(df)] = (df, out)
    return out


def _template(text: str) -> RenderedStringTemplateContent:
    return RenderedStringTemplateContent(**{  # type: ignore[arg-type]
        "content_block_type": "string_template",
        "string_template": {"template": "$text", "params": {"text": text},
                            "styling": {"params": {"text": {"classes": []}}}},
    })


def _n(value: Any) -> str:
    return f"{int(value):,}" if value is not None else "?"


def _differences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for row in rows:
        text = row.get("differences")
        if text:
            out += json.loads(text)
    return out


def difference_line(d: dict[str, Any]) -> str:
    """One differing key in words: ``devices id=17: name: source 'a', target 'b'``."""
    head = f"{d.get('table', '')} {d.get('key', '')}".strip()
    if d.get("columns"):
        cells = "; ".join(f"{c['column']}: source {c['source']!r}, target {c['target']!r}" for c in d["columns"])
        return f"{head}: {cells}"
    return f"{head}: source {d.get('source')!r}, target {d.get('target')!r}"


class _GateExpectation(BatchExpectation):
    """What the gates' expectations share: the rows of their section (``SectionRows``), and a
    sentence of their kwargs as the page's statement of what is expected (``_sentence``)."""

    section: str
    subject: str

    metric_dependencies: ClassVar[tuple[str, ...]] = (SECTION_ROWS,)
    domain_keys: ClassVar[tuple[str, ...]] = ("batch_id",)
    args_keys: ClassVar[tuple[str, ...]] = ("section", "subject")

    @classmethod
    def _sentence(cls, kw: dict[str, Any]) -> str:
        raise NotImplementedError

    @classmethod
    @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
    def _prescriptive_renderer(cls, configuration: Any = None, result: Any = None, runtime_configuration: Any = None,
                               **kwargs: Any) -> list[RenderedStringTemplateContent]:
        cfg = configuration or (result.expectation_config if result else None)
        return [_template(cls._sentence(cfg.kwargs if cfg else {}))]


class ExpectSidesToMatch(_GateExpectation):
    """Every unit (chunk) of one table holds the same rows on source and target: row counts equal
    and checksums (PostgreSQL) or fingerprints of key, value and write time (Cassandra) equal."""

    store: str
    compared: str

    success_keys: ClassVar[tuple[str, ...]] = ("section", "subject", "store", "compared")

    @classmethod
    def _sentence(cls, kw: dict[str, Any]) -> str:
        return f"{kw.get('store', '')} table {kw.get('subject', '')}: {kw.get('compared', '')} equal on source and target"

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        rows = metrics[SECTION_ROWS]
        differing = [r for r in rows if r.get("source_rows") != r.get("target_rows")
                     or r.get("source_checksum") != r.get("target_checksum")]
        source = sum(int(r.get("source_rows") or 0) for r in rows)
        target = sum(int(r.get("target_rows") or 0) for r in rows)
        parts = ""
        if any("partitions" in r for r in rows):
            parts = f" in {_n(sum(int(r.get('partitions') or 0) for r in rows))} partitions"
        what = "fingerprints" if self.store == "cassandra" else "checksums"
        text = (f"source {_n(source)} rows, target {_n(target)} rows{parts}; {len(rows)} "
                f"unit{'s' if len(rows) != 1 else ''} compared")
        diffs = _differences(differing)
        if not differing:
            text += f", {what} equal"
        else:
            named = "; ".join(f"{r['unit']} (source {_n(r.get('source_rows'))} rows {r.get('source_checksum')}, "
                              f"target {_n(r.get('target_rows'))} rows {r.get('target_checksum')})"
                              for r in differing[:SHOWN_UNITS])
            text += f"; {len(differing)} differ: {named}"
            if diffs:
                text += ". Differing keys: " + " | ".join(difference_line(d) for d in diffs[:SHOWN_KEYS])
        return {"success": not differing and bool(rows),
                "result": {"observed_value": text if rows else "no unit of this table in the batch",
                           "details": {"source_rows": source, "target_rows": target, "units": len(rows),
                                       "differing_units": [{k: r.get(k) for k in (
                                           "unit", "source_rows", "target_rows", "source_checksum", "target_checksum")}
                                           for r in differing[:50]],
                                       "differences": diffs[:50]}}}


class ExpectNoViolatingRows(_GateExpectation):
    """A check that counts violating rows (or partitions, problems) finds none."""

    describe: str

    success_keys: ClassVar[tuple[str, ...]] = ("section", "subject", "describe")

    @classmethod
    def _sentence(cls, kw: dict[str, Any]) -> str:
        return f"{kw.get('describe', '')} (no violating rows: {kw.get('subject', '')})"

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        rows = metrics[SECTION_ROWS]
        count = sum(int(r.get("violations") or 0) for r in rows)
        sample: list[Any] = []
        for r in rows:
            if r.get("sample"):
                sample += json.loads(r["sample"])
        text = f"{_n(count)} violating rows" if rows else "the check did not run"
        if sample:
            text += ": " + " | ".join(_sample_line(s) for s in sample[:SHOWN_KEYS])
            if count > min(len(sample), SHOWN_KEYS):
                text += f" | and {count - min(len(sample), SHOWN_KEYS):,} more"
        return {"success": bool(rows) and count == 0,
                "result": {"observed_value": text, "details": {"violations": count, "sample": sample[:50]}}}


def _sample_line(item: Any) -> str:
    if isinstance(item, dict):
        return ", ".join(f"{k}={v}" for k, v in item.items())
    return str(item)
