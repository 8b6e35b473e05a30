"""The dashboard's pages, as Bokeh documents: each page's sessions redraw from
the shared :class:`~faas.dashboard.feed.Feed` every ``REFRESH_MS``; only the
task stream is sent incrementally, the rest is replaced when it changed.

- ``/overview``: workers and invocations by state, contexts, throughput and
  result latency over the last minutes;
- ``/stream``: invocations' runs per worker over time (Dask's task stream),
  failures with their reason; a failure opened shows its attempt history and
  remote traceback, read from the endpoint's store;
- ``/workers``: each worker's host, GPU, memory, contexts (loaded and parked)
  and footprints, context files read from the source and copied from peers,
  copies in flight, prewarm timings, invocations run, and the workers lost,
  with the cause;
- ``/timeline``: ``faas-endpoint report --plot``'s timeline, live: workers
  active, completed invocations, context loads.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, DataTable, Div, TableColumn
from bokeh.plotting import figure

from faas.dashboard.feed import Feed
from faas.endpoint.fleetview import STREAM

REFRESH_MS = 1000
PAGES = {"overview": "Overview", "stream": "Invocation stream", "workers": "Workers", "timeline": "Timeline"}
STATE_COLOURS = {"succeeded": "#2ca02c", "failed": "#d62728", "cancelled": "#7f7f7f"}
STATES = ("pending", "dispatched", "succeeded", "failed", "cancelled")


def page(name: str, feed: Feed) -> Callable[[Document], None]:
    """The Bokeh application handler of page ``name``."""
    build = {"overview": _overview, "stream": _stream, "workers": _workers, "timeline": _timeline}[name]

    def make(doc: Document) -> None:
        header = Div(sizing_mode="stretch_width")
        body, update = build(feed, doc)

        def tick() -> None:
            header.text = _header(name, feed)
            if feed.view is not None:
                update(feed.view)

        tick()
        doc.title = f"faas: {PAGES[name]}"
        doc.add_root(column(header, body, sizing_mode="stretch_width"))
        doc.add_periodic_callback(tick, REFRESH_MS)

    return make


def _header(current: str, feed: Feed) -> str:
    links = " | ".join(f"<b>{title}</b>" if name == current else f'<a href="{name}">{title}</a>'
                       for name, title in PAGES.items())
    view = feed.view
    if feed.error:
        state = f'<span id="feed-state" style="color:#d62728">{html.escape(feed.error)}</span>'
    elif view is None:
        state = '<span id="feed-state">connecting</span>'
    else:
        state = f'<span id="feed-state">live ({time.time() - feed.updated:.1f} s ago)</span>'
    name = html.escape(view["name"]) if view else html.escape(feed.endpoint)
    store = ""
    if view and view.get("store_failing"):
        store = f' &middot; <span style="color:#d62728">store failing: {html.escape(str(view["store_failing"]))}</span>'
    return f"<h2>faas endpoint {name}</h2><p>{links} &middot; {state}{store}</p>"


def _table(columns: list[tuple[str, str]], height: int = 240, **options: Any) -> tuple[DataTable, ColumnDataSource]:
    source = ColumnDataSource({field: [] for field, _ in columns})
    table = DataTable(source=source, columns=[TableColumn(field=f, title=t) for f, t in columns], height=height,
                      sizing_mode="stretch_width", index_position=None, **options)
    return table, source


def _replace(source: ColumnDataSource, data: dict[str, list], table: DataTable | None = None,
             most: int = 12) -> None:
    """New data, if it changed; a ``table`` shows up to ``most`` rows without scrolling."""
    if dict(source.data) != data:
        source.data = data
    if table is not None:
        table.height = 30 + 26 * max(1, min(most, len(next(iter(data.values()), []))))


class _FreeTable:
    """A table whose columns follow its rows' fields (whatever the warm pools report)."""

    def __init__(self, fields: list[str], most: int = 12):
        self.most = most
        self.table, self.source = _table([(f, f.replace("_", " ")) for f in fields])

    def show(self, fields: list[str], data: dict[str, list]) -> None:
        if [c.field for c in self.table.columns] != fields:
            self.table.columns = [TableColumn(field=f, title=f.replace("_", " ")) for f in fields]
        _replace(self.source, data, self.table, self.most)


