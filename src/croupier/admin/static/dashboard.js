// croupier's dashboard: one page, fed by /api/v1/events (server-sent events: `hello` with the
// sparklines' history, then a `frame` a second), acting through the admin API with the token
// the operator gives, kept for this tab only (sessionStorage), sent in a header, never in a
// URL or a cookie. Preact and htm render it; uPlot draws the sparklines (static/vendor/).
import { h, render } from "./vendor/preact.mjs";
import { useEffect, useRef, useState } from "./vendor/preact-hooks.mjs";
import htm from "./vendor/htm.mjs";

const html = htm.bind(h);
const TOKEN_KEY = "croupier-admin-token";

// ---- the live state --------------------------------------------------------------------------

const store = {
  frame: null,            // the last frame
  history: {},            // member key -> requests a second, one a tick, oldest first
  spark: 300,
  tick: 1,
  connected: false,
  lostSince: null,        // when the stream was lost (ms), while it is
  lastFrame: 0,
  fresh: false,           // a hello came: the next frame's sample is already in its history
  message: null,          // {text, error}
};
const subscribers = new Set();
const changed = () => subscribers.forEach((f) => f());

function connect() {
  const source = new EventSource("/api/v1/events");
  source.addEventListener("hello", (e) => {
    const hello = JSON.parse(e.data);
    store.history = hello.history;
    store.spark = hello.spark_seconds;
    store.tick = hello.tick;
    store.fresh = true;
  });
  source.addEventListener("frame", (e) => {
    const frame = JSON.parse(e.data);
    for (const pool of frame.pools) {
      for (const m of pool.members) {
        const series = store.history[m.key] || (store.history[m.key] = []);
        if (!store.fresh && typeof m.spark === "number") series.push(m.spark);
        if (series.length > store.spark) series.splice(0, series.length - store.spark);
      }
    }
    store.fresh = false;
    store.frame = frame;
    store.connected = true;
    store.lostSince = null;
    store.lastFrame = Date.now();
    changed();
  });
  source.onerror = () => {
    store.connected = false;
    if (store.lostSince === null) store.lostSince = Date.now();
    changed();
    if (source.readyState === EventSource.CLOSED) {   // the browser gave up: we do not
      setTimeout(connect, 2000);
    }
  };
}

setInterval(() => {                 // ages and staleness move even when no frame comes
  if (store.connected && Date.now() - store.lastFrame > 3000 * store.tick) {
    store.connected = false;
    store.lostSince = store.lastFrame;
  }
  changed();
}, 1000);

// ---- acting ----------------------------------------------------------------------------------

const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

function say(text, error) {
  store.message = { text, error, at: Date.now() };
  changed();
}

async function act(method, path, body, what) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    say(`${what}: croupier did not answer (${e.message})`, true);
    return null;
  }
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    let detail = data && data.detail;
    if (Array.isArray(detail)) {
      detail = detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    }
    if (response.status === 401) {
      detail = "refused: a change needs the admin token. Enter it at the top of the page " +
               "(kept for this tab only).";
    }
    say(`${what}: ${response.status} ${detail || response.statusText}`, true);
    return null;
  }
  say(`${what}: done` + (data && data.revision ? `, applied by the fleet at revision ${data.revision}` : ""), false);
  return data;
}

const statePath = (target) => `/api/v1/targets/${target.split("/").map(encodeURIComponent).join("/")}/state`;

const setState = (target, state) =>
  act("PUT", statePath(target), { state, reason: "from the dashboard" }, `${state} ${target}`);

// ---- how states read: a word and a shape, colour only repeats them -----------------------

const HEALTH = { up: ["▲ up", "ok"], down: ["▼ down", "bad"], unknown: ["◆ unknown", "none"] };
const ADMIN = { ready: ["● ready", "ok"], drain: ["◐ drain", "warn"], maint: ["■ maint", "bad"] };

function Badge({ table, value, title }) {
  const [text, cls] = table[value] || [value, "none"];
  return html`<span class="state ${cls}" title=${title || ""}>${text}</span>`;
}

const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const pct = (v) => (v ? (v * 100).toFixed(1) + "%" : "0%");
const clock = (t) => new Date(t * 1000).toLocaleTimeString();
const when = (t) => new Date(t * 1000).toLocaleString();

// ---- parts of the page -----------------------------------------------------------------------

function Spark({ values, label }) {
  const box = useRef(null);
  const plot = useRef(null);
  const data = () => [values.map((_, i) => i), values.slice()];
  useEffect(() => {
    plot.current = new uPlot({
      width: 120, height: 28, pxAlign: true,
      cursor: { show: false }, legend: { show: false }, select: { show: false },
      axes: [{ show: false }, { show: false }],
      scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      series: [{}, { stroke: "#1f5fa8", fill: "rgba(31,95,168,0.15)", width: 1, points: { show: false } }],
    }, data(), box.current);
    return () => plot.current.destroy();
  }, []);
  useEffect(() => { if (plot.current) plot.current.setData(data()); });
  return html`<span class="spark" ref=${box} role="img" aria-label=${label}></span>`;
}

