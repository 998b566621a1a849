"""Plotly figures as plain JSON-able dicts (``{"data": [...], "layout": {...}}``), built on the server from
selector aggregates. The builders are pure functions; ``monitor_figures`` is the one entry point the console
calls, and the page hands each figure to ``Plotly.newPlot`` as it is.

Figures are written as dicts rather than through ``plotly.graph_objects``: the same JSON, without validating
every trace on each page load.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from functions_app.models import Function
from metrics_app import selectors
from metrics_app.reports import GROUPINGS, KEY_LABELS
from metrics_app.selectors import StreamSeries, Timeseries, TriggerSeries, TriggerTraffic, Usage

COLOURS = {
    "ok": "#2e7d32",
    "error": "#c62828",
    "throttle": "#ef6c00",
    "p50": "#1565c0",
    "p90": "#6a1b9a",
    "p99": "#ad1457",
    "cold": "#00838f",
    "queue": "#9e9e9e",
    "prepare": "#8d6e63",
    "overhead": "#cfd8dc",
    "init": "#00838f",
    "run": "#1565c0",
    "request": "#9e9e9e",
}


# One line per time tick, short enough for a phone: plotly's own labels add the full date (with the year) under
# the first tick, which sticks out of a narrow chart when that tick sits near its left edge.
DATE_TICK_FORMATS = [
    {"dtickrange": [None, 86_400_000], "value": "%H:%M"},
    {"dtickrange": [86_400_000, None], "value": "%b %-d"},
]


def _layout(title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    """A chart's layout. Every axis makes room for its own tick labels and title (``automargin``), so a right-hand
    axis is never clipped at any width, and the legend sits at the foot of the figure, below the x axis's title."""
    layout: dict[str, Any] = {
        "title": {"text": title, "font": {"size": 14}},
        "height": 320,
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        "hovermode": "x unified",
        "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": 0, "yanchor": "bottom", "yref": "container"},
        "xaxis": _x_axis(type="date", tickformatstops=DATE_TICK_FORMATS, hoverformat="%b %-d, %H:%M"),
        "yaxis": _axis(title={"text": y_title}, rangemode="tozero"),
    }
    layout.update(extra)
    return layout


def _axis(**settings: Any) -> dict[str, Any]:
    return {"automargin": True, **settings}


def _x_axis(**settings: Any) -> dict[str, Any]:
    """Outside ticks hold the x labels a little below the axis, clear of the y axes' "0" at either corner."""
    return _axis(ticks="outside", ticklen=5, tickcolor="#d0d7de", **settings)


def _right_axis(title: str) -> dict[str, Any]:
    """A second y axis on the right, over the first: one chart, two units."""
    return _axis(title={"text": title}, overlaying="y", side="right", rangemode="tozero")


def _x(series: Timeseries | TriggerSeries) -> list[str]:
    return [moment.isoformat() for moment in series.buckets]


def _line(name: str, x: list, y: list, colour: str, **extra: Any) -> dict[str, Any]:
    """A line with a marker on every point: a series with one point (traffic in a single hour) still shows."""
    return {
        "type": "scatter",
        "mode": "lines+markers",
        "name": name,
        "x": x,
        "y": y,
        "line": {"color": colour},
        "marker": {"color": colour, "size": 5},
        **extra,
    }


def _bar(name: str, x: list, y: list, colour: str, **extra: Any) -> dict[str, Any]:
    return {"type": "bar", "name": name, "x": x, "y": y, "marker": {"color": colour}, **extra}


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def invocations_figure(series: Timeseries) -> dict[str, Any]:
    x = _x(series)
    return {
        "data": [
            _bar("Succeeded", x, [p.invocations - p.errors for p in series.points], COLOURS["ok"]),
            _bar("Errors", x, [p.errors for p in series.points], COLOURS["error"]),
            _bar("Throttles", x, [p.throttles for p in series.points], COLOURS["throttle"]),
        ],
        "layout": _layout(f"Invocations, errors and throttles per {series.granularity}", "count", barmode="stack"),
    }


def duration_figure(series: Timeseries) -> dict[str, Any]:
    x = _x(series)
    data = [
        _line(f"p{q}", x, [_round(p.duration_p(q)) for p in series.points], COLOURS[f"p{q}"], connectgaps=False)
        for q in (50, 90, 99)
    ]
    return {"data": data, "layout": _layout("Run duration percentiles", "ms")}


def cold_start_figure(series: Timeseries) -> dict[str, Any]:
    x = _x(series)
    rate = [_round(100 * p.cold_rate) if p.runs else None for p in series.points]
    data = [
        _bar("Cold-start rate", x, rate, COLOURS["cold"], opacity=0.5),
        _line("Init p50", x, [_round(p.init_p(50)) for p in series.points], COLOURS["p50"], yaxis="y2"),
        _line("Init p90", x, [_round(p.init_p(90)) for p in series.points], COLOURS["p90"], yaxis="y2"),
    ]
    layout = _layout("Cold starts: rate and init duration", "% of invocations", yaxis2=_right_axis("init ms"))
    return {"data": data, "layout": layout}


