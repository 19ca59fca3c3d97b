"""The Grafana dashboard (compose/grafana/batchfleet-dashboard.json) checked against batchfleet/metrics.py.

Grafana does not run here, so these tests read the dashboard JSON and compare every PromQL
expression in it with the metrics the code registers: each series name must be one Prometheus
actually exposes (counters as ``_total``, histograms as ``_bucket``/``_sum``/``_count``, gauges
plain), and each label a panel matches on, groups by or prints in a legend must be one its metric
carries.  The four headline figures must appear verbatim, as documented in the metrics module.

The PromQL reader below is deliberately small: it understands selectors, matchers, functions,
aggregations with ``by``/``without``, ``on``/``ignoring``/``group_*`` and Grafana variables, and
refuses anything else (an unreadable expression fails the test instead of passing unchecked).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from batchfleet import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "compose" / "grafana" / "batchfleet-dashboard.json"

DATASOURCE_VARIABLE = "DS_PROMETHEUS"
DATASOURCE_UIDS = {f"${{{DATASOURCE_VARIABLE}}}", f"${DATASOURCE_VARIABLE}"}
# Labels Prometheus attaches to every scraped series, whatever the metric.
TARGET_LABELS = frozenset({"job", "instance"})

SEED_FIGURES = ("batch completion rate", "station success rate", "average batch latency", "timeout rate")


# -- what the code exposes -------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    family: str
    kind: str
    labels: frozenset[str]


def _metric_objects() -> dict[str, MetricWrapperBase]:
    return {obj._name: obj for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase)}


def exposed_series() -> dict[str, Series]:
    """Every series name Prometheus scrapes from ``metrics.REGISTRY`` -> its family, type and labels."""
    objects = _metric_objects()
    series: dict[str, Series] = {}
    for family in metrics.REGISTRY.collect():
        obj = objects.get(family.name)
        assert obj is not None, f"{family.name} is registered but not a module-level metric of batchfleet.metrics"
        labels = frozenset(obj._labelnames) | TARGET_LABELS
        if family.type == "counter":
            names = {f"{family.name}_total": labels}
        elif family.type == "histogram":
            names = {f"{family.name}_bucket": labels | {"le"}, f"{family.name}_sum": labels, f"{family.name}_count": labels}
        elif family.type == "gauge":
            names = {family.name: labels}
        else:  # pragma: no cover - a new metric type needs a rule here
            raise AssertionError(f"{family.name}: no exposition rule for metric type {family.type!r}")
        for name, label_set in names.items():
            series[name] = Series(family.name, family.type, label_set)
    return series


SERIES = exposed_series()


# -- a small PromQL reader -------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<var>\$\{[^}]*\}|\$[A-Za-z_]\w*)
    | (?P<number>(?:0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])*)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){},@])
    """,
    re.VERBOSE,
)
AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
BINARY_MODIFIERS = frozenset({"on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"by", "without", "bool", "offset", "and", "or", "unless", "atan2", "inf", "nan"})
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass
class Selector:
    name: str
    position: int
    matchers: list[str] = field(default_factory=list)


@dataclass
class Grouping:
    clause: str
    labels: list[str]
    scope: tuple[int, int] | None  # token range of the aggregated argument; None = the whole expression


@dataclass
class Parsed:
    selectors: list[Selector] = field(default_factory=list)
    groupings: list[Grouping] = field(default_factory=list)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append((kind, m.group()))
        pos = m.end()
    return tokens


def _closing(tokens: list[tuple[str, str]], i: int, expr: str) -> int:
    """Index of the ``)`` or ``}`` matching the bracket at ``i``."""
    opening = tokens[i][1]
    closing = {"(": ")", "{": "}"}[opening]
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j] == ("op", opening):
            depth += 1
        elif tokens[j] == ("op", closing):
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unbalanced {opening!r} in {expr!r}")


def _label_list(tokens: list[tuple[str, str]], i: int, expr: str) -> tuple[list[str], int]:
    """``( a, b )`` starting at ``i`` -> (labels, index after ``)``)."""
    if i >= len(tokens) or tokens[i] != ("op", "("):
        raise ValueError(f"expected a label list at token {i} in {expr!r}")
    end = _closing(tokens, i, expr)
    inner = [t for t in tokens[i + 1 : end] if t != ("op", ",")]
    if any(kind != "ident" for kind, _ in inner):
        raise ValueError(f"not a label list: {tokens[i : end + 1]} in {expr!r}")
    return [text for _, text in inner], end + 1


def _matchers(tokens: list[tuple[str, str]], i: int, expr: str) -> tuple[dict[str, tuple[str, str]], int]:
    """``{ label op "value", ... }`` starting at ``i`` -> ({label: (op, value)}, index after ``}``)."""
    end = _closing(tokens, i, expr)
    found: dict[str, tuple[str, str]] = {}
    j = i + 1
    while j < end:
        if tokens[j] == ("op", ","):
            j += 1
            continue
        label, op, value = tokens[j : j + 3]
        if label[0] != "ident" or op[1] not in ("=", "!=", "=~", "!~") or value[0] != "string":
            raise ValueError(f"cannot read label matcher {tokens[j : j + 3]} in {expr!r}")
        found[label[1]] = (op[1], value[1][1:-1])
        j += 3
    return found, end + 1


def _aggregation(tokens: list[tuple[str, str]], i: int, expr: str, parsed: Parsed) -> int:
    """``AGG [by|without (labels)] (arg) [by|without (labels)]``: record the grouping, read on inside the argument."""
    j, labels, clause = i + 1, [], ""
    if tokens[j][1] in ("by", "without"):
        clause = tokens[j][1]
        labels, j = _label_list(tokens, j + 1, expr)
    end = _closing(tokens, j, expr)
    if not clause and end + 1 < len(tokens) and tokens[end + 1][1] in ("by", "without"):
        clause = tokens[end + 1][1]
        labels, _ = _label_list(tokens, end + 2, expr)
    if clause:
        parsed.groupings.append(Grouping(clause, labels, (j, end)))
    return j  # a trailing by/without is skipped when the scan reaches it


def _binary_modifier(tokens: list[tuple[str, str]], i: int, expr: str, parsed: Parsed) -> int:
    """``on (labels)``, ``ignoring (labels)``, ``group_left (labels)``, ``group_right (labels)``."""
    if i + 1 < len(tokens) and tokens[i + 1] == ("op", "("):
        labels, after = _label_list(tokens, i + 1, expr)
        parsed.groupings.append(Grouping(tokens[i][1], labels, None))
        return after
    return i + 1


def _selector(tokens: list[tuple[str, str]], i: int, expr: str, parsed: Parsed) -> int:
    """``name`` or ``name{matchers}``."""
    selector = Selector(tokens[i][1], i)
    parsed.selectors.append(selector)
    if i + 1 < len(tokens) and tokens[i + 1] == ("op", "{"):
        found, after = _matchers(tokens, i + 1, expr)
        selector.matchers = list(found)
        return after
    return i + 1


def _bare_selector(tokens: list[tuple[str, str]], i: int, expr: str, parsed: Parsed) -> int:
    """``{__name__="name", matchers}``."""
    found, after = _matchers(tokens, i, expr)
    name = found.pop("__name__", None)
    if name is None or name[0] != "=":
        raise ValueError(f"a selector without a literal metric name cannot be checked: {expr!r}")
    parsed.selectors.append(Selector(name[1], i, list(found)))
    return after


def _step(tokens: list[tuple[str, str]], i: int, expr: str, parsed: Parsed) -> int:
    """Read the construct that starts at token ``i``; the index of the next token to read."""
    kind, text = tokens[i]
    following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
    if (kind, text) == ("op", "{"):
        return _bare_selector(tokens, i, expr, parsed)
    if kind != "ident":
        return i + 1
    if text in AGGREGATIONS and following in ("(", "by", "without"):
        return _aggregation(tokens, i, expr, parsed)
    if text in ("by", "without"):
        return _label_list(tokens, i + 1, expr)[1]
    if text in BINARY_MODIFIERS:
        return _binary_modifier(tokens, i, expr, parsed)
    if text.lower() in KEYWORDS or following == "(":
        return i + 1  # a keyword, or a function call whose arguments are read in turn
    return _selector(tokens, i, expr, parsed)


def parse(expr: str) -> Parsed:
    """The series selectors and label groupings of one PromQL expression."""
    tokens = _tokens(expr)
    parsed = Parsed()
    i = 0
    while i < len(tokens):
        i = _step(tokens, i, expr, parsed)
    return parsed


def problems(expr: str, legend: str = "") -> list[str]:
    """Every metric or label in ``expr`` (and its legend) that batchfleet/metrics.py does not define."""
    try:
        parsed = parse(expr)
    except ValueError as exc:
        return [str(exc)]
    if not parsed.selectors:
        return [f"no metric in {expr!r}"]
    found: list[str] = []
    for sel in parsed.selectors:
        series = SERIES.get(sel.name)
        if series is None:
            found.append(f"{sel.name}: not a series batchfleet exposes (in {expr!r})")
            continue
        found += [f"{sel.name}: no label {label!r} (in {expr!r})" for label in sel.matchers if label not in series.labels]
    known = [SERIES[s.name] for s in parsed.selectors if s.name in SERIES]
    for group in parsed.groupings:
        lo, hi = group.scope if group.scope else (-1, 1 << 30)
        scoped = [SERIES[s.name] for s in parsed.selectors if s.name in SERIES and lo < s.position < hi]
        for label in group.labels:
            found += [
                f"{s.family}: {group.clause} ({label}) but the metric has no such label (in {expr!r})"
                for s in scoped
                if label not in s.labels
            ]
    by_labels = {label for g in parsed.groupings if g.clause == "by" for label in g.labels}
    aggregated = any(g.clause in ("by", "without") for g in parsed.groupings) or re.search(
        r"\b(?:" + "|".join(sorted(AGGREGATIONS)) + r")\s*\(", expr
    )
    only_by = aggregated and not any(g.clause == "without" for g in parsed.groupings)
    for label in _LEGEND_LABEL.findall(legend):
        found += [f"legend {{{{{label}}}}}: {s.family} has no such label (in {expr!r})" for s in known if label not in s.labels]
        if only_by and label not in by_labels:
            found.append(f"legend {{{{{label}}}}}: aggregated away (not in any by clause) in {expr!r}")
    return found


# -- the dashboard ---------------------------------------------------------------------------------
def _load() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        document = json.load(f)
    assert isinstance(document, dict)
    return document


def _panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in container.get("panels", []):
        yield panel
        yield from _panels(panel)  # collapsed rows keep their panels inside


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p.get("title", ""), t) for p in _panels(dashboard) for t in p.get("targets", [])]


