// Chains on the ncaas web page: submit a pipeline (YAML) on the ticked datasets, list the group's
// chains, show one as a grid of datasets x steps (each cell's state, its job, why it stopped).
// Uses app.js's helpers (api, el, $, state, showJob, selectedDatasets, updateSubmit).
"use strict";

const chainView = { id: null, timer: null };

function examplePipeline() {
  const names = state.analyses.map((a) => a.name);
  const first = names.includes("caliali-align") ? "caliali-align" : names[0] || "ANALYSIS";
  const second = names.find((n) => n !== first) || first;
  return [
    "name: my-chain",
    "steps:",
    `  - name: first`,
    `    analysis: ${first}`,
    "    config: {}",
    `  - name: second`,
    `    analysis: ${second}`,
    "    config: {}",
    "    input: {from: first, path: aligned}   # a file or folder under first's outputs/<dataset>/; omit path for all",
    "",
  ].join("\n");
}

function togglePipeline() {
  state.pipeline = $("#use-pipeline").checked;
  $("#pipeline-panel").hidden = !state.pipeline;
  $("#config-form").hidden = $("#config-heading").hidden = state.pipeline;
  $("#analysis").disabled = state.pipeline;
  if (state.pipeline && !$("#pipeline-yaml").value) $("#pipeline-yaml").value = examplePipeline();
  updateSubmit();
}

async function submitChain() {
  const chain = await api("/api/chains", { method: "POST",
    json: { pipeline_yaml: $("#pipeline-yaml").value, datasets: selectedDatasets() } });
  await loadChains();
  showChain(chain.id);
}

async function loadChains() {
  const chains = await api("/api/chains");
  $("#chains tbody").replaceChildren(...chains.map((c) => {
    const row = el("tr", { "data-chain": c.id },
      el("td", {}, el("code", { text: c.id })), el("td", { text: c.pipeline }),
      el("td", { text: c.steps.map((s) => s.name).join(" → ") }),
      el("td", {}, el("span", { class: `state ${c.state}`, text: c.state })),
      el("td", { text: new Date(c.created_ms).toLocaleString() }));
    row.addEventListener("click", () => showChain(c.id));
    return row;
  }));
  $("#chains-panel").hidden = !chains.length && !chainView.id;
}

function renderChain(chain) {
  $("#chain-id").textContent = chain.id;
  $("#chain-state").textContent = chain.state;
  $("#chain-state").className = `state ${chain.state}`;
  $("#chain-cause").textContent = chain.cause;
  const head = el("tr", {}, el("th", { text: "Dataset" }),
    ...chain.steps.map((s) => el("th", { text: `${s.name} (${s.analysis})` })));
  const rows = chain.datasets.map((d) => el("tr", { "data-dataset": d.dataset }, el("td", { text: d.input }),
    ...d.steps.map((c) => {
      const cell = el("td", { class: "cell" }, el("span", { class: `state ${c.state}`, text: c.state }));
      if (c.job) {
        const open = el("button", { class: "link", text: c.job, title: "show this step's job: logs, QC, certificate" });
        open.addEventListener("click", () => showJob(c.job));
        cell.append(" ", open);
      }
      if (c.reason && !["succeeded", "running", "queued"].includes(c.state)) {
        cell.append(el("div", { class: "reason error", text: c.reason }));
      }
      return cell;
    })));
  $("#chain-grid").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

async function showChain(id) {
  clearTimeout(chainView.timer);
  chainView.id = id;
  $("#chains-panel").hidden = false;
  $("#chain-detail").hidden = false;
  const tick = async () => {
    if (chainView.id !== id) return;
    const chain = await api(`/api/chains/${id}`);
    renderChain(chain);
    if (!chain.finished) chainView.timer = setTimeout(tick, 1000);
    else loadChains();
  };
  await tick();
  $("#chain-detail").scrollIntoView({ behavior: "smooth" });
}

window.addEventListener("DOMContentLoaded", () => {
  $("#use-pipeline").addEventListener("change", togglePipeline);
  $("#refresh-chains").addEventListener("click", loadChains);
});