def concurrency_figure(series: Timeseries) -> dict[str, Any]:
    """Average concurrency per bucket by Little's law: the time spent running (init + run) in the bucket divided
    by the bucket's length. Bursts shorter than the bucket are averaged away, so peaks are higher than shown."""
    length_ms = series.step.total_seconds() * 1000
    y = [_round((p.duration_ms_sum + p.init_ms_sum) / length_ms, 3) for p in series.points]
    hover = f"%{{y}} running at once on average (time running / {series.granularity})<extra></extra>"
    return {
        "data": [_line("Average concurrency", _x(series), y, COLOURS["run"], fill="tozeroy", hovertemplate=hover)],
        "layout": _layout(f"Average concurrency per {series.granularity}", "executions"),
    }


def cost_figure(series: Timeseries) -> dict[str, Any]:
    x = _x(series)
    whole = selectors.usage_merge(series.points)
    share = f"{100 * float(whole.init_usd / whole.total_usd):.1f}%" if whole.total_usd else "0%"
    stacked = {"stackgroup": "cost"}
    return {
        "data": [
            _line("Requests", x, [float(p.request_usd) for p in series.points], COLOURS["request"], **stacked),
            _line("Run (compute)", x, [float(p.run_usd) for p in series.points], COLOURS["run"], **stacked),
            _line("Cold-start init", x, [float(p.init_usd) for p in series.points], COLOURS["init"], **stacked),
        ],
        "layout": _layout(f"Cost (USD) per {series.granularity}; cold starts are {share} of it", "USD"),
    }


def phases_figure(series: Timeseries) -> dict[str, Any]:
    """Where an average invocation's time goes, every millisecond from accept to finish: waiting in the queue,
    preparing (code download and unpacking), cold-start init (spread over all calls), run, and the overhead."""
    x = _x(series)
    return {
        "data": [
            _bar("Queue wait", x, [_round(p.avg_queue_wait_ms) for p in series.points], COLOURS["queue"]),
            _bar("Prepare", x, [_round(p.avg_prepare_ms) for p in series.points], COLOURS["prepare"]),
            _bar("Init", x, [_round(p.avg_init_ms) for p in series.points], COLOURS["init"]),
            _bar("Run", x, [_round(p.avg_duration_ms) for p in series.points], COLOURS["run"]),
            _bar("Overhead", x, [_round(p.avg_overhead_ms) for p in series.points], COLOURS["overhead"]),
        ],
        "layout": _layout("Phase breakdown per invocation (average)", "ms", barmode="stack"),
    }


def versions_figure(versions: dict[str, Usage]) -> dict[str, Any]:
    labels = list(versions)
    usages = list(versions.values())
    details = [
        [u.invocations, round(100 * u.error_rate, 2), round(100 * u.cold_rate, 2), _per_million(u)] for u in usages
    ]
    hover = (
        "%{x}: %{y:.1f} ms<br>%{customdata[0]} invocations, %{customdata[1]}% errors, "
        "%{customdata[2]}% cold<br>$%{customdata[3]:.4f} per 1M invocations<extra>%{fullData.name}</extra>"
    )
    data = [
        _bar(
            f"p{q}",
            labels,
            [_round(u.duration_p(q)) for u in usages],
            COLOURS[f"p{q}"],
            customdata=details,
            hovertemplate=hover,
        )
        for q in (50, 90, 99)
    ]
    layout = _layout("Versions side by side: duration percentiles", "ms", barmode="group", hovermode="closest")
    layout["xaxis"] = _x_axis(type="category", title={"text": "version"})
    return {"data": data, "layout": layout}


def _per_million(usage: Usage) -> float:
    return float(usage.total_usd) / usage.invocations * 1_000_000 if usage.invocations else 0.0


def monitor_figures(*, function: Function, start: datetime, end: datetime) -> list[dict]:
    """Every chart of a function's Monitor page over [start, end), each ``{"id", "title", "figure"}``."""
    series = selectors.function_timeseries(function=function, start=start, end=end)
    versions = selectors.function_versions(function=function, start=start, end=end)
    figures = [
        ("invocations", invocations_figure(series)),
        ("duration", duration_figure(series)),
        ("cold-starts", cold_start_figure(series)),
        ("concurrency", concurrency_figure(series)),
        ("cost", cost_figure(series)),
        ("phases", phases_figure(series)),
        ("versions", versions_figure(versions)),
    ]
    return [{"id": name, "title": figure["layout"]["title"]["text"], "figure": figure} for name, figure in figures]


# One colour per HTTP trigger, in the order of the Monitor's table (busiest first); repeats past the eighth.
TRIGGER_COLOURS = ["#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#8d6e63", "#546e7a"]


def http_requests_figure(series: TriggerSeries, triggers: list[TriggerTraffic]) -> dict[str, Any]:
    """Requests per bucket, one line per HTTP trigger (named and ordered as in ``triggers``)."""
    x = _x(series)
    zeros = [0] * len(x)
    data = [
        _line(item.label, x, series.requests.get(item.key, zeros), TRIGGER_COLOURS[index % len(TRIGGER_COLOURS)])
        for index, item in enumerate(triggers)
    ]
    return {"data": data, "layout": _layout(f"HTTP requests per {series.granularity}, by trigger", "requests")}


