// The review page: a job's neurons over a background image, one neuron's footprint and traces,
// the table, and the decisions (saved on the server as they are made). Plain JavaScript, no build step.
"use strict";

const params = new URLSearchParams(location.search);
const R = {
  token: sessionStorage.getItem("ncaas-token"),
  job: params.get("job"), dataset: params.get("dataset"),
  info: null, rows: [], contours: [], paths: [], status: {}, version: -1, undoable: null,
  selected: [], current: null, order: [], sort: { key: "id", dir: 1 }, image: null, hover: null,
  curation: null, timings: { open: performance.now() },
};
window.reviewState = R;  // read by the tests and the benchmark (timings, selection)

class ApiError extends Error {
  constructor(status, body) { super(body.error || `HTTP ${status}`); this.status = status; }
}

const base = () => `/api/jobs/${encodeURIComponent(R.job)}/review/${encodeURIComponent(R.dataset)}`;

async function api(path, { method = "GET", json, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${R.token}` };
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const resp = await fetch(path, { method, headers, body });
  if (!resp.ok) {
    let data = {};
    try { data = await resp.json(); } catch (_) { data = { error: `${resp.status} ${resp.statusText}` }; }
    throw new ApiError(resp.status, data);
  }
  return raw ? resp : resp.json();
}

function showError(err) { $("#review-error").textContent = err ? err.message || String(err) : ""; }

// ---------------------------------------------------------------- the field: image and contours
const COLOURS = { accepted: "#22c55e", rejected: "#ef4444", merged: "#22d3ee", unreviewed: "#facc15" };

async function loadImage(value) {
  const [kind, session] = JSON.parse(value);
  const q = new URLSearchParams({ kind });
  if (session !== null) q.set("session", session);
  const resp = await api(`${base()}/image.png?${q}`, { raw: true });
  const url = URL.createObjectURL(await resp.blob());
  const img = new Image();
  await new Promise((ok, bad) => { img.onload = ok; img.onerror = bad; img.src = url; });
  if (R.image) URL.revokeObjectURL(R.image.src);
  R.image = img;
  drawField();
}

function buildPaths() {
  R.paths = R.contours.map((pieces) => {
    const p = new Path2D();
    for (const piece of pieces) {
      piece.forEach(([x, y], i) => (i ? p.lineTo(x + 0.5, y + 0.5) : p.moveTo(x + 0.5, y + 0.5)));
      p.closePath();
    }
    return p;
  });
}

function drawField() {
  const canvas = $("#field");
  const [h, w] = R.info.dims;
  const scale = Math.max(1, Math.floor(600 / Math.max(h, w)));
  if (canvas.width !== w * scale) { canvas.width = w * scale; canvas.height = h * scale; }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (R.image) ctx.drawImage(R.image, 0, 0, canvas.width, canvas.height);
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  const chosen = new Set(R.selected);
  R.paths.forEach((p, k) => {
    if (chosen.has(k)) return;
    ctx.lineWidth = (k === R.hover ? 2 : 1) / scale;
    ctx.strokeStyle = COLOURS[R.status[k] || "unreviewed"];
    ctx.stroke(p);
  });
  for (const k of chosen) {
    ctx.lineWidth = 3 / scale;
    ctx.strokeStyle = "#fff";
    ctx.stroke(R.paths[k]);
    ctx.lineWidth = 1.2 / scale;
    ctx.strokeStyle = COLOURS[R.status[k] || "unreviewed"];
    ctx.stroke(R.paths[k]);
  }
  if (R.hover !== null) {  // the hovered neuron's id and SNR, written beside it on the image
    const [cy, cx] = R.rows[R.hover].center;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.font = "bold 13px system-ui, sans-serif";
    const text = hoverText(R.hover);
    const x = Math.min(cx * scale + 10, canvas.width - ctx.measureText(text).width - 6), y = Math.max(cy * scale - 10, 16);
    ctx.fillStyle = "rgba(0, 0, 0, .75)";
    ctx.fillRect(x - 4, y - 13, ctx.measureText(text).width + 8, 18);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x, y);
  }
  R.scale = scale;
  if (!R.timings.contours) R.timings.contours = performance.now();
  document.body.dataset.contours = String(R.paths.length);
}

const hoverText = (k) => `#${k} · SNR ${R.rows[k].snr ?? "?"}`;

function neuronAt(event) {
  const canvas = $("#field");
  const rect = canvas.getBoundingClientRect();
  const x = ((event.clientX - rect.left) * canvas.width) / rect.width / R.scale;
  const y = ((event.clientY - rect.top) * canvas.height) / rect.height / R.scale;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  let best = null, bestD = Infinity;
  R.paths.forEach((p, k) => {
    if (!ctx.isPointInPath(p, x + 0.5, y + 0.5)) return;
    const [cy, cx] = R.rows[k].center;
    const d = (cy - y) ** 2 + (cx - x) ** 2;
    if (d < bestD) { best = k; bestD = d; }
  });
  return best;
}

// ---------------------------------------------------------------- one neuron
async function select(k, { add = false } = {}) {
  if (k === null || k === undefined) return;
  if (add) {
    R.selected = R.selected.includes(k) ? R.selected.filter((j) => j !== k) : [...R.selected, k];
    if (!R.selected.length) return;
    k = R.selected[R.selected.length - 1];
  } else {
    R.selected = [k];
  }
  R.current = k;
  const started = performance.now();
  drawField();
  markRows();
  document.body.dataset.selected = R.selected.join(",");
  const [detail, footprint] = await Promise.all([
    api(`${base()}/neurons/${k}?points=${Math.min(2000, $("#traces").width * 2)}`),
    api(`${base()}/neurons/${k}/footprint.png`, { raw: true }).then((r) => r.blob()),
  ]);
  if (R.current !== k) return;  // another neuron was chosen meanwhile
  const img = $("#footprint");
  if (R.footprintUrl) URL.revokeObjectURL(R.footprintUrl);
  R.footprintUrl = URL.createObjectURL(footprint);
  img.src = R.footprintUrl;
  await img.decode().catch(() => {});
  showNeuron(detail);
  R.timings.neuron = performance.now() - started;
  document.body.dataset.shown = String(k);
}

function showNeuron(n) {
  const sessions = n.session_ids;
  $("#neuron-title").textContent = `Neuron ${n.id}` + (R.selected.length > 1 ? ` (selected: ${R.selected.join(", ")})` : "");
  $("#neuron-facts").replaceChildren(
    el("div", { text: `status: ${R.status[n.id] || "unreviewed"}` }),
    el("div", { text: `SNR ${n.snr ?? "?"} · ${n.size} px · centre (${n.center.map((v) => v.toFixed(1)).join(", ")})` }),
    el("div", { text: "activity: " + sessions.map((s, i) => `${s} ${n.activity[i]}`).join(" · ") }),
  );
  $("#neighbours").replaceChildren(...n.neighbours.map((m) => el("li", {},
    el("button", { class: "link", "data-neuron": String(m.id), text: `#${m.id}` }),
    el("span", { class: "muted", text: ` ${m.distance} px, overlap ${m.overlap} ${R.status[m.id] ? "· " + R.status[m.id] : ""}` }))));
  drawTraces(n);
}

function drawTraces(n) {
  const canvas = $("#traces");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, T = R.info.n_frames;
  ctx.clearRect(0, 0, W, H);
  const lanes = [["C_raw", "#9aa7b4"], ["C", "#2563eb"], ["S", "#dc2626"]].filter(([name]) => n.traces[name]);
  const laneH = H / Math.max(1, lanes.length);
  const px = (frame) => (frame / Math.max(1, T)) * W;
  lanes.forEach(([name, colour], lane) => {
    const t = n.traces[name];
    const values = t.max.concat(t.min).filter((v) => v !== null);
    const lo = Math.min(...values), hi = Math.max(...values);
    const y = (v) => lane * laneH + laneH - 4 - ((v - lo) / (hi - lo || 1)) * (laneH - 8);
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.lineWidth = 1;
    const step = t.frames.length > 1 ? t.frames[1] - t.frames[0] : 1;
    ctx.beginPath();
    t.frames.forEach((f, i) => {  // the min/max envelope: a one-frame spike still reaches its bin's max
      if (t.max[i] === null) return;
      const x = px(f + step / 2);
      ctx.lineTo(x, y(t.max[i]));
      ctx.lineTo(x, y(t.min[i]));
    });
    ctx.stroke();
    ctx.fillStyle = "#1d232a";
    ctx.fillText(name, 4, lane * laneH + 12);
  });
  ctx.setLineDash([4, 4]);
  ctx.strokeStyle = "#1d232a";
  n.session_bounds.slice(1, -1).forEach((b) => {
    ctx.beginPath(); ctx.moveTo(px(b), 0); ctx.lineTo(px(b), H); ctx.stroke();
  });
  ctx.setLineDash([]);
  n.session_ids.forEach((s, i) => { ctx.fillStyle = "#66707a"; ctx.fillText(s, px(n.session_bounds[i]) + 4, H - 4); });
}

// ---------------------------------------------------------------- the table
function columns() {
  const cols = [["id", "id"], ["snr", "SNR"], ["size", "size (px)"]];
  R.info.session_ids.forEach((s, i) => cols.push([`activity.${i}`, `activity ${s}`]));
  cols.push(["status", "status"]);
  return cols;
}

function value(row, key) {
  if (key === "status") return R.status[row.id] || "unreviewed";
  if (key.startsWith("activity.")) return row.activity[Number(key.split(".")[1])];
  return row[key];
}

function renderTable() {
  const cols = columns();
  $("#table-head").replaceChildren(...cols.map(([key, label]) => el("th", { "data-key": key,
    text: label + (R.sort.key === key ? (R.sort.dir > 0 ? " ▲" : " ▼") : "") })));
  const { key, dir } = R.sort;
  R.order = R.rows.map((r) => r.id).sort((a, b) => {
    const va = value(R.rows[a], key), vb = value(R.rows[b], key);
    return (va < vb ? -1 : va > vb ? 1 : a - b) * dir;
  });
  $("#table-body").replaceChildren(...R.order.map((k) => {
    const row = R.rows[k];
    const status = R.status[k] || "unreviewed";
    return el("tr", { "data-neuron": String(k) }, ...cols.map(([c]) => {
      const v = value(row, c);
      return el("td", { class: c === "status" ? `status-${status}` : "", text: v === null ? "?" : String(v) });
    }));
  }));
  markRows();
  counts();
}

function markRows() {
  const chosen = new Set(R.selected);
  for (const tr of document.querySelectorAll("#table-body tr")) {
    const on = chosen.has(Number(tr.dataset.neuron));
    tr.classList.toggle("selected", on);
    if (on && Number(tr.dataset.neuron) === R.current) showRow(tr);
  }
}

// Scroll the table (only the table, never the page) so that the current row is in view.
function showRow(tr) {
  const box = $("#table-box");
  const head = $("#table-head").offsetHeight;
  if (tr.offsetTop - head < box.scrollTop || tr.offsetTop + tr.offsetHeight > box.scrollTop + box.clientHeight) {
    box.scrollTop = tr.offsetTop - head - box.clientHeight / 3;
  }
}

function counts() {
  const n = { accepted: 0, rejected: 0, merged: 0 };
  Object.values(R.status).forEach((s) => { n[s] += 1; });
  $("#counts").textContent = `${R.rows.length} neurons: ${n.accepted} accepted, ${n.rejected} rejected, ` +
    `${n.merged} in merges, ${R.rows.length - n.accepted - n.rejected - n.merged} unreviewed · decisions v${R.version}`;
}

// ---------------------------------------------------------------- decisions
function takeDecisions(d) {
  if (d.unchanged) return;
  R.version = d.version;
  R.undoable = d.undoable;
  R.status = Object.fromEntries(Object.entries(d.status).map(([k, v]) => [Number(k), v]));
  document.body.dataset.version = String(d.version);
  renderTable();
  drawField();
}

async function decide(action) {
  showError(null);
  const json = action === "undo" ? { action, undoes: R.undoable } : { action, neurons: R.selected };
  if (action !== "undo" && !R.selected.length) return showError(new Error("select a neuron first"));
  try {
    takeDecisions(await api(`${base()}/decisions`, { method: "POST", json }));
    if (action === "reject" || action === "accept") next(1);
  } catch (err) {
    showError(err);
    if (err.status === 409) poll();
  }
}

async function poll() {
  try {
    takeDecisions(await api(`${base()}/decisions?since=${Math.max(0, R.version)}`));
  } catch (err) { showError(err); }
}

function next(delta) {
  if (!R.order.length) return;
  const at = R.order.indexOf(R.current);
  const k = R.order[Math.min(R.order.length - 1, Math.max(0, at < 0 ? 0 : at + delta))];
  select(k).catch(showError);
}

// ---------------------------------------------------------------- finish: the curation job
async function finish() {
  showError(null);
  $("#finish").disabled = true;  // one curation at a time from this page
  try {
    const job = await api(`${base()}/finish`, { method: "POST" });
    R.curation = job.id;
    $("#curation").hidden = false;
    $("#curation-link").textContent = job.id;
    $("#curation-link").href = "/";
    watchCuration();
  } catch (err) { showError(err); $("#finish").disabled = false; }
}

async function watchCuration() {
  const job = await api(`/api/jobs/${encodeURIComponent(R.curation)}`);
  const task = job.tasks[0] || {};
  $("#curation-state").textContent = job.state;
  $("#curation-state").className = `state ${job.state}`;
  $("#curation-progress").value = task.progress ?? 0;
  $("#curation-message").textContent = task.message || job.error || "";
  document.body.dataset.curation = job.finished ? job.state : "running";
  if (!job.finished) setTimeout(() => watchCuration().catch(showError), 1000);
  else $("#finish").disabled = false;
  if (job.finished && job.state === "succeeded") {
    const url = `/review?job=${encodeURIComponent(job.id)}&dataset=${encodeURIComponent(R.dataset)}`;
    $("#curation-message").replaceChildren("Curated result ready: ", el("a", { href: url, text: "review it" }));
  }
}

// ---------------------------------------------------------------- wiring
function wire() {
  const field = $("#field");
  field.addEventListener("mousemove", (e) => {
    const k = neuronAt(e);
    if (k === R.hover) return;
    R.hover = k;
    $("#hover").textContent = k === null ? "" : hoverText(k);
    drawField();
  });
  field.addEventListener("mouseleave", () => { R.hover = null; $("#hover").textContent = ""; drawField(); });
  field.addEventListener("click", (e) => {
    const k = neuronAt(e);
    if (k !== null) select(k, { add: e.shiftKey || e.ctrlKey || e.metaKey }).catch(showError);
  });
  $("#table-body").addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr) select(Number(tr.dataset.neuron), { add: e.shiftKey || e.ctrlKey || e.metaKey }).catch(showError);
  });
  $("#table-head").addEventListener("click", (e) => {
    const key = e.target.closest("th")?.dataset.key;
    if (!key) return;
    R.sort = { key, dir: R.sort.key === key ? -R.sort.dir : key === "id" ? 1 : -1 };
    renderTable();
  });
  $("#neighbours").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-neuron]");
    if (b) select(Number(b.dataset.neuron), { add: e.shiftKey }).catch(showError);
  });
  $("#background").addEventListener("change", (e) => loadImage(e.target.value).catch(showError));
  for (const action of ["accept", "reject", "merge", "undo"]) $(`#${action}`).addEventListener("click", () => decide(action));
  $("#finish").addEventListener("click", finish);
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
    const keys = { j: () => next(1), ArrowDown: () => next(1), ArrowRight: () => next(1),
      k: () => next(-1), ArrowUp: () => next(-1), ArrowLeft: () => next(-1),
      a: () => decide("accept"), r: () => decide("reject"), m: () => decide("merge"), u: () => decide("undo") };
    if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
  });
}

