"""Render operator data (from ``batchfleet.ops``) for a terminal: rich on a TTY, plain text otherwise.

Station ids, error texts, topics and everything else read from Redis are user data: they are shown
as text (``rich.text.Text``, never parsed as markup) with control characters replaced by ``\\xNN``
(``printable``), so neither markup nor a terminal escape sequence in them takes effect."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

__all__ = ["printable", "render_batch", "render_batches", "render_dead", "render_quarantine", "render_status"]

# C0 and C1 controls (but newline), DEL, and the bidirectional overrides and isolates
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """``value`` as text with control characters shown as ``\\xNN`` (``\\uNNNN`` above 0xff)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) <= 0xFF else f"\\u{ord(m[0]):04x}", str(value))


def _cell(value: RenderableType) -> RenderableType:
    """A table cell: strings are user data, shown as plain text (no markup)."""
    return Text(printable(value)) if isinstance(value, str) else value


def _table(title: str, columns: list[str], rows: list[list[RenderableType]]) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_cell(cell) for cell in row))
    return table


def render_status(data: dict[str, Any]) -> RenderableType:
    c = data["counts"]
    head = Text(
        printable(
            f"open batches {c['open']} (uploading {c['leased']})   queue {c['queued']}   "
            f"dead-letter {c['dead']}   quarantine {c['quarantined']}"
        )
    )
    for warning in data.get("warnings", []):
        head.append("\nwarning: " + warning, style="bold yellow")
    batches = _table(
        "open batches",
        ["batch", "progress", "done", "age", "deadline in", "state"],
        [
            [
                b["batch_id"],
                ProgressBar(total=max(b["expected"], 1), completed=b["done"], width=20),
                f"{b['done']}/{b['expected']}",
                f"{b['age_s']:.1f}s",
                f"{b['deadline_in_s']:.1f}s" if "deadline_in_s" in b else "-",
                b["state"],
            ]
            for b in data["open_batches"]
        ],
    )
    procs = _table(
        "live processes", ["role", "name", "doing"], [[p["role"], p["name"], str(p.get("doing", ""))] for p in data["processes"]]
    )
    lag = _table("kafka lag", ["partition", "lag"], [[k, str(v)] for k, v in data["kafka_lag"].items()])
    counters = data["counters"]
    stats = _table("counters", ["counter", "value"], [[k, str(v)] for k, v in counters.items()])
    shards = data.get("shards", [])
    if len(shards) > 1:
        rows = [[str(s["shard"]), s["tag"], str(s["open"]), str(s["queued"])] for s in shards]
        return Group(head, batches, procs, lag, stats, _table("shards", ["shard", "tag", "open", "queued"], rows))
    return Group(head, batches, procs, lag, stats)


def render_batch(data: dict[str, Any]) -> RenderableType:
    meta = data["meta"]
    head = Text(
        printable(
            f"{data['batch_id']}  state={meta.get('state')}  reason={meta.get('reason', '-')}  "
            f"expected={meta.get('expected')}  late={meta.get('late', 0)}  ttl={data['ttl_s']}s"
        )
    )
    rows = [
        [
            s["station"],
            s["outcome"],
            f"{s.get('duration_ms', 0):.1f}ms" if "duration_ms" in s else "-",
            str(s.get("attempt", "-")),
            s.get("worker", "-"),
            s.get("error", ""),
        ]
        for s in data["stations"]
    ]
    return Group(head, _table("stations", ["station", "outcome", "time", "attempt", "worker", "error"], rows))


def render_batches(rows: list[dict[str, Any]]) -> RenderableType:
    return _table(
        "batches (newest first)",
        ["batch", "topic", "state", "reason", "done", "age"],
        [
            [r["batch_id"], r["topic"], r["state"], r.get("reason", "-"), f"{r['done']}/{r['expected']}", f"{r['age_s']:.1f}s"]
            for r in rows
        ],
    )


def render_dead(rows: list[dict[str, Any]]) -> RenderableType:
    return _table(
        "dead-lettered batches",
        ["batch", "topic", "failures", "last error"],
        [[r["batch_id"], r["topic"], str(r["upload_failures"]), r["last_error"]] for r in rows],
    )


def render_quarantine(rows: list[dict[str, Any]]) -> RenderableType:
    return _table(
        "quarantined messages (newest first)",
        ["id", "reason", "size", "re-dispatched"],
        [[r["id"], r["reason"], str(r["size"]), r["redispatched"] or "-"] for r in rows],
    )


def console(plain: bool) -> Console:
    """A rich console; plain (no colours, no boxes' control codes) when not a TTY."""
    return Console(no_color=plain, force_terminal=None if not plain else False, width=None if not plain else 160)