def _rows(records: list[dict[str, Any]], fields: list[str]) -> dict[str, list]:
    return {f: [r.get(f, "") for r in records] for f in fields}


def _time_figure(title: str, y_label: str, height: int = 220):
    fig = figure(title=title, x_axis_type="datetime", height=height, sizing_mode="stretch_width",
                 tools="pan,xwheel_zoom,box_zoom,reset,save")
    fig.yaxis.axis_label = y_label
    fig.toolbar.logo = None
    return fig


# -- /overview -------------------------------------------------------------------
def _overview(feed: Feed, doc: Document):
    counts = Div(sizing_mode="stretch_width")
    context_fields = ["description", "holders", "loading", "queued", "in_flight"]
    contexts = _FreeTable(context_fields)
    series = ColumnDataSource({"t": [], "rate": [], "failed": [], "mean": [], "max": []})
    rate = _time_figure("completed invocations per second", "per second")
    rate.line("t", "rate", source=series, color=STATE_COLOURS["succeeded"], legend_label="completed")
    rate.line("t", "failed", source=series, color=STATE_COLOURS["failed"], legend_label="failed")
    latency = _time_figure("result latency (submitted to recorded)", "seconds")
    latency.line("t", "mean", source=series, legend_label="mean")
    latency.line("t", "max", source=series, color="#ff7f0e", legend_label="max")
    for fig in (rate, latency):
        fig.legend.location = "top_left"

    def update(view: dict) -> None:
        counts.text = _counts_html(view)
        stats = sorted({k for c in view["contexts"] for k in c["stats"]})
        contexts.show(context_fields + stats, {**_rows(view["contexts"], context_fields), **{
            k: [_fmt_stat(k, c["stats"].get(k, "")) for c in view["contexts"]] for k in stats}})
        recent = view["series"][-600:]  # the last ten minutes
        _replace(series, {"t": [b[0] * 1000 for b in recent], "rate": [b[1] + b[2] + b[3] for b in recent],
                          "failed": [b[2] for b in recent],
                          "mean": [b[4] / n if (n := b[1] + b[2] + b[3]) else float("nan") for b in recent],
                          "max": [b[5] if b[1] + b[2] + b[3] else float("nan") for b in recent]})

    charts = row(rate, latency, sizing_mode="stretch_width")
    return column(counts, Div(text="<h3>Contexts</h3>"), contexts.table, charts, sizing_mode="stretch_width"), update


def _counts_html(view: dict) -> str:
    by_state: dict[str, int] = {"starting": 0, "idle": 0, "busy": 0}
    for w in view["workers"]:
        by_state[w["state"]] += 1
    by_state["lost"] = len(view["losses"])
    invocations = view["invocations"]
    cells = "".join(f'<td>{s}</td><td id="workers-{s}" style="text-align:right"><b>{n}</b></td>'
                    for s, n in by_state.items())
    if invocations is None:
        inv = "<td>invocations</td><td>(the store cannot be counted now)</td>"
    else:
        inv = "".join(f'<td>{s}</td><td id="count-{s}" style="text-align:right"><b>{invocations.get(s, 0)}</b></td>'
                      for s in STATES)
    return (f"<table><tr><th align=left>workers</th>{cells}<td>slots</td><td>{view['worker_slots']}</td></tr>"
            f"<tr><th align=left>invocations</th>{inv}</tr></table>")


