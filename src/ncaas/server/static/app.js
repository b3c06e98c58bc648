// The ncaas web page: plain JavaScript, no build step. Talks only to /api.
"use strict";

const CHUNK = 8 * 1024 * 1024;          // upload chunk: progress granularity and resume unit

const state = { token: null, pipeline: false, analyses: [], analysis: null, fields: [], uploading: 0, jobStream: null, jobId: null };

// ---------------------------------------------------------------- API
class ApiError extends Error {
  constructor(status, body) { super(body.error || `HTTP ${status}`); this.status = status; this.body = body; }
}

async function api(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const h = { Authorization: `Bearer ${state.token}`, ...headers };
  if (json !== undefined) { h["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const resp = await fetch(path, { method, headers: h, body, signal });
  if (!resp.ok) {
    let data = {};
    try { data = await resp.json(); } catch (_) { data = { error: `${resp.status} ${resp.statusText}` }; }
    throw new ApiError(resp.status, data);
  }
  if (resp.status === 204) return null;
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

// ---------------------------------------------------------------- sign in
async function signIn(token) {
  state.token = token;
  const me = await api("/api/me");
  sessionStorage.setItem("ncaas-token", token);
  $("#whoami").textContent = `${me.user} · group ${me.group}`;
  $("#whoami").hidden = $("#signout").hidden = false;
  $("#signin-panel").hidden = true;
  $("#app").hidden = false;
  await Promise.all([loadAnalyses(), loadInputs(), loadJobs(), loadChains(), loadCost()]);
}

function signOut() {
  sessionStorage.removeItem("ncaas-token");
  location.reload();
}

// ---------------------------------------------------------------- analyses + config form
async function loadAnalyses() {
  state.analyses = await api("/api/analyses");
  const select = $("#analysis");
  select.replaceChildren(...state.analyses.map((a) => el("option", { value: a.name, text: `${a.name} ${a.version}` })));
  if (!state.analyses.length) select.append(el("option", { text: "no analysis available to your group" }));
  pickAnalysis();
}

function pickAnalysis() {
  state.analysis = state.analyses.find((a) => a.name === $("#analysis").value) || null;
  $("#analysis-description").textContent = state.analysis ? state.analysis.description : "";
  renderForm();
}

function fieldKind(schema) {
  const t = Array.isArray(schema.type) ? schema.type.find((x) => x !== "null") : schema.type;
  if (schema.enum) return "enum";
  return t || "json";
}

function renderForm() {
  const form = $("#config-form");
  form.replaceChildren();
  state.fields = [];
  if (!state.analysis) return;
  const schema = state.analysis.config_schema || {};
  const props = schema.properties || {};
  const defaults = state.analysis.default_config || {};
  for (const [name, sub] of Object.entries(props)) {
    const kind = fieldKind(sub);
    const value = name in defaults ? defaults[name] : sub.default;
    let input;
    if (kind === "enum") {
      input = el("select", { id: `cfg-${name}`, name });
      for (const option of sub.enum) input.append(el("option", { value: JSON.stringify(option), text: String(option) }));
      if (value !== undefined) input.value = JSON.stringify(value);
    } else if (kind === "boolean") {
      input = el("input", { id: `cfg-${name}`, name, type: "checkbox" });
      input.checked = Boolean(value);
    } else if (kind === "integer" || kind === "number") {
      input = el("input", { id: `cfg-${name}`, name, type: "text", inputmode: "decimal" });
      if (value !== undefined && value !== null) input.value = String(value);
    } else if (kind === "string") {
      input = el("input", { id: `cfg-${name}`, name, type: "text" });
      if (value !== undefined && value !== null) input.value = value;
    } else {
      input = el("textarea", { id: `cfg-${name}`, name, rows: "2", cols: "40" });
      if (value !== undefined) input.value = JSON.stringify(value);
    }
    const help = [sub.description, describeAllowed(sub), value !== undefined ? `default: ${JSON.stringify(value)}` : ""]
      .filter(Boolean).join(" · ");
    const problem = el("small", { class: "problem", id: `problem-${name}` });
    form.append(el("label", { for: `cfg-${name}`, text: name }),
      el("div", { class: "field" }, input, el("small", { text: help }), problem));
    const field = { name, schema: sub, kind, input, problem, required: (schema.required || []).includes(name) };
    state.fields.push(field);
    input.addEventListener("input", () => { checkField(field); updateSubmit(); });
    input.addEventListener("change", () => { checkField(field); updateSubmit(); });
  }
  if (!state.fields.length) form.append(el("span", { class: "muted", text: "this analysis has no options" }));
  updateSubmit();
}

function describeAllowed(s) {
  const parts = [];
  if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
  if (s.exclusiveMinimum !== undefined) parts.push(`> ${s.exclusiveMinimum}`);
  if (s.maximum !== undefined) parts.push(`≤ ${s.maximum}`);
  if (s.exclusiveMaximum !== undefined) parts.push(`< ${s.exclusiveMaximum}`);
  const t = fieldKind(s);
  return parts.length ? `${t} ${parts.join(", ")}` : (t === "enum" ? "" : t);
}

// Returns [value, problem]; value is undefined when the field is left empty.
function readField(f) {
  const s = f.schema, raw = f.input.value;
  if (f.kind === "boolean") return [f.input.checked, null];
  if (f.kind === "enum") return [JSON.parse(raw), null];
  if (raw.trim() === "") return [undefined, f.required ? "required" : null];
  let v;
  if (f.kind === "integer" || f.kind === "number") {
    v = Number(raw);
    if (!Number.isFinite(v)) return [raw, `"${raw}" is not a number`];
    if (f.kind === "integer" && !Number.isInteger(v)) return [raw, `must be a whole number`];
  } else if (f.kind === "string") {
    v = raw;
    if (s.minLength !== undefined && v.length < s.minLength) return [v, `at least ${s.minLength} characters`];
    if (s.maxLength !== undefined && v.length > s.maxLength) return [v, `at most ${s.maxLength} characters`];
    if (s.pattern && !new RegExp(s.pattern, "u").test(v)) return [v, `must match ${s.pattern}`];
    return [v, null];
  } else {
    try { v = JSON.parse(raw); } catch (_) { return [raw, "not valid JSON"]; }
    if (f.kind === "array") {
      if (!Array.isArray(v)) return [v, "must be a list, e.g. [1, 2]"];
      if (s.minItems !== undefined && v.length < s.minItems) return [v, `needs at least ${s.minItems} item(s)`];
      if (s.maxItems !== undefined && v.length > s.maxItems) return [v, `takes at most ${s.maxItems} item(s)`];
      const items = s.items || {};
      for (const item of v) {
        if (items.enum && !items.enum.some((e) => JSON.stringify(e) === JSON.stringify(item))) {
          return [v, `${JSON.stringify(item)} is not one of ${items.enum.map((e) => JSON.stringify(e)).join(", ")}`];
        }
        if ((items.type === "integer" && !Number.isInteger(item)) || (items.type === "number" && typeof item !== "number")) {
          return [v, `${JSON.stringify(item)} is not ${items.type === "integer" ? "a whole number" : "a number"}`];
        }
        if (items.minimum !== undefined && item < items.minimum) return [v, `${item} must be ≥ ${items.minimum}`];
      }
    }
    if (f.kind === "object" && (typeof v !== "object" || Array.isArray(v) || v === null)) return [v, "must be an object"];
    return [v, null];
  }
  if (s.minimum !== undefined && v < s.minimum) return [v, `must be ≥ ${s.minimum}`];
  if (s.exclusiveMinimum !== undefined && v <= s.exclusiveMinimum) return [v, `must be > ${s.exclusiveMinimum}`];
  if (s.maximum !== undefined && v > s.maximum) return [v, `must be ≤ ${s.maximum}`];
  if (s.exclusiveMaximum !== undefined && v >= s.exclusiveMaximum) return [v, `must be < ${s.exclusiveMaximum}`];
  return [v, null];
}

function checkField(f) {
  const [, problem] = readField(f);
  f.problem.textContent = problem || "";
  f.input.classList.toggle("invalid", Boolean(problem));
  f.input.setAttribute("aria-invalid", problem ? "true" : "false");
  return !problem;
}

function collectConfig() {
  const config = {};
  for (const f of state.fields) {
    const [value] = readField(f);
    if (value !== undefined) config[f.name] = value;
  }
  return config;
}

function selectedDatasets() {
  return [...document.querySelectorAll("#inputs input:checked")].map((c) => c.value);
}

function updateSubmit() {
  const invalid = state.pipeline ? [] : state.fields.filter((f) => !checkField(f)).map((f) => f.name);
  const datasets = selectedDatasets();
  let hint = "";
  if (!state.analysis && !state.pipeline) hint = "pick an analysis";
  else if (invalid.length) hint = `fix: ${invalid.join(", ")}`;
  else if (state.uploading) hint = "waiting for uploads to finish";
  else if (!datasets.length) hint = "drop or tick at least one dataset";
  else hint = `${datasets.length} dataset(s) selected`;
  $("#submit-hint").textContent = hint;
  $("#submit").disabled = (!state.analysis && !state.pipeline) || invalid.length > 0 || state.uploading > 0 || !datasets.length;
  showEstimate(datasets);
}

// ---------------------------------------------------------------- cost
const money = (v, c = "USD") => `${Math.abs(v) >= 1 || v === 0 ? v.toFixed(2) : v.toFixed(6)} ${c}`;

function breakdown(cost) {
  const lost = cost.lost ? `, of which lost to interruptions ${money(cost.lost, cost.currency)}` : "";
  return `${money(cost.total, cost.currency)} at the ${cost.option} price: compute ${money(cost.compute, cost.currency)}` +
    `${lost}, transfer ${money(cost.transfer, cost.currency)}, workflow ${money(cost.workflow, cost.currency)}` +
    (cost.final ? "" : " (so far)");
}

let estimateAsked = 0;
async function showEstimate(datasets) {
  const asked = ++estimateAsked;
  if (!state.analysis || !datasets.length) { $("#estimate").textContent = ""; return; }
  try {
    const found = await api("/api/estimate", { method: "POST",
      json: { analysis: state.analysis.name, datasets, pricing: $("#pricing").value } });
    if (asked === estimateAsked) $("#estimate").textContent = found.message;
  } catch (err) {
    if (asked === estimateAsked) $("#estimate").textContent = `no estimate: ${err.message}`;
  }
}

function renderCost(job) {
  const lines = [];
  if (job.cost) lines.push(`Cost: ${breakdown(job.cost)}`);
  if (job.estimate) lines.push(`Estimated: ${money(job.estimate.cost, job.estimate.currency)} ` +
    `(range ${money(job.estimate.cost_low, job.estimate.currency)} – ${money(job.estimate.cost_high, job.estimate.currency)})`);
  if (job.original_cost) lines.push(`The original job ${job.rerun_of} cost: ${breakdown(job.original_cost)}`);
  $("#job-cost").replaceChildren(...lines.map((l) => el("div", { text: l })));
}

async function loadCost() {
  const [{ budget }, rows] = await Promise.all([api("/api/budget"), api("/api/cost?by=period,analysis,user")]);
  if (budget) {
    const share = budget.amount ? (budget.spent / budget.amount) * 100 : 100;
    $("#budget").textContent = `Budget for ${budget.label}: spent ${money(budget.spent, budget.currency)} of ` +
      `${money(budget.amount, budget.currency)} (${share.toFixed(1)} %); ${money(budget.committed, budget.currency)} ` +
      `expected by running jobs; ${money(Math.max(budget.left, 0), budget.currency)} left.`;
  } else {
    $("#budget").textContent = "Your group has no budget set.";
  }
  $("#spend tbody").replaceChildren(...rows.map((r) => el("tr", {},
    ...[r.period, r.analysis, r.user, String(r.jobs)].map((t) => el("td", { text: t })),
    ...["compute", "transfer", "workflow", "total"].map((k) => el("td", { text: money(r[k], r.currency) })))));
}

async function drawTco(form) {
  $("#tco-error").textContent = "";
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (v !== "") params.append(k, v);
  try {
    const resp = await fetch(`/api/tco.png?${params}`, { headers: { Authorization: `Bearer ${state.token}` } });
    if (!resp.ok) throw new Error((await resp.json()).error || `HTTP ${resp.status}`);
    const img = $("#tco-figure");
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(await resp.blob());
    img.hidden = false;
  } catch (err) {
    $("#tco-error").textContent = err.message;
  }
}

// ---------------------------------------------------------------- datasets
async function loadInputs(autoTick = []) {
  const ticked = new Set([...selectedDatasets(), ...autoTick]);
  const inputs = await api("/api/inputs");
  $("#inputs").replaceChildren(...inputs.map((d) => {
    const box = el("input", { type: "checkbox", value: d.name, id: `in-${d.name}` });
    box.checked = ticked.has(d.name);
    box.addEventListener("change", updateSubmit);
    const what = d.kind === "folder" ? `folder, ${d.files} files, ${formatBytes(d.size)}`
      : d.kind === "file" ? `file, ${formatBytes(d.size)}` : d.kind;  // a link, FIFO, device: named, not read
    return el("li", {}, box, el("label", { for: `in-${d.name}`, text: ` ${d.name} (${what})` }));
  }));
  if (!inputs.length) $("#inputs").append(el("li", { class: "muted", text: "no datasets yet" }));
  updateSubmit();
}

function formatBytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// Hidden files and system clutter found inside a folder (.DS_Store, ._movie.avi, .git/, Thumbs.db,
// desktop.ini, __MACOSX/) are left out of its upload, and a left-out folder is not entered; a file
// or folder picked or dropped by name is always taken. The same rule as ncaas/localfolder.py.
const CLUTTER = new Set(["__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"]);
const isHidden = (name) => name.startsWith(".") || CLUTTER.has(name.toLowerCase());

const listing = (paths) => paths.slice(0, 5).join(", ") + (paths.length > 5 ? ` and ${paths.length - 5} more` : "");

// "left out 2 hidden files: .DS_Store, ._movie.avi" (the CLI words it the same); folders end with "/".
function leftOutNote(paths) {
  const folders = paths.filter((p) => p.endsWith("/")).length;
  const counts = [[paths.length - folders, "file"], [folders, "folder"]].filter(([n]) => n)
    .map(([n, word]) => `${n} hidden ${word}${n > 1 ? "s" : ""}`);
  return `left out ${counts.join(" and ")}: ${listing(paths)}`;
}

// The left-out paths under dataset `name`, relative to it and sorted.
const leftOutOf = (name, leftOut) => leftOut.filter((p) => p.startsWith(`${name}/`)).map((p) => p.slice(name.length + 1)).sort();

// Dropped folders are walked through FileSystemEntry trees. readEntries hands a folder's
// entries out in batches (Chromium: 100 at a time) and an empty batch at the end, so it is
// called until it returns nothing.
function readAll(reader, where) {
  return new Promise((resolve, reject) => {
    const out = [];
    const next = () => reader.readEntries((batch) => {
      if (!batch.length) resolve(out); else { out.push(...batch); next(); }
    }, (err) => reject(new Error(`cannot list ${where}: ${err.message}`)));
    next();
  });
}

async function walk(entry, prefix, out, leftOut) {
  const path = prefix + entry.name;
  if (entry.isFile) {
    const file = await new Promise((res, rej) => entry.file(res, (err) => rej(new Error(`cannot read ${path}: ${err.message}`))));
    out.push({ file, path });
  } else if (entry.isDirectory) {
    const children = await readAll(entry.createReader(), `${path}/`);
    for (const child of children) {
      if (isHidden(child.name)) leftOut.push(`${path}/${child.name}${child.isDirectory ? "/" : ""}`);
    }
    await Promise.all(children.filter((child) => !isHidden(child.name)).map((child) => walk(child, `${path}/`, out, leftOut)));
  }
}

// What a drop holds, as {files: [{file, path}], folders: [names], leftOut: [paths]}: a dropped
// folder keeps its name and inner layout (exp1/day1/movie.tif), so it lands as one dataset.
// A DataTransfer is readable only while its drop event is dispatched, so every entry is taken
// before the first await.
async function filesFromDrop(dataTransfer) {
  const taken = dataTransfer.items
    ? [...dataTransfer.items].filter((i) => i.kind === "file")
      .map((i) => (i.webkitGetAsEntry && i.webkitGetAsEntry()) || i.getAsFile()).filter(Boolean)
    : [...dataTransfer.files];
  const files = [], folders = [], leftOut = [];
  for (const item of taken) {
    if (item instanceof File) { files.push({ file: item, path: item.name }); continue; }
    if (item.isDirectory) folders.push(item.name);
    await walk(item, "", files, leftOut);
  }
  files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));   // go up in path order
  return { files, folders, leftOut };
}

// The same for the pickers; a picked folder's files come with their paths (exp1/day1/movie.tif),
// and a hidden folder among them is left out with everything under it.
function filesFromPicker(input) {
  const files = [], folders = new Set(), leftOut = new Set();
  for (const file of input.files) {
    const path = file.webkitRelativePath || file.name;
    const parts = path.split("/");
    if (parts.length > 1) folders.add(parts[0]);
    const hidden = parts.findIndex((part, i) => i > 0 && isHidden(part));
    if (hidden < 0) files.push({ file, path });
    else leftOut.add(parts.slice(0, hidden + 1).join("/") + (hidden < parts.length - 1 ? "/" : ""));
  }
  return { files, folders: [...folders], leftOut: [...leftOut] };
}

// Uploads what was dropped or picked; a folder holding no file, or only hidden ones, is reported instead.
function offer({ files, folders, leftOut }) {
  for (const name of folders) {
    if (files.some((f) => f.path.startsWith(`${name}/`))) continue;
    const hidden = leftOutOf(name, leftOut);
    const why = hidden.length ? `holds only hidden files (${listing(hidden)}): nothing to upload` : "empty folder: nothing to upload";
    $("#uploads").append(el("li", { "data-dataset": name }, el("span", { text: `${name}/` }), el("span"), el("span", { class: "error", text: why })));
  }
  if (files.length) uploadDatasets(files, leftOut);
}

// One dataset = one top-level name: a dropped file, or a dropped folder with everything under it.
async function uploadDatasets(items, leftOut = []) {
  const groups = new Map();
  for (const item of items) {
    const top = item.path.split("/")[0];
    if (!groups.has(top)) groups.set(top, []);
    groups.get(top).push(item);
  }
  state.uploading += groups.size;
  updateSubmit();
  const done = [];
  await Promise.all([...groups].map(async ([name, files]) => {
    const total = files.reduce((s, f) => s + f.file.size, 0);
    const bar = el("progress", { max: String(Math.max(total, 1)), value: "0" });
    const label = el("span", { class: "muted", text: "waiting" });
    const row = el("li", { "data-dataset": name }, el("span", { text: files.length > 1 ? `${name}/ (${files.length} files)` : name }), bar, label);
    const hidden = leftOutOf(name, leftOut);
    if (hidden.length) row.append(el("small", { class: "left-out muted", text: leftOutNote(hidden) }));
    $("#uploads").append(row);
    let sent = 0;
    try {
      for (const f of files) {
        await uploadFile(f.file, f.path, (n) => {
          bar.value = sent + n;
          label.textContent = `${Math.floor((100 * (sent + n)) / Math.max(total, 1))}% of ${formatBytes(total)}`;
        });
        sent += f.file.size;
      }
      bar.value = Math.max(total, 1);
      label.textContent = `uploaded ${formatBytes(total)} ✓`;
      row.classList.add("done");
      done.push(name);
    } catch (err) {
      label.textContent = `failed: ${err.message}`;
      label.className = "error";
    } finally {
      state.uploading -= 1;
    }
  }));
  await loadInputs(done);
}

// CRC-32C (Castagnoli), the checksum the server checks uploads with: slicing-by-8 tables
// (about 0.7 GB/s in V8).
const CRC32C_TABLES = (() => {
  const t = Array.from({ length: 8 }, () => new Uint32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[0][n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) for (let k = 1; k < 8; k++) t[k][n] = (t[k - 1][n] >>> 8) ^ t[0][t[k - 1][n] & 0xff];
  return t;
})();

function crc32c(bytes, crc = 0) {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = CRC32C_TABLES;
  let c = ~crc >>> 0, i = 0;
  const n8 = bytes.length - (bytes.length % 8);
  for (; i < n8; i += 8) {
    const a = (bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24)) ^ c;
    c = t7[a & 0xff] ^ t6[(a >>> 8) & 0xff] ^ t5[(a >>> 16) & 0xff] ^ t4[a >>> 24] ^
        t3[bytes[i + 4]] ^ t2[bytes[i + 5]] ^ t1[bytes[i + 6]] ^ t0[bytes[i + 7]];
  }
  for (; i < bytes.length; i++) c = t0[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// The CRC-32C of A followed by B from crc(A), crc(B) and B's length (zlib's crc32_combine).
function multModP(a, b) {
  let m = 0x80000000, p = 0;
  for (;;) {
    if (a & m) { p ^= b; if ((a & (m - 1)) === 0) break; }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ 0x82f63b78 : b >>> 1;
  }
  return p >>> 0;
}
const X2N = (() => { const t = new Uint32Array(32); let p = 0x40000000; t[0] = p; for (let n = 1; n < 32; n++) t[n] = p = multModP(p, p); return t; })();
function crc32cCombine(crcA, crcB, lengthB) {
  let p = 0x80000000, k = 3;
  for (let n = lengthB; n > 0; n = Math.floor(n / 2), k++) if (n % 2) p = multModP(X2N[k & 31], p);
  return (multModP(p, crcA) ^ crcB) >>> 0;
}
const hex8 = (c) => c.toString(16).padStart(8, "0");

async function blobCrc(blob) {
  return crc32c(new Uint8Array(await blob.arrayBuffer()));
}

// The CRC-32C of the file's first `end` bytes, read a chunk at a time (to resume an upload).
async function prefixCrc(file, end) {
  let crc = 0;
  for (let at = 0; at < end; at += CHUNK) {
    const stop = Math.min(at + CHUNK, end);
    crc = crc32cCombine(crc, await blobCrc(file.slice(at, stop)), stop - at);
  }
  return crc;
}

function putChunk(id, offset, blob, crc, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `/api/uploads/${id}?offset=${offset}`);
    xhr.setRequestHeader("Authorization", `Bearer ${state.token}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("X-Chunk-CRC32C", hex8(crc));   // a chunk corrupted on the way is refused
    xhr.upload.onprogress = (e) => onProgress(e.loaded);
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body); else reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new Error("network error"));
    xhr.send(blob);
  });
}

async function uploadFile(file, path, onProgress) {
  // Resume this browser's unfinished upload of the same file (same name, size, date) if the server has it.
  const key = `ncaas-upload:${path}:${file.size}:${file.lastModified}`;
  const known = localStorage.getItem(key);
  let up = known ? (await api("/api/uploads")).find((u) => u.id === known) : null;
  if (!up) {
    up = await api("/api/uploads", { method: "POST", json: { path, size: file.size, overwrite: true } });
    localStorage.setItem(key, up.id);
  }
  let offset = up.offset, failures = 0;
  let ahead = null;   // the next chunk's CRC-32C, computed while this chunk is sent
  let whole = { at: 0, crc: 0 };   // the CRC-32C of the file's first `at` bytes, checked on completion
  onProgress(offset);
  while (offset < file.size) {
    const end = Math.min(offset + CHUNK, file.size);
    const blob = file.slice(offset, end);
    try {
      if (whole.at !== offset) whole = { at: offset, crc: await prefixCrc(file, offset) };   // resumed
      const crc = ahead && ahead.offset === offset ? await ahead.crc : await blobCrc(blob);
      ahead = null;
      if (end < file.size) {
        ahead = { offset: end, crc: blobCrc(file.slice(end, Math.min(end + CHUNK, file.size))) };
        ahead.crc.catch(() => {});   // a failure shows when that chunk is sent
      }
      const res = await putChunk(up.id, offset, blob, crc, (n) => onProgress(offset + n));
      if (res.offset === end) whole = { at: end, crc: crc32cCombine(whole.crc, crc, end - offset) };
      offset = res.offset;
      failures = 0;
    } catch (err) {
      ahead = null;
      // 507: no room on the server's disk or in the group's quota; sending again would not help
      if (err.status && err.status !== 409 && err.status !== 422 && (err.status < 500 || err.status === 507)) throw err;
      if (++failures > 5) throw err;
      await new Promise((r) => setTimeout(r, 500 * failures));
      offset = (await api(`/api/uploads/${up.id}`)).offset;   // where to go on from
    }
    onProgress(offset);
  }
  try {
    if (whole.at !== file.size) whole = { at: file.size, crc: await prefixCrc(file, file.size) };
    return await api(`/api/uploads/${up.id}/complete`, { method: "POST", json: { crc32c: hex8(whole.crc) } });
  } finally {
    localStorage.removeItem(key);
  }
}

// ---------------------------------------------------------------- submit
async function submit() {
  $("#submit-error").textContent = "";
  $("#submit").disabled = true;
  try {
    if (state.pipeline) return await submitChain();  // chains.js
    const name = `web-${new Date().toISOString().replace(/[:.]/g, "-")}.json`;
    await api(`/api/configs/${name}?analysis=${encodeURIComponent(state.analysis.name)}`,
      { method: "PUT", json: collectConfig() });
    const job = await api("/api/jobs", { method: "POST",
      json: { analysis: state.analysis.name, datasets: selectedDatasets(), configname: name, pricing: $("#pricing").value } });
    await loadJobs();
    showJob(job.id);
  } catch (err) {
    const problems = err.body && err.body.problems;
    $("#submit-error").textContent = problems ? problems.join("\n") : err.message;
  } finally {
    updateSubmit();
  }
}

// ---------------------------------------------------------------- jobs
async function loadJobs() {
  const jobs = await api("/api/jobs");
  $("#jobs tbody").replaceChildren(...jobs.map((j) => {
    const row = el("tr", { "data-job": j.id },
      el("td", {}, el("code", { text: j.id })), el("td", { text: j.analysis || "" }),
      el("td", {}, el("span", { class: `state ${j.state}`, text: j.state })),
      el("td", { text: String(j.datasets) }), el("td", { text: new Date(j.created_ms).toLocaleString() }));
    row.addEventListener("click", () => showJob(j.id));
    return row;
  }));
}

async function ticketed(jobId) {
  const { ticket } = await api("/api/tickets", { method: "POST", json: { path: `/api/jobs/${jobId}/` } });
  return (path) => `/api/jobs/${jobId}/${path}${path.includes("?") ? "&" : "?"}ticket=${encodeURIComponent(ticket)}`;
}

function renderTasks(job) {
  $("#job-state").textContent = job.state;
  $("#job-state").className = `state ${job.state}`;
  $("#job-error").textContent = job.error || "";
  $("#cancel-job").disabled = job.finished;
  renderCost(job);
  for (const t of job.tasks) {
    let box = document.querySelector(`.task[data-dataset="${CSS.escape(t.dataset)}"]`);
    if (!box) {
      box = el("div", { class: "task", "data-dataset": t.dataset },
        // an escaped key (x%5F%5Fy.npy) is shown as the dataset's name in inputs/
        el("header", {}, el("strong", { text: t.dataset.includes("%") ? t.input : t.dataset, title: t.dataset }),
          el("span", { class: "state" }),
          el("progress", { max: "1", value: "0" }), el("span", { class: "message muted" }), el("span", { class: "cost muted" })),
        el("pre", { class: "log" }));
      $("#tasks").append(box);
    }
    const st = box.querySelector(".state");
    st.textContent = t.state;
    st.className = `state ${t.state}`;
    box.querySelector("progress").value = t.progress ?? 0;
    const message = box.querySelector(".message");
    message.textContent = t.message || "";  // a failed task's message is why it failed (the API's cause)
    message.className = ["failed", "timed_out"].includes(t.state) ? "message error" : "message muted";
    box.querySelector(".cost").textContent = t.cost ? money(t.cost.total, t.cost.currency) : "";
    // a succeeded dataset of an analysis declaring review opens in the review page (review.js)
    const reviewable = state.analyses.find((a) => a.name === job.analysis)?.review;
    if (reviewable && t.state === "succeeded" && job.finished && !box.querySelector("a.review")) {
      const href = `/review?job=${encodeURIComponent(job.id)}&dataset=${encodeURIComponent(t.dataset)}`;
      box.querySelector("header").append(el("a", { class: "review button", href, text: "Review" }));
    }
  }
}

function appendLog(dataset, text) {
  const box = document.querySelector(`.task[data-dataset="${CSS.escape(dataset)}"] pre`);
  if (!box) return;
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  box.textContent += text;
  if (atBottom) box.scrollTop = box.scrollHeight;
}

async function renderQc(jobId) {
  const url = await ticketed(jobId);
  const images = await api(`/api/jobs/${jobId}/qc`);
  // each part of the path is encoded: a dataset key or an output name may hold '%', '#' or '?'
  const fileUrl = (path) => url(`files/${path.split("/").map(encodeURIComponent).join("/")}`);
  $("#qc").replaceChildren(...images.map((img) => el("figure", {},
    el("a", { href: fileUrl(img.path), target: "_blank" }, el("img", { src: fileUrl(img.path), alt: img.path })),
    el("figcaption", { text: img.path }))));
  if (!images.length) $("#qc").append(el("span", { class: "muted", text: "none" }));
}

// A rerun's verdict, file by file, against the job it reruns (computed once by the server, then kept).
const VERDICT_LABELS = {
  identical: "identical", within_tolerance: "equal within tolerance", different: "different",
  missing: "missing", extra: "extra", not_compared: "could not compare",
};

async function renderVerdict(job) {
  const panel = $("#verdict-panel");
  panel.hidden = !(job.rerun_of && job.finished);
  if (panel.hidden) return;
  $("#verdict-original").textContent = job.rerun_of;
  $("#verdict tbody").replaceChildren();
  $("#verdict-summary").className = "muted";
  $("#verdict-summary").textContent = "comparing outputs ...";
  let verdict;
  try {
    verdict = await api(`/api/jobs/${job.id}/verdict`);
  } catch (err) {
    $("#verdict-summary").className = "error";
    $("#verdict-summary").textContent = err.message;
    return;
  }
  $("#verdict tbody").replaceChildren(...verdict.rows.map((r) => el("tr", { class: `verdict ${r.verdict}` },
    el("td", {}, el("code", { text: r.path })), el("td", { text: VERDICT_LABELS[r.verdict] || r.verdict }),
    el("td", { text: r.kind || "" }), el("td", { text: r.detail || "" }))));
  $("#verdict-summary").className = verdict.ok ? "ok" : "error";
  $("#verdict-summary").textContent = verdict.summary;
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
async function followJob(jobId, signal) {
  const resp = await fetch(`/api/jobs/${jobId}/events`, { headers: { Authorization: `Bearer ${state.token}` }, signal });
  if (!resp.ok) throw new ApiError(resp.status, await resp.json());
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      if (!data) continue;
      const payload = JSON.parse(data);
      if (event === "status") renderTasks(payload);
      else if (event === "log") appendLog(payload.dataset, payload.text);
      else if (event === "end") { renderTasks(payload); await finishJob(jobId); }
    }
  }
}

async function finishJob(jobId) {
  await Promise.all([renderQc(jobId), loadJobs(), loadCost(),
    api(`/api/jobs/${jobId}`).then((job) => { renderCost(job); return renderVerdict(job); })]);
  const url = await ticketed(jobId);
  $("#download-zip").href = url("results.zip");
  $("#download-cert").href = url("certificate?format=txt");
}

async function showJob(jobId) {
  if (state.jobStream) state.jobStream.abort();
  state.jobStream = new AbortController();
  state.jobId = jobId;
  $("#job-detail").hidden = false;
  $("#job-id").textContent = jobId;
  $("#tasks").replaceChildren();
  $("#qc").replaceChildren(el("span", { class: "muted", text: "none yet" }));
  $("#verdict-panel").hidden = true;
  const url = await ticketed(jobId);
  $("#download-zip").href = url("results.zip");
  $("#download-cert").href = url("certificate?format=txt");
  renderTasks(await api(`/api/jobs/${jobId}`));
  $("#job-detail").scrollIntoView({ behavior: "smooth" });
  followJob(jobId, state.jobStream.signal).catch((err) => {
    if (err.name !== "AbortError") $("#job-error").textContent = `live updates stopped: ${err.message}`;
  });
}

// ---------------------------------------------------------------- wiring
window.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("#signin-error").textContent = "";
    try { await signIn($("#token").value.trim()); } catch (err) { $("#signin-error").textContent = err.message; }
  });
  $("#signout").addEventListener("click", signOut);
  $("#analysis").addEventListener("change", pickAnalysis);
  $("#submit").addEventListener("click", submit);
  $("#refresh-jobs").addEventListener("click", loadJobs);
  $("#refresh-cost").addEventListener("click", loadCost);
  $("#pricing").addEventListener("change", () => showEstimate(selectedDatasets()));
  $("#tco-form").addEventListener("submit", (e) => { e.preventDefault(); drawTco(e.target); });
  $("#cancel-job").addEventListener("click", async () => {
    try { await api(`/api/jobs/${state.jobId}/cancel`, { method: "POST" }); }
    catch (err) { $("#job-error").textContent = err.message; }
  });
  const zone = $("#dropzone");
  const carriesFiles = (e) => Boolean(e.dataTransfer) && [...e.dataTransfer.types].includes("Files");
  // Files dropped beside the zone are refused, so the browser never opens them in place of the page.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (e) => {
      if (!carriesFiles(e) || zone.contains(e.target)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "none";
    });
  }
  zone.addEventListener("dragover", (e) => { e.preventDefault(); e.dataTransfer.dropEffect = "copy"; zone.classList.add("over"); });
  zone.addEventListener("dragleave", (e) => { if (!zone.contains(e.relatedTarget)) zone.classList.remove("over"); });
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    state.uploading += 1;   // no submitting while the dropped folders are read
    updateSubmit();
    let dropped;
    try {
      dropped = await filesFromDrop(e.dataTransfer);
    } catch (err) {
      $("#uploads").append(el("li", {}, el("span", { text: "dropped items" }), el("span"), el("span", { class: "error", text: err.message })));
      return;
    } finally {
      state.uploading -= 1;
      updateSubmit();
    }
    offer(dropped);
  });
  for (const id of ["#pick-files", "#pick-folder"]) {
    $(id).addEventListener("change", (e) => { offer(filesFromPicker(e.target)); e.target.value = ""; });
  }
  const saved = sessionStorage.getItem("ncaas-token");
  if (saved) signIn(saved).catch(() => sessionStorage.removeItem("ncaas-token"));
});