function Header({ frame }) {
  const [draft, setDraft] = useState("");
  const about = frame ? frame.about : {};
  const lost = store.lostSince ? Math.round((Date.now() - store.lostSince) / 1000) : 0;
  const connection = store.connected
    ? html`<span id="connection" class="live">● live, a frame a second (${frame ? frame.viewers : 0} viewing)</span>`
    : html`<span id="connection" class="down">▲ croupier does not answer: reconnecting (${lost} s)</span>`;
  const save = (e) => {
    e.preventDefault();
    if (draft.trim()) sessionStorage.setItem(TOKEN_KEY, draft.trim());
    setDraft("");
    say("token kept for this tab", false);
  };
  const forget = () => { sessionStorage.removeItem(TOKEN_KEY); say("token forgotten", false); };
  return html`
    <header class="top">
      <h1>croupier <span class="muted">${about.instance || ""} ${about.version ? "v" + about.version : ""}</span></h1>
      ${connection}
      ${token()
        ? html`<span id="token-state">admin token set for this tab <button id="token-forget" onClick=${forget}>Forget</button></span>`
        : html`<form id="token-form" onSubmit=${save}>
            <span class="readonly" id="token-state">read-only: no admin token. </span>
            <label>token <input id="token" type="password" autocomplete="off" value=${draft}
              onInput=${(e) => setDraft(e.target.value)} /></label>
            <button id="token-save" type="submit">Use</button></form>`}
    </header>
    <div id="message" role="status" aria-live="polite"
         class=${store.message ? (store.message.error ? "error" : "ok") : ""}>
      ${store.message ? store.message.text : ""}</div>`;
}

function Listeners({ frame }) {
  return html`<section id="listeners"><h2>Listeners</h2><table>
    <tr><th>name</th><th>listen</th><th>mode</th><th>pool</th><th>routes</th><th class="num">connections</th></tr>
    ${frame.listeners.map((l) => html`<tr key=${l.name}>
      <td>${l.name}</td><td>${l.listen}</td><td>${l.mode}</td><td>${l.pool}</td>
      <td>${l.routes.map((r) => Object.entries(r).map(([k, v]) => `${k}=${v}`).join(" ")).join("; ") || "–"}</td>
      <td class="num">${l.open_connections}</td></tr>`)}
  </table></section>`;
}

function Weight({ m }) {
  const [value, setValue] = useState("");
  const submit = async (e) => {
    e.preventDefault();
    const weight = parseInt(value, 10);
    if (Number.isNaN(weight)) { say(`weight of ${m.key}: a whole number 0-1000`, true); return; }
    const path = `/api/v1/pools/${encodeURIComponent(m.pool)}/members/${encodeURIComponent(m.name)}/weight`;
    if (await act("PUT", path, { weight }, `weight ${weight} for ${m.key}`)) setValue("");
  };
  return html`<form class="inline" onSubmit=${submit}>
    ${m.weight} <input class="weight" aria-label="new weight for ${m.key}" value=${value}
      placeholder="new" onInput=${(e) => setValue(e.target.value)} />
    <button type="submit">Set</button></form>`;
}

// drain --wait's progress, on the page: while a member is not ready (drained here or
// anywhere), what is still in flight on it, on every instance.
function DrainProgress({ m, fleet }) {
  if (m.admin_state === "ready") return null;
  let parts = [`${m.in_flight} here`];
  let total = m.in_flight;
  let allDrained = m.admin_state !== "ready";
  if (fleet && fleet.instances) {
    parts = [];
    total = 0;
    for (const i of fleet.instances) {
      const v = (i.members || {})[m.key];
      if (!v) continue;
      total += v.in_flight || 0;
      allDrained = allDrained && v.admin !== "ready";
      parts.push(`${i.name} ${v.in_flight || 0}`);
    }
  }
  const text = allDrained && total === 0
    ? "✔ drained everywhere: safe to stop"
    : `◔ draining: ${total} in flight (${parts.join(", ")})`;
  return html`<div class="progress" data-progress=${m.key}>${text}</div>`;
}

function Actions({ target }) {
  return html`${["drain", "maint", "ready"].map((s) => html`<button
    data-action=${s} data-target=${target} onClick=${() => setState(target, s)}>${s[0].toUpperCase() + s.slice(1)}</button>`)}`;
}

