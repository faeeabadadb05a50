"""The public status page (``/``) and its data (``/status.json``): no token, no event contents.

Server-rendered HTML that charts the last hour with uPlot (MIT, vendored under
``api/static`` so that offline deployments need no CDN) and refreshes itself from
``/status.json`` every few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime
from importlib import resources

from quart import Response
from quart_trio import QuartTrio

from ..progress import History, RecentWarnings
from ..types import Partition

STATIC = ("uPlot.iife.min.js", "uPlot.min.css")
PARTITIONS_TTL = 5.0  # the listing is one catalog query: at most one per 5 s, however many viewers


@dataclasses.dataclass
class StatusSources:
    """What the page shows beyond the live stats: history, warnings, identity."""

    history: History
    warnings: RecentWarnings
    upstream: str
    role: str = "all"
    started_at: float = dataclasses.field(default_factory=time.time)
    partitions: list[Partition] = dataclasses.field(default_factory=list)
    partitions_read_at: float = -PARTITIONS_TTL


def status_body(health: dict[str, object], healthy: bool, sources: StatusSources,
                consumers: dict[str, int]) -> dict[str, object]:
    """The document behind the page (also served as ``/status.json``)."""
    now = datetime.now(UTC)
    return {
        "status": health["status"],
        "healthy": healthy,
        "role": sources.role,
        "upstream": sources.upstream,
        "started_at": datetime.fromtimestamp(sources.started_at, UTC).isoformat(),
        "uptime_seconds": round(time.time() - sources.started_at, 1),
        "health": health,
        "consumers": consumers,
        "partitions": [p.as_json(now) for p in sources.partitions],
        "history": sources.history.as_json(),
        "warnings": list(sources.warnings.records),
    }


def _static(name: str) -> Response:
    data = resources.files(__package__).joinpath("static", name).read_bytes()
    kind = "text/css" if name.endswith(".css") else "text/javascript"
    return Response(data, content_type=f"{kind}; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=86400"})


def register_static(app: QuartTrio) -> None:
    """Serve the vendored chart library (fixed names only: no path from the request)."""

    @app.route("/static/<name>")
    async def static_file(name: str) -> Response:
        if name not in STATIC:
            return Response(json.dumps({"error": "not_found", "message": "no such file"}),
                            status=404, content_type="application/json")
        return _static(name)

    del static_file


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>skywire-trio status</title>
<link rel="stylesheet" href="/static/uPlot.min.css">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2430;background:#f7f8fa}
h1{font-size:1.3rem;margin:0 0 .2rem} h2{font-size:1rem;margin:1.2rem 0 .4rem}
.cards{display:flex;flex-wrap:wrap;gap:.6rem}
.card{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:.5rem .8rem;min-width:9rem}
.card b{display:block;font-size:1.15rem} .muted{color:#6b7480}
.ok{color:#137333} .bad{color:#b3261e}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #dde2ea;padding:.25rem .5rem;
text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
.chart{background:#fff;border:1px solid #dde2ea;border-radius:6px;display:inline-block;margin:.3rem}
</style></head><body>
<h1>skywire-trio <span id="status" class="__CLASS__">__STATUS__</span></h1>
<div class="muted">role <span id="role">__ROLE__</span> &middot; upstream
<span id="upstream">__UPSTREAM__</span> &middot; updated <span id="updated">-</span></div>
<h2>Ingest</h2><div class="cards" id="ingest"></div>
<h2>Last hour</h2><div id="charts"><div class="chart" id="rate-chart"></div>
<div class="chart" id="lag-chart"></div></div>
<h2>Consumers</h2><div class="cards" id="consumers"></div>
<h2>Partitions</h2><table id="partitions"><thead><tr><th>name</th><th>from</th>
<th>rows (est.)</th><th>size</th><th>state</th></tr></thead><tbody></tbody></table>
<h2>Recent warnings</h2><table id="warnings"><thead><tr><th>time</th><th>level</th>
<th>message</th></tr></thead><tbody></tbody></table>
<script id="initial" type="application/json">__DATA__</script>
<script src="/static/uPlot.iife.min.js"></script>
<script>
"use strict";
const charts = {};
function card(label, value) {
  const d = document.createElement("div"); d.className = "card";
  const b = document.createElement("b"); b.textContent = value === null ? "-" : value;
  d.append(b, document.createTextNode(label)); return d;
}
function rows(tbody, items, cells) {
  tbody.replaceChildren(...items.map(item => {
    const tr = document.createElement("tr");
    for (const [text, cls] of cells(item)) {
      const td = document.createElement("td"); td.textContent = text;
      if (cls) td.className = cls; tr.append(td);
    }
    return tr;
  }));
}
function size(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return bytes.toFixed(i ? 1 : 0) + " " + units[i];
}
function chart(id, title, label, xs, ys) {
  const data = [xs, ys.map(v => v === null ? null : v)];
  if (charts[id]) { charts[id].setData(data); return; }
  charts[id] = new uPlot({title, width: 460, height: 200,
    series: [{}, {label, stroke: "#1a73e8", width: 2, fill: "rgba(26,115,232,.08)"}],
    axes: [{}, {size: 80}]}, data, document.getElementById(id));
}
function render(s) {
  const h = s.health, st = document.getElementById("status");
  st.textContent = s.status; st.className = s.healthy ? "ok" : "bad";
  document.getElementById("role").textContent = s.role;
  document.getElementById("upstream").textContent = s.upstream;
  document.getElementById("updated").textContent = new Date().toISOString();
  document.getElementById("ingest").replaceChildren(
    card("upstream connected", h.upstream_connected ? "yes" : "no"),
    card("last id", h.last_id), card("last upstream seq", h.last_seq),
    card("lag (s)", h.lag_seconds), card("since last commit (s)", h.seconds_since_commit),
    card("buffered", h.buffered_events), card("ingest restarts", h.ingest_restarts));
  const c = s.consumers;
  document.getElementById("consumers").replaceChildren(
    ...Object.entries(c).map(([k, v]) => card(k.replaceAll("_", " "), v)));
  rows(document.querySelector("#partitions tbody"), s.partitions, p => [
    [p.name], [p.from || "default"], [p.rows_estimate, "n"], [size(p.bytes), "n"],
    [p.archive || (p.current ? "current" : (p.default ? "default" : ""))]]);
  rows(document.querySelector("#warnings tbody"), s.warnings.slice().reverse(),
       w => [[w.at], [w.level], [w.message]]);
  chart("rate-chart", "committed events/s", "events/s", s.history.at, s.history.rate);
  chart("lag-chart", "lag (s)", "lag s", s.history.at, s.history.lag_seconds);
}
render(JSON.parse(document.getElementById("initial").textContent));
setInterval(() => fetch("/status.json").then(r => r.json()).then(render).catch(() => {
  const st = document.getElementById("status"); st.textContent = "unreachable";
  st.className = "bad"; }), 5000);
</script></body></html>
"""


def render_page(body: dict[str, object]) -> str:
    """The page with the current document inlined (it renders without a second request)."""
    from html import escape

    # `<` escaped so that no value can close the script element it sits in.
    data = json.dumps(body, separators=(",", ":")).replace("<", "\\u003c")
    return (PAGE.replace("__DATA__", data)
            .replace("__STATUS__", escape(str(body["status"])))
            .replace("__CLASS__", "ok" if body["healthy"] else "bad")
            .replace("__ROLE__", escape(str(body["role"])))
            .replace("__UPSTREAM__", escape(str(body["upstream"]))))