# -- /stream ---------------------------------------------------------------------
def _stream(feed: Feed, doc: Document):
    runs = ColumnDataSource({"row": [], "start": [], "end": [], "colour": [], "worker": [], "state": []})
    fig = _time_figure("invocations per worker (the latest runs)", "worker", height=360)
    fig.hbar(y="row", left="start", right="end", height=0.8, color="colour", source=runs)
    fig.yaxis.axis_label = None
    failures, failure_source = _table([("when", "finished"), ("id", "invocation"), ("worker", "worker"),
                                       ("attempts", "attempts"), ("reason", "reason")], height=220)
    detail = Div(text="<i>select a failure to see its attempts and traceback</i>", sizing_mode="stretch_width")
    rows: dict[str, int] = {}
    seen = [0]  # the newest stream event drawn in this session

    def open_failure(attr, old, new) -> None:
        """Read from the endpoint off the server's loop: the other pages go on meanwhile."""
        if not new:
            return
        inv_id = failure_source.data["id"][new[0]]
        detail.text = f"<i>reading invocation {html.escape(inv_id)} from the endpoint's store</i>"

        def fetch() -> None:
            text = _invocation_html(inv_id, feed.invocation(inv_id))
            doc.add_next_tick_callback(lambda: setattr(detail, "text", text))

        threading.Thread(target=fetch, name="faas-dashboard-invocation", daemon=True).start()

    failure_source.selected.on_change("indices", open_failure)

    def update(view: dict) -> None:
        events = [e for e in list(feed.stream) if e[0] > seen[0]]
        if events:
            seen[0] = events[-1][0]
            for _, worker, *_ in events:
                rows.setdefault(worker, len(rows))
            runs.stream({"row": [rows[e[1]] for e in events], "start": [e[2] * 1000 for e in events],
                         "end": [max(e[3], e[2] + 0.001) * 1000 for e in events],
                         "colour": [STATE_COLOURS.get(e[4], "#1f77b4") for e in events],
                         "worker": [e[1] for e in events], "state": [e[4] for e in events]}, rollover=STREAM)
            fig.yaxis.ticker = list(rows.values())
            fig.yaxis.major_label_overrides = {i: w for w, i in rows.items()}
        newest = list(reversed(view["failures"]))
        _replace(failure_source, {**_rows(newest, ["id", "worker", "attempts", "reason"]),
                                  "when": [time.strftime("%H:%M:%S", time.localtime(f["finished"])) for f in newest]},
                 failures)

    return column(fig, Div(text="<h3>Failures (newest first)</h3>"), failures, detail,
                  sizing_mode="stretch_width"), update


def _invocation_html(inv_id: str, reply: dict) -> str:
    inv = reply.get("invocation")
    if inv is None:
        return f"<p>invocation {html.escape(inv_id)}: {html.escape(reply.get('error') or 'not in the store')}</p>"
    history = inv["history"] or "(no earlier attempts)"
    return (f'<div id="invocation-detail"><h3>Invocation {html.escape(inv_id)}</h3>'
            f"<p>function <b>{html.escape(inv['function'])}</b>, context {html.escape(inv['context'])}, "
            f"state <b>{inv['state']}</b> after {inv['attempts']} attempts, on {html.escape(inv['worker_id'] or '-')}"
            f"</p><h4>Attempts</h4><pre>{html.escape(history)}</pre>"
            f"<h4>Traceback</h4><pre>{html.escape(inv['error'] or '')}</pre></div>")


# -- /workers --------------------------------------------------------------------
WORKER_COLUMNS = [("name", "worker"), ("state", "state"), ("host", "host"), ("gpu", "GPU"), ("rss", "memory"),
                  ("host_memory", "host memory (available/total)"), ("gpu_memory", "GPU memory (used/total)"),
                  ("loaded", "loaded"), ("parked", "parked"), ("source", "from source"), ("peers", "from peers"),
                  ("copies", "copies in/out"),
                  ("running", "running"), ("queued", "queued"),
                  ("invocations", "invocations run"), ("failed", "failed"), ("prewarm", "prewarm s"),
                  ("silent", "silent s")]