def monitor_http_figure(*, function: Function, start: datetime, end: datetime, triggers: list[TriggerTraffic]) -> dict:
    """The Monitor's chart of HTTP requests per trigger over [start, end) (``triggers``: its table's rows)."""
    return http_requests_figure(selectors.function_http_series(function=function, start=start, end=end), triggers)


def rightsizing_figure(analysis: Any) -> dict[str, Any]:
    """The what-if curve of a ``rightsizing.Analysis``: duration and cost per invocation at each memory size,
    with sizes at risk of running out of memory marked."""
    rows = analysis.rows
    x = [row.memory_mb for row in rows]
    risk = [row for row in rows if row.oom_risk]
    data = [
        _line("Duration (ms)", x, [round(row.duration_ms, 2) for row in rows], COLOURS["p50"]),
        _line(
            "Cost per 1M invocations (USD)",
            x,
            [round(row.cost_per_million_usd, 4) for row in rows],
            COLOURS["ok"],
            yaxis="y2",
        ),
        {
            "type": "scatter",
            "mode": "markers",
            "name": "OOM risk",
            "x": [row.memory_mb for row in risk],
            "y": [round(row.duration_ms, 2) for row in risk],
            "marker": {"color": COLOURS["error"], "symbol": "x", "size": 11},
        },
    ]
    layout = _layout(
        "Memory what-if: modelled duration and cost", "ms", hovermode="x unified", yaxis2=_right_axis("USD per 1M")
    )
    # Labels at the powers of two only: the sizes between them (768, 1536, 1769, 3008 …) sit too close on a log
    # axis to label without overlap. Each size still has its marker, and the table beside lists them all.
    ticks = [size for size in x if size & (size - 1) == 0]
    labels = [str(size) for size in ticks]
    layout["xaxis"] = _x_axis(type="log", title={"text": "memory (MB)"}, tickvals=ticks, ticktext=labels)
    if analysis.recommended_mb:
        layout["shapes"] = [
            {
                "type": "line",
                "x0": analysis.recommended_mb,
                "x1": analysis.recommended_mb,
                "yref": "paper",
                "y0": 0,
                "y1": 1,
                "line": {"dash": "dot", "color": COLOURS["ok"]},
            }
        ]
    return {"data": data, "layout": layout}


def report_figure(report: Any) -> dict[str, Any]:
    """A ``reports.UsageReport``'s cost per group, stacked by part: requests, run compute and cold-start init."""
    labels = [" / ".join(str(row[key]) for key in report_keys(report)) for row in report.rows]
    parts = [("Requests", "request_usd"), ("Run (compute)", "run_usd"), ("Cold-start init", "init_usd")]
    data = [
        _bar(name, labels, [float(row[field]) for row in report.rows], COLOURS[field.removesuffix("_usd")])
        for name, field in parts
    ]
    layout = _layout(f"Cost (USD) by {report.group_by}", "USD", barmode="stack", hovermode="closest")
    layout["xaxis"] = _x_axis(type="category", title={"text": report.group_by})
    return {"data": data, "layout": layout}


def report_keys(report: Any) -> list[str]:
    """The columns naming a report's groups; the owner column only when the report spans owners or is by owner."""
    keys = [KEY_LABELS[name] for name in GROUPINGS[report.group_by]]
    return keys if report.scope == "all" or report.group_by == "owner" else [k for k in keys if k != "owner"]


def stream_figures(series: StreamSeries) -> list[dict[str, Any]]:
    """The Monitor's event source mapping charts: records and records per batch; iterator age and records
    waiting. One colour per mapping, its stream's name in the legend."""
    x = [moment.isoformat() for moment in series.buckets]
    throughput, backlog = [], []
    for index, (mapping, stream) in enumerate(series.streams.items()):
        colour = TRIGGER_COLOURS[index % len(TRIGGER_COLOURS)]
        throughput += [
            _line(f"{stream}: records", x, series.records[mapping], colour),
            _line(
                f"{stream}: per batch",
                x,
                series.records_per_batch[mapping],
                colour,
                yaxis="y2",
                line={"color": colour, "dash": "dot"},
            ),
        ]
        backlog += [
            _line(f"{stream}: waiting", x, series.lag[mapping], colour),
            _line(
                f"{stream}: iterator age",
                x,
                series.iterator_age_ms[mapping],
                colour,
                yaxis="y2",
                line={"color": colour, "dash": "dot"},
            ),
        ]
    per = series.granularity
    return [
        {
            "id": "stream-throughput",
            "title": "Records and batches",
            "figure": {
                "data": throughput,
                "layout": _layout(
                    f"Records per {per}, and per batch", "records", yaxis2=_right_axis("records per batch")
                ),
            },
        },
        {
            "id": "stream-lag",
            "title": "Lag",
            "figure": {
                "data": backlog,
                "layout": _layout(
                    f"Records waiting and iterator age (maximum per {per})", "records waiting", yaxis2=_right_axis("ms")
                ),
            },
        },
    ]
