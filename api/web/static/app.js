// TreeLoRA page: the JSON API for what changes (live job progress over SSE, uploads, predictions);
// the server renders everything else. No dependencies.
// With authentication on, the server answers a page asked for without a key with a form for one;
// the key is kept in localStorage and sent as a bearer header with every request, the page's own
// HTML included (fetched and swapped in). The live events are read with fetch, not EventSource
// (which cannot send a header), so the key never goes into a URL.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const TERMINAL = ["succeeded", "failed", "cancelled"];
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

const KEY = "treelora.api_key";

function authHeaders(headers = {}) {
  const key = localStorage.getItem(KEY);
  return key ? { ...headers, authorization: "Bearer " + key } : headers;
}

async function api(method, url, body) {
  const init = { method, headers: authHeaders({ accept: "application/json" }) };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  const resp = await fetch(url, init);
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401 && localStorage.getItem(KEY)) forgetKey();  // revoked meanwhile
  if (!resp.ok) {
    const err = (data && data.error) || { code: "http_" + resp.status, message: resp.statusText };
    throw Object.assign(new Error(err.message), { error: err });
  }
  return data;
}

function showAlert(box, message, { error = false, line, param } = {}) {
  box.hidden = false;
  box.className = "alert" + (error ? " error" : "");
  box.textContent = "";
  if (line !== undefined && line !== null) {
    box.append(el("span", { class: "err-line", "data-line": String(line) }, `${param ? param + ", " : ""}line ${line}:`));
  }
  // the service's message may start with the line already: say it once
  box.append(document.createTextNode(line !== undefined && line !== null ? message.replace(/^line \d+:\s*/, "") : message));
}

