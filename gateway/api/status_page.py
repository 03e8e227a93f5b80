"""The status page's HTML: one self-contained document (inline CSS and JS, no external assets).

The page itself holds no data; its script polls /status/data every few seconds. When that needs a key,
the page asks for one and keeps it in sessionStorage (this tab only); `/status#key=...` also works, as
the fragment never reaches the server or its logs. Data goes into the page as text, never as HTML.
"""

from __future__ import annotations

import base64
import hashlib

POLL_MS = 5000

STYLE = """
body{font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;align-items:baseline;gap:16px}
header h1{font-size:19px;margin:0}header span{opacity:.75;font-size:13px}
main{padding:20px 24px}table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 3px #0002}
th,td{padding:9px 12px;text-align:right;border-bottom:1px solid #e4e7ec;white-space:nowrap}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#5b6475;background:#fafbfc}
.health{display:inline-block;padding:2px 9px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.up{background:#1f8a4c}.degraded{background:#c77c02}.down{background:#c62828}.unknown{background:#8a93a3}
.saturated{background:#6a3fa0;margin-left:6px}
.over{color:#c62828;font-weight:600}.ok{color:#1f8a4c}.muted{color:#8a93a3}
#message{margin:12px 0;color:#c62828}#keyform{margin:16px 0;display:none}#keyform input{width:320px;padding:6px}
footer{padding:0 24px 20px;color:#5b6475;font-size:12px}
h2{font-size:16px;margin:26px 0 8px}#batchsection{display:none}#batchnote{margin:0 0 8px}
#batchsection th:nth-child(3),#batchsection td:nth-child(3){text-align:left}
"""

SCRIPT = """
const STORE = "citadel-status-key";
const $ = (id) => document.getElementById(id);
if (location.hash.startsWith("#key=")) {
  sessionStorage.setItem(STORE, decodeURIComponent(location.hash.slice(5)));
  history.replaceState(null, "", location.pathname);
}
function cell(row, text, cls) {
  const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td;
}
function ms(v) { return v === null ? "-" : (v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms"); }
function pct(v) { return v === null ? "-" : (100 * v).toFixed(1) + " %"; }
function admission(row, a) {
  if (a === null) { cell(row, "-", "muted"); cell(row, "-", "muted"); return; }
  const load = cell(row, a.in_flight + " / " + (a.capacity === null ? "-" : a.capacity));
  if (a.saturated) {
    const badge = document.createElement("span"); badge.className = "health saturated";
    badge.textContent = "saturated"; load.append(" ", badge);
  }
  cell(row, a.waiting.interactive + " / " + a.waiting.batch, a.waiting.interactive > 0 ? "over" : "");
}
function batches(b) {
  const body = $("batches"); body.replaceChildren();
  $("batchsection").style.display = b === null || b === undefined ? "none" : "block";
  if (!b) return;
  if (!b.available) { $("batchnote").textContent = "The database did not answer; batches unknown."; return; }
  const listed = {all: "", own: ": this key's are listed", none: ": a key lists them"}[b.scope];
  $("batchnote").textContent = b.running + " batch" + (b.running === 1 ? "" : "es") + " running" + listed;
  for (const x of b.batches) {
    const row = body.insertRow(); row.dataset.batch = x.id;
    cell(row, x.id); cell(row, x.endpoint); cell(row, x.status);
    cell(row, x.completed + " / " + x.failed + " / " + x.total, x.failed > 0 ? "over" : "");
    cell(row, new Date(x.created_at * 1000).toLocaleString());
  }
}
function render(data) {
  const body = $("models"); body.replaceChildren();
  for (const m of data.models) {
    const row = body.insertRow(); row.dataset.model = m.model;
    cell(row, m.model + " (" + m.display_name + ")");
    const badge = document.createElement("span"); badge.className = "health " + m.health;
    badge.textContent = m.health; row.insertCell().append(badge);
    cell(row, String(m.requests));
    const late = (v) => v === null ? "muted" : (v > m.latency_target_ms ? "over" : "ok");
    cell(row, ms(m.p50_ms), late(m.p50_ms)); cell(row, ms(m.p95_ms), late(m.p95_ms));
    cell(row, ms(m.latency_target_ms));
    cell(row, m.tokens_per_s === null ? "-" : m.tokens_per_s.toFixed(1));
    cell(row, pct(m.error_rate), m.error_rate > 0.05 ? "over" : "");
    cell(row, pct(m.cache_hit_ratio));
    admission(row, m.admission);
  }
  batches(data.batches);
  $("window").textContent = "last " + Math.round(data.window_s) + " s (window up to " +
    Math.round(data.window_max_s / 60) + " min)";
  $("updated").textContent = "Updated " + new Date().toLocaleTimeString();
  $("message").textContent = ""; $("keyform").style.display = "none";
}
async function refresh() {
  const key = sessionStorage.getItem(STORE);
  const headers = key ? {Authorization: "Bearer " + key} : {};
  try {
    const answer = await fetch("/status/data", {headers, cache: "no-store"});
    if (answer.status === 401 || answer.status === 403) {
      $("message").textContent = key ? "This key may not read the status." : "A key is needed to see the status.";
      $("keyform").style.display = "block";
    } else if (!answer.ok) {
      $("message").textContent = "The gateway answered " + answer.status + ".";
    } else {
      render(await answer.json());
    }
  } catch (e) {
    $("message").textContent = "The gateway is unreachable; retrying.";
  }
  setTimeout(refresh, POLL_MS);
}
$("keyform").addEventListener("submit", (event) => {
  event.preventDefault(); sessionStorage.setItem(STORE, $("key").value); $("key").value = ""; refresh();
});
refresh();
""".replace("POLL_MS", str(POLL_MS))

BODY = """<header><h1>Citadel LLM Server</h1><span>Model status</span><span id="updated"></span></header>
<main>
<div id="message"></div>
<form id="keyform"><label>API key <input id="key" type="password" autocomplete="off"></label>
<button type="submit">Show status</button></form>
<table><thead><tr><th>Model</th><th>Health</th><th>Requests</th><th>p50</th><th>p95</th><th>Target</th>
<th>Tokens/s</th><th>Error rate</th><th>Cache hits</th><th>In flight</th><th>Waiting</th></tr></thead>
<tbody id="models"></tbody></table>
<section id="batchsection"><h2>Batches</h2><p id="batchnote" class="muted"></p>
<table><thead><tr><th>Batch</th><th>Endpoint</th><th>Status</th><th>Completed / failed / total</th><th>Created</th>
</tr></thead><tbody id="batches"></tbody></table></section>
</main>
<footer>Latency, tokens/s, error rate (5xx) and cache hits over the <span id="window">last minutes</span>,
all gateway workers together; refreshes every few seconds. In flight and waiting are now: requests at the
model's servers / the gateway's capacity for them, and requests queued at the gateway, interactive / batch
(docs/capacity.md). Batches: those not over yet, oldest first, at most 20 (docs/batch.md).</footer>"""

HTML = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    f"<title>Citadel LLM Server status</title><style>{STYLE}</style></head>"
    f"<body>{BODY}<script>{SCRIPT}</script></body></html>"
).encode()


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Only this page's own inline style and script may run, and it may talk to this server only.
HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src {_hash(STYLE)}; script-src {_hash(SCRIPT)}; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