async function start() {
  if (!R.job || !R.dataset) return showError(new Error("open this page from a finished job's Review link (it names the job and dataset)"));
  if (!R.token) {
    $("#review-signin").hidden = false;
    $("#review-signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      R.token = $("#review-token").value.trim();
      sessionStorage.setItem("ncaas-token", R.token);
      $("#review-signin").hidden = true;
      start();
    });
    return;
  }
  try {
    R.info = await api(base());
    $("#review-title").textContent = `review neurons · job ${R.info.job} · ${R.info.dataset} (${R.info.analysis})`;
    const [rows, contours, decisions] = await Promise.all([
      api(`${base()}/neurons`), api(`${base()}/contours`), api(`${base()}/decisions`)]);
    R.rows = rows; R.contours = contours;
    buildPaths();
    $("#review-app").hidden = false;
    $("#background").replaceChildren(...R.info.images.map((i) => el("option",
      { value: JSON.stringify([i.kind, i.session]), text: `${i.kind} · ${i.session ?? "all sessions (aligned)"}` })));
    wire();
    takeDecisions(decisions);
    drawField();
    if (R.info.images.length) await loadImage($("#background").value);
    R.timings.image = performance.now();
    document.body.dataset.ready = "1";
    setInterval(poll, 2000);  // other reviewers' decisions
  } catch (err) { showError(err); }
}

start();