def _variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, PromQL or label_values(...) query) of every query variable."""
    queries = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            queries.append((var["name"], query.get("query", "") if isinstance(query, dict) else str(query)))
    return queries


def _figures() -> dict[str, str]:
    """The headline figures as documented in the batchfleet.metrics docstring: name -> expression."""
    figures: dict[str, str] = {}
    current = ""
    for line in (metrics.__doc__ or "").splitlines():
        m = re.match(r"- ([a-z ]+):\s+(\S.*)$", line)
        if m:
            current = m.group(1).strip()
            figures[current] = m.group(2).strip()
        elif current and line.startswith(" ") and line.strip():
            figures[current] += " " + line.strip()
        else:
            current = ""
    return figures


def _squash(expr: str) -> str:
    return re.sub(r"\s+", "", expr)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return _load()


def test_dashboard_is_grafana_schema_39(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard.get("uid") and dashboard.get("title")
    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels:
        grid = p["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, f"panel {p['title']!r} is wider than the grid"


def test_every_query_uses_the_prometheus_datasource_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables.get(DATASOURCE_VARIABLE)
    assert ds is not None and ds["type"] == "datasource" and ds["query"] == "prometheus"
    with_queries = [p for p in _panels(dashboard) if p.get("targets")]
    assert with_queries
    for p in with_queries:
        for holder in (p, *p["targets"]):
            source = holder.get("datasource")
            assert source and source["uid"] in DATASOURCE_UIDS, f"panel {p['title']!r}: datasource {source!r}"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] in DATASOURCE_UIDS, f"variable {var['name']}: datasource {var['datasource']!r}"


def test_every_target_has_an_expression(dashboard: dict[str, Any]) -> None:
    targets = _targets(dashboard)
    assert len(targets) >= 20
    for title, target in targets:
        assert str(target.get("expr", "")).strip(), f"panel {title!r} has a target without an expression"


def test_every_metric_and_label_in_the_dashboard_exists(dashboard: dict[str, Any]) -> None:
    found = [f"panel {title!r}: {p}" for title, t in _targets(dashboard) for p in problems(t["expr"], t.get("legendFormat", ""))]
    for name, query in _variable_queries(dashboard):
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
        expr, label = (m.group(1), m.group(2)) if m else (query, "")
        found += [f"variable {name}: {p}" for p in problems(expr, "{{" + label + "}}" if label else "")]
    assert not found, "\n".join(found)


def test_the_headline_figures_appear_verbatim(dashboard: dict[str, Any]) -> None:
    figures = _figures()
    assert set(figures) == set(SEED_FIGURES), f"batchfleet/metrics.py documents {sorted(figures)}"
    for name, expr in figures.items():
        assert not problems(expr), f"the documented {name} does not match the metrics: {problems(expr)}"
        panels = [p for p in _panels(dashboard) if p.get("title", "").strip().lower() == name]
        assert panels, f"no panel titled {name!r}"
        exprs = {_squash(t["expr"]) for p in panels for t in p.get("targets", [])}
        assert _squash(expr) in exprs, f"panel {name!r} does not use the documented expression {expr!r}"


def test_every_metric_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    used = {SERIES[s.name].family for _, t in _targets(dashboard) for s in parse(t["expr"]).selectors if s.name in SERIES}
    missing = {s.family for s in SERIES.values()} - used
    assert not missing, f"metrics no panel shows: {sorted(missing)}"


# -- the checker itself must be able to fail -------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "legend"),
    [
        ("sum(rate(batchfleet_batches_created[5m]))", ""),  # counter without _total
        ("sum(rate(batchfleet_batches_createdd_total[5m]))", ""),  # typo
        ("batchfleet_batch_latency_seconds", ""),  # histogram without a suffix
        ("batchfleet_open_batches_total", ""),  # a gauge is not a counter
        ('sum(rate(batchfleet_stations_uploaded_total{status="ok"}[5m]))', ""),  # unknown label
        ("sum by (reason) (rate(batchfleet_upload_failures_total[5m]))", ""),  # grouping on a missing label
        ("histogram_quantile(0.99, sum by (topic, le) (rate(batchfleet_station_duration_seconds_bucket[5m])))", ""),
        ("sum by (le) (rate(batchfleet_batch_latency_seconds_sum[5m]))", ""),  # le only on _bucket
        ("sum(rate(batchfleet_batches_created_total[5m])) by (partition)", ""),  # trailing by clause
        ("sum by (topic) (rate(batchfleet_stations_total[5m]))", "{{outcome}}"),  # legend label aggregated away
        ("batchfleet_queue_depth", "{{topic}}"),  # legend label the metric lacks
        ('{__name__="batchfleet_nope"}', ""),
        ("sum(rate(batchfleet_batches_created_total[5m])) / on(reason) sum(rate(batchfleet_stations_total[5m]))", ""),
        ("sum(rate(batchfleet_batches_created_total[5m])) ? 2", ""),  # unreadable
    ],
)
def test_the_checker_rejects(expr: str, legend: str) -> None:
    assert problems(expr, legend)


@pytest.mark.parametrize(
    ("expr", "legend"),
    [
        ('sum by (topic, outcome) (rate(batchfleet_stations_total{topic=~"$topic"}[$__rate_interval]))', "{{topic}} {{outcome}}"),
        ("histogram_quantile(0.99, sum(rate(batchfleet_upload_duration_seconds_bucket[5m])) by (le, topic))", "{{topic}}"),
        ("max by (instance) (batchfleet_dispatcher_paused) > bool 0", "{{instance}}"),
        ('{__name__="batchfleet_kafka_lag", partition="0"} offset 5m', "{{partition}}"),
    ],
)
def test_the_checker_accepts(expr: str, legend: str) -> None:
    assert problems(expr, legend) == []
