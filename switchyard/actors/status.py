"""The status actor: ``GET /health`` (JSON), ``GET /metrics`` (Prometheus) and ``GET /`` (a live page).

Every app run from a manifest gets one (``[app] status``, see docs/operating.md); it
listens on loopback unless told otherwise. ``/health`` reports, per actor: state,
mailbox depth and capacity, handled, errors, restarts and last error, plus the
app's name and uptime; ``ok`` is true while every actor runs. The page at ``/``
needs no external assets and refreshes itself from ``/health`` every second.
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs

from switchyard.runtime import Actor, current_system
from switchyard.runtime.config import port as valid_port
from switchyard.transports.http_server import HttpLimits, HttpServer, Request, Response

__all__ = ["StatusActor", "StatusConfig", "health_document"]


@attrs.frozen
class StatusConfig:
    """``host``/``port`` to listen on (port 0: any free port); ``max_connections`` bounds clients."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8090, validator=valid_port)
    max_connections: int = 32


def health_document(system: Any) -> dict[str, Any]:
    """The ``/health`` JSON for ``system`` (a :class:`~switchyard.runtime.System`)."""
    actors = {name: stats.as_dict() for name, stats in system.stats().items()}
    return {
        "app": system.name,
        "ok": all(a["state"] == "running" for a in actors.values()),
        "uptime": round(time.time() - system.started_at, 3),
        "actors": actors,
    }


class StatusActor(Actor):
    """HTTP status of the app: /health (JSON), /metrics (Prometheus) and a live page at /."""

    Config = StatusConfig

    async def on_start(self) -> None:
        cfg: StatusConfig = self.config
        self.system = current_system()
        limits = HttpLimits(max_body_bytes=1024, max_connections=cfg.max_connections, max_connections_per_peer=0)
        self.server = HttpServer(self._serve, limits=limits, logger=self.log)
        self.port = await self.nursery.start(self.server.serve, cfg.host, cfg.port)
        self.url = f"http://{cfg.host}:{self.port}/"
        self.log.info("status page on %s (health: %shealth, metrics: %smetrics)", self.url, self.url, self.url)

    async def handle(self, message: Any) -> Any:
        if message == "url":
            return self.url
        return health_document(self.system)

    async def _serve(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _text(405, "only GET\n")
        if request.path == "/health":
            body = json.dumps(health_document(self.system), ensure_ascii=False).encode()
            return Response(200, (("content-type", "application/json"), ("cache-control", "no-store")), body)
        if request.path == "/metrics":
            return Response(
                200, (("content-type", "text/plain; version=0.0.4; charset=utf-8"),), self.system.metrics.render()
            )
        if request.path == "/":
            return Response(200, (("content-type", "text/html; charset=utf-8"),), PAGE.encode())
        return _text(404, "not found: try /, /health or /metrics\n")


def _text(status: int, text: str) -> Response:
    return Response(status, (("content-type", "text/plain; charset=utf-8"),), text.encode())


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>switchyard status</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}
.running{color:#080}.crashed,.stopped,.failed{color:#b00}.starting,.restarting{color:#a60}
#err{color:#b00}
</style></head>
<body><h1 id="title">switchyard</h1><p id="summary">loading...</p><p id="err"></p>
<table><thead><tr><th>actor</th><th>kind</th><th>state</th><th>mailbox</th><th>handled</th>
<th>errors</th><th>restarts</th><th>last error</th></tr></thead><tbody id="actors"></tbody></table>
<p><a href="health">health (JSON)</a> &middot; <a href="metrics">metrics (Prometheus)</a></p>
<script>
function cell(row, text, cls){const td=document.createElement('td');td.textContent=text;if(cls)td.className=cls;row.appendChild(td);}
async function refresh(){
  try{
    const r=await fetch('health',{cache:'no-store'});const h=await r.json();
    document.getElementById('title').textContent='switchyard: '+h.app;
    document.getElementById('summary').textContent=(h.ok?'all actors running':'not all actors running')+', up '+Math.round(h.uptime)+' s';
    const body=document.getElementById('actors');body.replaceChildren();
    for(const [name,a] of Object.entries(h.actors)){
      const row=document.createElement('tr');row.id='actor-'+name;
      cell(row,name);cell(row,a.kind);cell(row,a.state,a.state);cell(row,a.mailbox_depth+' / '+a.mailbox_capacity);
      cell(row,a.handled);cell(row,a.errors);cell(row,a.restarts);cell(row,a.last_error||'');body.appendChild(row);
    }
    document.getElementById('err').textContent='';
  }catch(e){document.getElementById('err').textContent='cannot reach the app: '+e;}
}
refresh();setInterval(refresh,1000);
</script></body></html>
"""