def _workers(feed: Feed, doc: Document):
    workers, worker_source = _table(WORKER_COLUMNS, height=260)
    base = ["worker", "context"]
    contexts = _FreeTable(base, most=20)
    lost, lost_source = _table([("worker", "worker"), ("when", "lost at"), ("cause", "cause"),
                                ("invocations", "invocations run")], height=160)

    def update(view: dict) -> None:
        _replace(worker_source, _rows([_worker_row(w) for w in view["workers"]], [f for f, _ in WORKER_COLUMNS]),
                 workers, most=20)
        per_context = [{"worker": w["name"], "context": stats.get("description", key[:12]), **{
            k: _fmt_stat(k, v) for k, v in stats.items() if k not in ("key", "description")}}
            for w in view["workers"] for key, stats in w["contexts"].items()]
        fields = base + sorted({k for r in per_context for k in r} - set(base))
        contexts.show(fields, _rows(per_context, fields))
        losses = list(reversed(view["losses"]))
        _replace(lost_source, {**_rows(losses, ["worker", "cause", "invocations"]),
                               "when": [time.strftime("%H:%M:%S", time.localtime(x["at"])) for x in losses]}, lost)

    return column(workers, Div(text="<h3>Contexts on each worker</h3>"), contexts.table,
                  Div(text="<h3>Workers lost</h3>"), lost, sizing_mode="stretch_width"), update


def _worker_row(w: dict) -> dict[str, Any]:
    res, pre, files = w["resources"] or {}, w["prewarm"] or {}, w.get("files") or {}
    gpu = res.get("gpu") or {}
    devices = res.get("cuda_visible_devices")
    return {
        **w, "gpu": " ".join(x for x in (gpu.get("name"), f"[{devices}]" if devices else None) if x) or "-",
        "rss": _bytes(res.get("rss")),
        "host_memory": f"{_bytes(res.get('host_available'))} / {_bytes(res.get('host_total'))}" if res else "",
        "gpu_memory": f"{_bytes(gpu.get('used'))} / {_bytes(gpu.get('total'))}" if gpu else "-",
        "loaded": sum(1 for s in w["contexts"].values() if s.get("loaded")),
        "parked": sum(1 for s in w["contexts"].values() if s.get("parked")),
        "source": _bytes(sum(files.get("source_bytes", {}).values())) if files else "-",
        "peers": _bytes(sum(files.get("peer_bytes", {}).values())) if files else "-",
        "copies": f"{len(files.get('staging', []))} / {files.get('serving', 0)}" if files else "-",
        "prewarm": f"{pre['total']:.2f}" if isinstance(pre.get("total"), (int, float)) else "",
        "silent": f"{w['silent_for']:.1f}" if w["silent_for"] is not None else "",
    }


def _fmt_stat(key: str, value: Any) -> Any:
    if key == "footprint" or key.endswith("_bytes") or key.startswith("bytes"):
        return _bytes(value)
    if key == "last_used" and isinstance(value, (int, float)) and value:
        return time.strftime("%H:%M:%S", time.localtime(value))
    return round(value, 3) if isinstance(value, float) else value if isinstance(value, (int, str)) else str(value)


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


# -- /timeline -------------------------------------------------------------------
def _timeline(feed: Feed, doc: Document):
    series = ColumnDataSource({"t": [], "workers": [], "done": []})
    inits = ColumnDataSource({"left": [], "right": [], "top": [], "colour": []})
    active = _time_figure("workers active", "workers", height=200)
    active.step("t", "workers", source=series, mode="after")
    done = _time_figure("completed invocations (this endpoint's run), with context loads shaded", "completed",
                        height=320)
    done.x_range = active.x_range
    done.quad(left="left", right="right", bottom=0, top="top", color="colour", alpha=0.2, source=inits)
    done.step("t", "done", source=series, mode="after", color=STATE_COLOURS["succeeded"])

    def update(view: dict) -> None:
        total, cumulative = 0, []
        for b in view["series"]:
            total += b[1] + b[2] + b[3]
            cumulative.append(total)
        _replace(series, {"t": [b[0] * 1000 for b in view["series"]], "workers": [b[6] for b in view["series"]],
                          "done": cumulative})
        _replace(inits, {"left": [i[2] * 1000 for i in view["inits"]],
                         "right": [(i[2] + max(i[3], 0.05)) * 1000 for i in view["inits"]],
                         "top": [max(total, 1)] * len(view["inits"]),
                         "colour": ["#ff7f0e" if i[4] else "#d62728" for i in view["inits"]]})

    return column(active, done, sizing_mode="stretch_width"), update