function fmtEta(s) {
  if (s === undefined || s === null) return "";
  s = Math.round(s);
  return s >= 60 ? `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}

// ---- a small line chart ------------------------------------------------------------------------
function niceTicks(lo, hi, n) {
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

function lineChart(svg, series, { xLabel = "", yFormat = (v) => v.toFixed(2) } = {}) {
  const vb = svg.viewBox.baseVal;
  const W = vb.width || 480, H = vb.height || 200;
  const m = { l: 42, r: 12, t: 26, b: 30 };
  svg.replaceChildren();
  const pts = series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
  if (!pts.length) {
    svg.append(el("svg:text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
    return;
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const pad = (y1 - y0) * 0.06;
  y0 -= pad; y1 += pad;
  const ticks = niceTicks(y0, y1, 4);
  const X = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);
  ticks.forEach((v) => {
    svg.append(el("svg:line", { class: "grid-line", x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }));
    svg.append(el("svg:text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end" }, yFormat(v)));
  });
  const xs = [...new Set(pts.map((p) => p[0]))].sort((a, b) => a - b);
  const every = Math.max(1, Math.ceil(xs.length / 8));
  xs.filter((_, i) => i % every === 0 || i === xs.length - 1).forEach((v) => {
    svg.append(el("svg:text", { x: X(v), y: H - m.b + 16, "text-anchor": "middle" }, String(v)));
  });
  if (xLabel) svg.append(el("svg:text", { x: W - m.r, y: H - 2, "text-anchor": "end" }, xLabel));
  let lx = m.l;
  series.forEach((s) => {
    const good = s.points.filter((p) => p[1] !== null && Number.isFinite(p[1]));
    if (good.length > 1) {
      const d = good.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
      svg.append(el("svg:path", { class: "series", d, stroke: s.color, "stroke-dasharray": s.dash || "" }));
    }
    if (good.length <= 40) {
      good.forEach((p) => {
        const c = el("svg:circle", { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: s.color });
        c.append(el("svg:title", {}, `${s.name}: ${yFormat(p[1])} at ${p[0]}`));
        svg.append(c);
      });
    }
    const g = el("svg:g", { class: "legend" });
    g.append(el("svg:rect", { x: lx, y: 8, width: 10, height: 10, rx: 2, fill: s.color }));
    const label = el("svg:text", { x: lx + 14, y: 17 }, s.name);
    g.append(label);
    svg.append(g);
    lx += 28 + (label.getComputedTextLength() || s.name.length * 6.4);
  });
}

// ---- index: create a stream --------------------------------------------------------------------
function initCreate() {
  const form = $("#create-stream");
  if (!form) return;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const box = $(".alert", form);
    const body = {
      name: f.get("name"),
      base_model: f.get("base_model"),
      strategy: f.get("strategy"),
      train: { epochs: Number(f.get("epochs") || 2) },
    };
    try {
      const s = await api("POST", "/v1/streams", body);
      location.href = "/streams/" + encodeURIComponent(s.name);
    } catch (err) {
      showAlert(box, err.message, { error: true });
    }
  });
}

// ---- the tree ----------------------------------------------------------------------------------
const state = { pathTask: "", pathNodes: null, watching: null, losses: {}, since: Date.now() };

function treeData() {
  const s = $("#tree-data");
  return s ? JSON.parse(s.textContent) : { similarity: {} };
}

function highlight(taskOrNodes) {
  const svg = $("#tree-svg");
  if (!svg) return;
  const nodes = $$(".node", svg);
  let on;
  if (Array.isArray(taskOrNodes)) on = new Set(taskOrNodes);
  else if (taskOrNodes) on = new Set(nodes.filter((n) => n.dataset.members.split(" ").includes(taskOrNodes)).map((n) => n.dataset.node));
  else on = null;
  svg.classList.toggle("selecting", !!on);
  nodes.forEach((n) => n.classList.toggle("on", !!on && on.has(n.dataset.node)));
  $$(".edge", svg).forEach((e) => e.classList.toggle("on", !!on && on.has(e.dataset.child)));
}

function nodeInfo(node) {
  const info = $("#tree-info");
  if (!info || !node) return;
  const members = node.dataset.members ? node.dataset.members.split(" ") : [];
  const sims = treeData().similarity || {};
  info.replaceChildren();
  const head = el("div");
  head.append(el("strong", {}, node.dataset.node), document.createTextNode(` · blocks ${node.dataset.lo}–${node.dataset.hi - 1} · `));
  head.append(document.createTextNode(members.length === 1 ? `task ${members[0]}` : `${members.length} tasks: ${members.slice(0, 10).join(", ")}${members.length > 10 ? ", …" : ""}`));
  info.append(head);
  // similarity: of the selected task (or the node's only task) to the others, strongest first
  const ref = state.pathTask || (members.length === 1 ? members[0] : "");
  const row = sims[ref];
  if (ref && row) {
    const ranked = Object.entries(row).sort((a, b) => b[1] - a[1]).slice(0, 6);
    if (ranked.length) {
      info.append(el("div", { class: "muted small" }, `similarity to ${ref}`));
      const grid = el("div", { class: "sims" });
      ranked.forEach(([t, v]) => {
        const bar = el("div", { class: "simbar", style: `width:${Math.max(2, Math.round(Math.max(0, v) * 100))}%` });
        grid.append(el("span", {}, t), bar, el("span", { class: "num" }, v.toFixed(2)));
      });
      info.append(grid);
    }
  }
}

function initTree() {
  const svg = $("#tree-svg");
  const select = $("#path-task");
  if (select) {
    if (state.pathTask && [...select.options].some((o) => o.value === state.pathTask)) select.value = state.pathTask;
    select.onchange = () => {
      state.pathTask = select.value;
      highlight(state.pathTask);
    };
  }
  if (!svg) return;
  highlight(state.pathNodes || state.pathTask);
  const show = (e) => nodeInfo(e.target.closest(".node"));
  svg.addEventListener("mouseover", show);
  svg.addEventListener("focusin", show);
  svg.addEventListener("click", (e) => {
    const node = e.target.closest(".node");
    if (!node) return;
    const members = node.dataset.members.split(" ").filter(Boolean);
    if (node.classList.contains("leaf") && members.length === 1) {
      state.pathTask = state.pathTask === members[0] ? "" : members[0];
      state.pathNodes = null;
      if (select) select.value = state.pathTask;
      highlight(state.pathTask);
      nodeInfo(node);
    }
  });
}

// ---- metrics chart -----------------------------------------------------------------------------
function initMetrics() {
  const svg = $("#metrics-chart");
  const data = $("#metrics-data");
  if (!svg || !data) return;
  const { x, series } = JSON.parse(data.textContent);
  const pts = (ys) => x.map((v, i) => [v, ys[i]]);
  lineChart(
    svg,
    [
      { name: "OP", color: "#2f5bd3", points: pts(series.op) },
      { name: "BWT", color: "#e8590c", points: pts(series.bwt) },
      { name: "Forgetting", color: "#12b886", points: pts(series.forgetting), dash: "5 3" },
    ],
    { xLabel: "tree version", yFormat: (v) => v.toFixed(0) },
  );
}

// ---- jobs: live progress, cancel, loss curves --------------------------------------------------
function jobLosses(id) {
  return (state.losses[id] = state.losses[id] || { live: [], epochTrain: [], val: [], loaded: false });
}

async function loadLosses(id) {
  const L = jobLosses(id);
  if (L.loaded) return L;
  let after = null;
  const epochTrain = [], val = [], steps = [];
  for (let i = 0; i < 50; i++) {
    const page = await api("GET", `/v1/jobs/${id}/events?limit=100${after !== null ? "&after=" + after : ""}`);
    for (const ev of page.data) {
      if (ev.type === "epoch.validated") {
        if (ev.data.val_loss != null) val.push([ev.data.step, ev.data.val_loss]);
        if (ev.data.train_loss !== undefined) epochTrain.push([ev.data.step, ev.data.train_loss]);
        if (Array.isArray(ev.data.train_steps)) steps.push(...ev.data.train_steps);
      }
      after = ev.id;
    }
    if (!page.has_more) break;
  }
  L.epochTrain = epochTrain;
  L.val = val;
  if (steps.length > L.live.length) L.live = steps; // the recorded per-step history, if the page saw less of it live
  L.loaded = true;
  return L;
}

function drawLosses(id) {
  const det = $(`details.curves[data-job="${id}"]`);
  if (!det || !det.open) return;
  const L = jobLosses(id);
  const series = [];
  if (L.live.length > 1) series.push({ name: "train (per step)", color: "#2f5bd3", points: L.live });
  if (L.epochTrain.length) series.push({ name: "train (epoch mean)", color: "#7d9df0", points: L.epochTrain, dash: "4 3" });
  series.push({ name: "validation", color: "#e8590c", points: L.val });
  lineChart($("svg", det), series, { xLabel: "step", yFormat: (v) => v.toFixed(2) });
}

function initJobs() {
  $$("details.curves").forEach((det) => {
    det.addEventListener("toggle", async () => {
      if (!det.open) return;
      try {
        await loadLosses(det.dataset.job);
      } catch (_) { /* drawn with what there is */ }
      drawLosses(det.dataset.job);
    });
    if (det.open) det.dispatchEvent(new Event("toggle"));
  });
  watchNext();
}

function applyProgress(li, p) {
  const pct = p.total ? Math.round((100 * p.step) / p.total) : p.state === "succeeded" ? 100 : 0;
  const bar = $(".bar", li);
  bar.setAttribute("aria-valuenow", String(pct));
  $("span", bar).style.width = pct + "%";
  li.dataset.state = p.state;
  const badge = $('[data-f="state"]', li);
  badge.textContent = p.state;
  badge.className = "badge " + p.state;
  $('[data-f="phase"]', li).textContent = p.phase || p.state;
  $('[data-f="steps"]', li).textContent = p.total ? `${p.step}/${p.total}` : "";
  $('[data-f="loss"]', li).textContent = typeof p.loss === "number" ? `loss ${p.loss.toFixed(3)}` : "";
  $('[data-f="eta"]', li).textContent = p.eta_s && !TERMINAL.includes(p.state) ? `ETA ${fmtEta(p.eta_s)}` : "";
}

// A Server-Sent Events stream read with fetch (EventSource cannot send the key's header): calls
// on(type, data) per event; reconnects with Last-Event-ID when the connection drops before the
// service ends the stream. close() stops it.
function eventStream(url, on) {
  const ctl = new AbortController();
  let lastId = null, done = false;
  const dispatch = (block) => {
    let type = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) type = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
      else if (line.startsWith("id:")) lastId = line.slice(3).trim();
    }
    if (data) on(type, data);
  };
  (async () => {
    while (!done) {
      try {
        const headers = authHeaders({ accept: "text/event-stream" });
        if (lastId !== null) headers["last-event-id"] = lastId;
        const resp = await fetch(url, { headers, signal: ctl.signal });
        if (!resp.ok || !resp.body) {
          if (resp.status === 401) forgetKey();
          if (resp.status >= 400 && resp.status < 500) return;  // gone or not ours: no point retrying
          throw new Error("status " + resp.status);
        }
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done: end } = await reader.read();
          if (end) break;
          buf += value.replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            dispatch(buf.slice(0, cut));
            buf = buf.slice(cut + 2);
          }
        }
        return;  // the service ended the stream: the job finished
      } catch (err) {
        if (ctl.signal.aborted) return;
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
  })();
  return { close: () => { done = true; ctl.abort(); } };
}

// Follow the oldest unfinished job (a stream trains its jobs one at a time, in order): one event
// stream open at a time, whatever the number of queued jobs.
function watchNext() {
  const open = $$(".job").filter((li) => !TERMINAL.includes(li.dataset.state));
  const li = open[open.length - 1];
  if (!li) return;
  const id = li.dataset.job;
  if (state.watching && state.watching.id === id) return;
  if (state.watching) state.watching.es.close();
  const handlers = {};
  const es = eventStream(`/v1/jobs/${id}/events`, (type, data) => handlers[type] && handlers[type](data));
  state.watching = { id, es };
  handlers.progress = (data) => {
    const p = JSON.parse(data);
    const cur = $(`.job[data-job="${id}"]`);
    if (cur) applyProgress(cur, p);
    const L = jobLosses(id);
    if (p.phase === "train" && typeof p.loss === "number" && (!L.live.length || L.live[L.live.length - 1][0] !== p.step)) {
      L.live.push([p.step, p.loss]);
      drawLosses(id);
    }
    if (TERMINAL.includes(p.state)) {
      es.close();
      state.watching = null;
      refresh();
    }
  };
  handlers["epoch.validated"] = (data) => {
    const ev = JSON.parse(data);
    const L = jobLosses(id);
    if (ev.data.val_loss != null && !L.val.some((v) => v[0] === ev.data.step)) L.val.push([ev.data.step, ev.data.val_loss]);
    if (ev.data.train_loss !== undefined && !L.epochTrain.some((v) => v[0] === ev.data.step)) L.epochTrain.push([ev.data.step, ev.data.train_loss]);
    drawLosses(id);
  };
}

document.addEventListener("click", async (e) => {
  const btn = e.target.closest("[data-cancel]");
  if (!btn) return;
  btn.disabled = true;
  try {
    const job = await api("POST", `/v1/jobs/${btn.dataset.cancel}/cancel`);
    const li = btn.closest(".job");
    applyProgress(li, { state: job.state, ...job.progress });
    if (job.cancel_requested && !TERMINAL.includes(job.state)) btn.textContent = "Cancelling…";
    else refresh();
  } catch (err) {
    btn.disabled = false;
    btn.title = err.message;
  }
});

// ---- re-render the server's sections after a change --------------------------------------------
let refreshing = null;
async function refresh() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const resp = await fetch(location.pathname, { headers: authHeaders({ accept: "text/html" }) });
      if (!resp.ok) return;
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const openCurves = $$("details.curves[open]").map((d) => d.dataset.job);
      const playTask = $("#play-task") && $("#play-task").value;
      for (const fresh of $$("[data-refresh][id]", doc)) {
        const cur = document.getElementById(fresh.id);
        if (cur) cur.replaceWith(document.importNode(fresh, true));
      }
      openCurves.forEach((id) => {
        const d = $(`details.curves[data-job="${id}"]`);
        if (d) d.open = true;
      });
      const sel = $("#play-task");
      if (sel && playTask && [...sel.options].some((o) => o.value === playTask)) sel.value = playTask;
      Object.values(state.losses).forEach((L) => (L.loaded = false));
      initTree();
      initMetrics();
      initJobs();
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

// Jobs started elsewhere (the CLI, another browser): look for them while nothing is followed.
function poll() {
  const head = $("#head[data-stream]");
  if (!head) return;
  setInterval(async () => {
    if (state.watching || document.hidden) return;
    try {
      const s = await api("GET", `/v1/streams/${encodeURIComponent(head.dataset.stream)}`);
      const cur = $("#head");
      if (String(s.tree_version) !== cur.dataset.version || (s.active_job_id || "") !== cur.dataset.active) refresh();
    } catch (_) { /* try again later */ }
  }, 5000);
}

// ---- upload ------------------------------------------------------------------------------------
function initUpload() {
  const form = $("#upload");
  if (!form) return;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const box = $(".alert", form);
    const btn = $("button[type=submit]", form);
    const f = new FormData(form);
    const evalFile = f.get("eval_file");
    if (!evalFile || !evalFile.size) f.delete("eval_file");
    btn.disabled = true;
    try {
      const out = await api("POST", `/v1/streams/${encodeURIComponent(form.dataset.stream)}/tasks`, f);
      showAlert(box, `Task ${out.task.name} accepted: ${out.task.n_train} training and ${out.task.n_eval} eval examples; job ${out.job.id} queued.`);
      form.reset();
      await refresh();
    } catch (err) {
      const x = err.error || {};
      showAlert(box, err.message, { error: true, line: x.line, param: x.param });
    } finally {
      btn.disabled = false;
    }
  });
}

// ---- playground --------------------------------------------------------------------------------
function initPlayground() {
  const form = $("#play");
  if (!form) return;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const box = $(".alert", form);
    const btn = $("button[type=submit]", form);
    const f = new FormData(form);
    box.hidden = true;
    btn.disabled = true;
    try {
      const out = await api("POST", `/v1/streams/${encodeURIComponent(form.dataset.stream)}/predict`, {
        inputs: [f.get("prompt")],
        task: f.get("task"),
        max_new_tokens: Number(f.get("max_new_tokens") || 16),
      });
      const p = out.predictions[0];
      $("#play-output").textContent = p.output === "" ? "(empty answer)" : p.output;
      $("#play-taskname").textContent = p.task || "–";
      $("#play-conf").textContent = p.confidence === null || p.confidence === undefined ? "– (task given)" : `${(100 * p.confidence).toFixed(1)}%`;
      $("#play-low").hidden = !p.low_confidence;
      const path = $("#play-path");
      path.replaceChildren();
      const nodes = new Set();
      (p.path || []).forEach((s) => {
        (s.adapters || []).forEach((a) => nodes.add(a));
        path.append(el("span", { class: "seg", title: `blocks ${s.lo}–${s.hi - 1}` }, `${s.lo}–${s.hi - 1}: ${(s.adapters || []).join(" + ")}`));
      });
      if (!nodes.size) path.textContent = "the base model alone";
      $("#play-version").textContent = "v" + out.tree_version;
      $("#play-result").hidden = false;
      state.pathNodes = [...nodes];
      state.pathTask = "";
      const sel = $("#path-task");
      if (sel) sel.value = p.task && [...sel.options].some((o) => o.value === p.task) ? p.task : "";
      highlight(state.pathNodes);
    } catch (err) {
      showAlert(box, err.message, { error: true });
    } finally {
      btn.disabled = false;
    }
  });
}

// ---- the API key (authentication on) ---------------------------------------------------------
function forgetKey() {
  localStorage.removeItem(KEY);
  const btn = $("#forget-key");
  if (btn) btn.hidden = true;
}

// The server sent the key form (no key came with the request): load the page again with the key.
async function unlock() {
  const form = $("#key-form");
  const box = $(".alert", form);
  const resp = await fetch(location.pathname + location.search, { headers: authHeaders({ accept: "text/html" }) });
  if (resp.status === 401) {
    const data = await resp.json().catch(() => ({}));
    forgetKey();
    showAlert(box, (data.error && data.error.message) || "this key is not valid", { error: true });
    return false;
  }
  const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
  if ($("#key-form", doc)) return false;
  document.title = doc.title;
  $("main").replaceWith(document.importNode($("main", doc), true));
  return true;
}

function initKey() {
  const btn = $("#forget-key");
  if (btn) {
    btn.hidden = !localStorage.getItem(KEY);
    btn.onclick = () => { forgetKey(); location.reload(); };
  }
  const form = $("#key-form");
  if (!form) return Promise.resolve(true);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    localStorage.setItem(KEY, new FormData(form).get("key").trim());
    if (await unlock()) start();
  });
  return localStorage.getItem(KEY) ? unlock() : Promise.resolve(false);
}

function start() {
  const btn = $("#forget-key");
  if (btn) btn.hidden = !localStorage.getItem(KEY);
  initCreate();
  initTree();
  initMetrics();
  initJobs();
  initUpload();
  initPlayground();
  poll();
}

document.addEventListener("DOMContentLoaded", async () => {
  if (await initKey()) start();
});
