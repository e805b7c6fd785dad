//! The status page: `GET /` (HTML for a person) and `GET /status` (its JSON).
//! The page polls `/status` and shows rates computed from two samples.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::response::{Html, IntoResponse};
use serde_json::json;

use super::AdminState;
use crate::deploy::Deployer;
use crate::health::PipelineHealth;
use crate::pipeline::Counters;

/// What the status page shows of one pipeline.
#[derive(Debug, Clone)]
pub struct StatusSource {
    pub name: String,
    pub counters: Arc<Counters>,
    pub health: Arc<PipelineHealth>,
    pub deployer: Arc<Deployer>,
}

pub async fn status(State(state): State<AdminState>) -> impl IntoResponse {
    let pipelines: Vec<_> = state
        .status
        .iter()
        .map(|s| {
            let c = &s.counters;
            let plugin = s.deployer.current();
            let lag: Vec<_> = s
                .health
                .lag()
                .into_iter()
                .map(|((topic, partition), lag)| json!({"topic": topic, "partition": partition, "lag": lag}))
                .collect();
            let assigned: Vec<_> = s
                .health
                .assigned()
                .iter()
                .map(|p| format!("{}/{}", p.topic, p.partition))
                .collect();
            json!({
                "name": s.name,
                "plugin": plugin.id().to_string(),
                "history": s.deployer.history().len(),
                "consumed": c.consumed.load(Ordering::Relaxed),
                "succeeded": c.succeeded.load(Ordering::Relaxed),
                "outputs": c.outputs.load(Ordering::Relaxed),
                "dead_lettered": c.dead_lettered.load(Ordering::Relaxed),
                "failed": c.failed_by_kind().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "assigned": assigned,
                "lag": lag,
                "problems": s.health.readiness_problems(),
            })
        })
        .collect();
    let ready = state.health.readiness();
    let alive = state.health.liveness();
    Json(json!({ "alive": alive.ok, "ready": ready.ok, "pipelines": pipelines }))
}

pub async fn page() -> impl IntoResponse {
    Html(PAGE)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Sandpiper</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2rem; color: #1d2433; background: #f7f8fa; }
  h1 { font-size: 1.4rem; margin: 0 0 1rem; }
  .badge { display: inline-block; padding: .15rem .6rem; border-radius: 1rem; font-weight: 600; font-size: .85rem; }
  .ok { background: #d8f5e0; color: #116329; } .bad { background: #fde2e1; color: #a40e26; }
  section { background: white; border: 1px solid #dde1e8; border-radius: .5rem; padding: 1rem 1.25rem; margin: 1rem 0; }
  h2 { font-size: 1.15rem; margin: 0 0 .5rem; }
  .plugin { font-family: ui-monospace, monospace; font-size: .9rem; color: #4a5568; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(9rem, 1fr)); gap: .75rem; margin: .75rem 0; }
  .num { font-size: 1.5rem; font-weight: 650; } .label { color: #5a6475; font-size: .8rem; }
  table { border-collapse: collapse; font-size: .9rem; } td, th { padding: .2rem .8rem .2rem 0; text-align: left; }
  .problems { color: #a40e26; margin: .5rem 0 0; padding-left: 1.2rem; }
</style>
</head>
<body>
<h1>Sandpiper <span id="alive" class="badge">…</span> <span id="ready" class="badge">…</span></h1>
<div id="pipelines">Loading…</div>
<script>
let last = null;
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function badge(el, ok, yes, no) { el.textContent = ok ? yes : no; el.className = 'badge ' + (ok ? 'ok' : 'bad'); }
async function refresh() {
  const now = Date.now();
  const s = await (await fetch('/status')).json();
  badge(document.getElementById('alive'), s.alive, 'alive', 'unhealthy');
  badge(document.getElementById('ready'), s.ready, 'ready', 'not ready');
  const html = s.pipelines.map(p => {
    const prev = last && last.s.pipelines.find(q => q.name === p.name);
    const secs = last ? (now - last.t) / 1000 : 0;
    const rate = k => prev && secs > 0 ? ((p[k] - prev[k]) / secs).toFixed(1) : '–';
    const failed = Object.entries(p.failed).map(([k, n]) => `<tr><td>${esc(k)}</td><td>${n}</td></tr>`).join('') || '<tr><td>none</td></tr>';
    const lag = p.lag.map(l => `<tr><td>${esc(l.topic)}/${l.partition}</td><td>${l.lag}</td></tr>`).join('') || '<tr><td>–</td></tr>';
    const problems = p.problems.length ? `<ul class="problems">${p.problems.map(x => `<li>${esc(x)}</li>`).join('')}</ul>` : '';
    return `<section><h2>${esc(p.name)}</h2>
      <div class="plugin">plugin ${esc(p.plugin)} · ${p.history} version(s) · partitions ${esc(p.assigned.join(', ') || 'none')}</div>
      <div class="grid">
        <div><div class="num">${rate('consumed')}</div><div class="label">records/s in</div></div>
        <div><div class="num">${rate('outputs')}</div><div class="label">outputs/s</div></div>
        <div><div class="num">${p.consumed}</div><div class="label">consumed</div></div>
        <div><div class="num">${p.succeeded}</div><div class="label">succeeded</div></div>
        <div><div class="num">${p.dead_lettered}</div><div class="label">dead-lettered</div></div>
      </div>
      <table><tr><th>failures by kind</th><th></th></tr>${failed}</table>
      <table><tr><th>lag by partition</th><th></th></tr>${lag}</table>${problems}</section>`;
  }).join('');
  document.getElementById('pipelines').innerHTML = html || 'No pipelines.';
  last = { s, t: now };
}
refresh(); setInterval(refresh, 2000);
</script>
</body>
</html>
"#;