function MemberRow({ m, fleet }) {
  const origins = Object.entries(m.admin_origins || {}).map(([o, s]) => `${o}: ${s}`).join(", ");
  const errors = m.errors || {};
  return html`<tr data-member=${m.key}>
    <td>${m.name}</td>
    <td class="health"><${Badge} table=${HEALTH} value=${m.ejected ? "down" : m.health}
        title=${m.ejected ? "ejected for errors" : ""} />${m.ejected ? " ejected" : ""}</td>
    <td class="admin"><${Badge} table=${ADMIN} value=${m.admin_state} />
        ${origins ? html` <span class="muted">${origins}</span>` : ""}</td>
    <td class="reason">${m.eligible ? "takes traffic" : html`<span class="state warn">✖ ${m.reason}</span>`}</td>
    <td><${Weight} m=${m} /></td>
    <td class="num in-flight">${m.in_flight}</td>
    <td class="num">${fmt(m.rps)}</td>
    <td class="num">${pct(errors["4xx"])}</td>
    <td class="num">${pct((errors["5xx"] || 0) + (errors.none || 0))}</td>
    <td class="num">${fmt(m.p50_ms)}</td>
    <td class="num">${fmt(m.p99_ms)}</td>
    <td><${Spark} values=${store.history[m.key] || []} label="requests a second, last five minutes, for ${m.key}" /></td>
    <td><${Actions} target=${m.key} /><${DrainProgress} m=${m} fleet=${fleet} /></td>
  </tr>`;
}

function Pools({ frame }) {
  const hosts = Object.fromEntries(frame.hosts.map((x) => [x.name, x]));
  return html`${frame.pools.map((pool) => {
    const byHost = {};
    for (const m of pool.members) (byHost[m.host] = byHost[m.host] || []).push(m);
    return html`<section class="pool" data-pool=${pool.name} key=${pool.name}>
      <h2>Pool ${pool.name} <span class="muted">${pool.algorithm}, ${pool.eligible} of ${pool.members.length} taking traffic</span>
        ${pool.unserved && pool.unserved.rps > 0
          ? html` <span class="disagree unserved">✖ answered with no member: ${fmt(pool.unserved.rps)} req/s</span>` : ""}</h2>
      <table>
        <tr><th>member</th><th>health</th><th>admin</th><th>traffic</th><th>weight</th>
          <th class="num">in flight</th><th class="num">req/s</th><th class="num">4xx</th>
          <th class="num">5xx+cut</th><th class="num">p50 ms</th><th class="num">p99 ms</th>
          <th>last 5 min</th><th></th></tr>
        ${Object.entries(byHost).map(([name, members]) => {
          const host = hosts[name] || { health: "unknown", admin_state: "ready", admin_origins: {} };
          const origins = Object.entries(host.admin_origins || {}).map(([o, s]) => `${o}: ${s}`).join(", ");
          return html`
            <tr class="host" data-host=${name}><td>host ${name}</td>
              <td><${Badge} table=${HEALTH} value=${host.health} /></td>
              <td><${Badge} table=${ADMIN} value=${host.admin_state} /> <span class="muted">${origins}</span></td>
              <td colspan="9" class="muted host-check">${host.address || ""}${host.check ? ", check: " + host.check : ", no check of its own"}</td>
              <td><${Actions} target=${"host:" + name} /></td></tr>
            ${members.map((m) => html`<${MemberRow} key=${m.key} m=${m} fleet=${frame.fleet} />`)}`;
        })}
      </table></section>`;
  })}`;
}

function Windows({ frame }) {
  const [target, setTarget] = useState("");
  const [inMinutes, setIn] = useState("0");
  const [minutes, setMinutes] = useState("30");
  const windows = frame.schedules || [];
  const now = frame.time;
  const end = Math.max(now + 3600, ...windows.map((w) => w.end));
  const span = end - now;
  const x = (t) => Math.min(100, Math.max(0, ((t - now) / span) * 100));
  const schedule = async (e) => {
    e.preventDefault();
    const start = now + parseFloat(inMinutes || "0") * 60;
    await act("POST", "/api/v1/schedules", {
      target, start, duration: `${parseFloat(minutes)}m`, reason: "from the dashboard",
    }, `window for ${target}`);
  };
  const targets = [...frame.pools.flatMap((p) => p.members.map((m) => m.key)),
                   ...frame.hosts.map((x) => "host:" + x.name)];
  return html`<section id="windows"><h2>Maintenance windows <span class="muted">from now to ${when(end)}</span></h2>
    <div class="timeline" role="img" aria-label="maintenance windows on a timeline">
      ${windows.map((w) => html`<div class="bar ${w.status !== "upcoming" ? "active" : ""}"
        style="left:${x(w.start - w.lead)}%;width:${Math.max(0.5, x(w.end) - x(w.start - w.lead))}%"
        title="${w.target}: ${w.status}, ${when(w.start)} to ${when(w.end)}">${w.target}</div>`)}
      <div class="now" title="now"></div>
    </div>
    <table><tr><th>id</th><th>target</th><th>status</th><th>starts</th><th>ends</th><th>reason</th><th></th></tr>
      ${windows.length === 0 ? html`<tr><td colspan="7" class="muted">none scheduled</td></tr>` : ""}
      ${windows.map((w) => html`<tr key=${w.id} data-window=${w.id}><td>${w.id}</td><td>${w.target}</td>
        <td>${w.status}</td><td>${when(w.start)}</td><td>${when(w.end)}</td><td>${w.reason}</td>
        <td><button onClick=${() => act("DELETE", `/api/v1/schedules/${encodeURIComponent(w.id)}`, undefined, `cancel window ${w.id}`)}>Cancel</button></td></tr>`)}
    </table>
    <form class="schedule" onSubmit=${schedule}>
      <label>target <select value=${target} onChange=${(e) => setTarget(e.target.value)}>
        <option value="">choose</option>
        ${targets.map((t) => html`<option value=${t}>${t}</option>`)}</select></label>
      <label>in <input class="weight" value=${inMinutes} onInput=${(e) => setIn(e.target.value)} /> min</label>
      <label>for <input class="weight" value=${minutes} onInput=${(e) => setMinutes(e.target.value)} /> min</label>
      <button type="submit">Schedule</button>
    </form></section>`;
}

function Changes({ frame }) {
  return html`<section id="changes"><h2>Recent state changes</h2><table>
    <tr><th>time</th><th>target</th><th>change</th><th>origin and reason</th></tr>
    ${frame.changes.length === 0 ? html`<tr><td colspan="4" class="muted">none yet</td></tr>` : ""}
    ${frame.changes.map((c, i) => html`<tr key=${i}><td>${clock(c.time)}</td><td>${c.target}</td>
      <td>${c.change}</td><td>${c.cause}</td></tr>`)}
  </table></section>`;
}

function Fleet({ frame }) {
  const fleet = frame.fleet;
  if (!fleet) return null;
  if (fleet.error) return html`<section id="fleet"><h2>Fleet</h2><p class="disagree">${fleet.error}</p></section>`;
  return html`<section id="fleet"><h2>Fleet <span class="muted">${fleet.prefix}: this is ${fleet.instance},
      ${fleet.connected ? "connected to etcd" : "NOT connected to etcd"}, revision ${fleet.applied}</span></h2>
    <table><tr><th>instance</th><th>admin API</th><th>version</th><th>config</th><th class="num">applied</th><th>etcd</th><th>members up</th></tr>
      ${fleet.instances.map((i) => {
        const views = Object.values(i.members || {});
        return html`<tr key=${i.name} data-instance=${i.name}><td>${i.name}</td><td>${i.admin || "–"}</td>
          <td>${i.version || "–"}</td><td>${(i.config_digest || "").slice(0, 12)}</td>
          <td class="num">${i.applied}</td><td>${i.connected ? "● connected" : "✖ cut off"}</td>
          <td>${views.filter((v) => v.health === "up").length} of ${views.length}</td></tr>`;
      })}</table>
    ${fleet.config_digests_differ ? html`<p class="disagree">✖ the instances' configs differ in their pools, hosts or windows</p>` : ""}
    ${Object.entries(fleet.disagreements).map(([member, seen]) => html`<p class="disagree">✖ ${member}: ${Object.entries(seen).map(([n, v]) => `${n} sees ${v}`).join(", ")}</p>`)}
    ${fleet.skipped_keys.map((k) => html`<p class="muted">skipped: ${k}</p>`)}
  </section>`;
}

function Workers({ frame }) {
  if (!frame.workers || frame.workers.length === 0) return null;
  return html`<section id="workers"><h2>Workers</h2><table>
    <tr><th>index</th><th>pid</th><th>ready</th><th>config</th></tr>
    ${frame.workers.map((w) => html`<tr key=${w.index}><td>${w.index}</td><td>${w.pid}</td>
      <td>${w.ready ? "● ready" : "✖ starting"}</td><td>${(w.digest || "").slice(0, 12)}</td></tr>`)}
  </table></section>`;
}

function App() {
  const [, redraw] = useState(0);
  useEffect(() => {
    const f = () => redraw((n) => n + 1);
    subscribers.add(f);
    return () => subscribers.delete(f);
  }, []);
  const frame = store.frame;
  if (!frame) {
    return html`<${Header} frame=${null} /><p id="waiting">Waiting for croupier's first frame&hellip;</p>`;
  }
  return html`<${Header} frame=${frame} />
    <${Pools} frame=${frame} />
    <${Windows} frame=${frame} />
    <${Changes} frame=${frame} />
    <${Fleet} frame=${frame} />
    <${Listeners} frame=${frame} />
    <${Workers} frame=${frame} />`;
}

render(html`<${App} />`, document.getElementById("app"));
connect();
