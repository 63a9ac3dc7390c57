// cad-node monitoring page: each model's local performance, shadow-vs-active comparison and
// model drift. Loaded after admin.js (both deferred), whose api(), table(), cell(), token()
// and say() it uses; it adds pages.monitoring. Figures are PNGs the API serves to a bearer
// token only, so each is fetched with the token and shown from a blob URL. Every value is
// written with textContent; the API gives UIDs, counts and figures only.
"use strict";

const PERIOD_DAYS = 90;
const monitoring = { wired: false, blobs: [] };

const isoDay = (d) => d.toISOString().slice(0, 10);
const number = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

/** "Sensitivity 0.83 (0.55-0.95), n = 12": a figure with its 95 % CI and the cases behind it. */
function estimateText(label, e) {
  if (!e) return `${label}: not measured`;
  if (e.value === null || e.value === undefined) return `${label} not defined, n = ${e.n}`;
  const ci = e.low === null || e.low === undefined ? "" : ` (${number(e.low)}-${number(e.high)})`;
  return `${label} ${number(e.value)}${ci}, n = ${e.n}`;
}

function tile(label, estimate, note) {
  const div = document.createElement("div");
  div.className = "tile";
  div.dataset.figure = label;
  const value = document.createElement("div");
  value.className = "tile-value";
  value.textContent = typeof estimate === "string" ? estimate : estimateText(label, estimate);
  div.appendChild(value);
  if (note) {
    const small = document.createElement("div");
    small.className = "muted";
    small.textContent = note;
    div.appendChild(small);
  }
  return div;
}

// The headline figures of a ModelPerformance's JSON, each a tile.
function performanceTiles(perf) {
  const tiles = [];
  const c = perf.counts;
  const rate = c.studies_read ? ` (${number((100 * c.abstained) / c.studies_read, 0)} %)` : "";
  tiles.push(tile("Studies", `Studies read ${c.studies_read}`,
    `abstained ${c.abstained}${rate}, reviewed ${c.reviewed}`));
  const d = perf.detection;
  if (d) {
    const counts = `TP ${d.true_positives}, FP ${d.false_positives}, FN ${d.false_negatives}`;
    tiles.push(tile("Sensitivity", d.sensitivity, `detection: ${counts}`),
      tile("PPV", d.ppv, "detection: agreed of the marks reviewed"),
      tile("False marks per study", d.false_marks_per_study, `${d.reviewed_studies} reviewed studies`));
  }
  const k = perf.classification;
  if (k) {
    const note = `${k.kind}: ${k.positives} positive, ${k.negatives} negative`;
    tiles.push(tile("AUC", k.auc, note),
      tile("Sensitivity at the operating point", k.sensitivity, note),
      tile("Specificity at the operating point", k.specificity, note));
  }
  const g = perf.grading;
  if (g) tiles.push(tile("Kappa", g.kappa, `quadratic weighted, ${g.cases} eyes graded`));
  $("monitoring-tiles").replaceChildren(...tiles);
}

function versionsTable(perf) {
  table("monitoring-versions", ["version", "weights sha256", "studies", "modes", "first", "last"],
    perf.versions || [], (row, v) => {
      for (const value of [v.model_version, `${v.weights_sha256.slice(0, 16)}…`, v.studies,
        (v.modes || []).join(", "), when(v.first_recorded), when(v.last_recorded)]) cell(row, value);
    });
}

function query(extra) {
  const q = new URLSearchParams(extra || {});
  q.set("since", $("monitoring-since").value);
  if ($("monitoring-until").value) q.set("until", $("monitoring-until").value);
  return q;
}

// A PNG of the API, fetched with the token, shown from a blob URL once it has loaded.
async function figureImage(model, name, params) {
  const response = await fetch(`/api/monitoring/${encodeURIComponent(model)}/figures/${encodeURIComponent(name)}.png?${params}`,
    { headers: { Authorization: `Bearer ${token()}` } });
  if (!response.ok) throw new Error(`figure ${name}: HTTP ${response.status}`);
  const url = URL.createObjectURL(await response.blob());
  monitoring.blobs.push(url);
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.alt = `${model}: ${name}`;
  img.dataset.figure = name;
  const caption = document.createElement("figcaption");
  caption.textContent = figureCaption(name);
  figure.append(img, caption);
  img.src = url;
  await img.decode();
  return figure;
}

const FIGURE_CAPTIONS = {
  roc: "ROC curve of the assessments with an outcome (AUC with DeLong's 95 % CI).",
  reliability: "Reliability: predicted probability against the observed frequency of positive outcomes.",
  confusion: "Confusion matrix at the model's operating point (rows: truth).",
  weekly: "Per ISO week: studies read, abstention rate, sensitivity and PPV where reviewed.",
  psi: "Model drift: each feature's weekly PSI against the baseline, with the warn and alert lines.",
  distribution: "its proportions per bin in the baseline and in the current window (a feature at warn or alert).",
};

function figureCaption(name) {
  const [kind, ...rest] = name.split("-");
  if (FIGURE_CAPTIONS[name]) return FIGURE_CAPTIONS[name];
  return rest.length && FIGURE_CAPTIONS[kind] ? `${rest.join("-")}: ${FIGURE_CAPTIONS[kind]}` : name;
}

async function figures(id, model, names, params) {
  const shown = await Promise.all(names.map((name) => figureImage(model, name, params)));
  $(id).replaceChildren(...shown);
}

function driftSection(drift) {
  const base = drift.baseline
    ? `baseline ${when(drift.baseline.start)} to ${when(drift.baseline.end)} (${drift.baseline.jobs} jobs)`
    : "no baseline yet";
  const current = `current ${when(drift.current.start)} to ${when(drift.current.end)} (${drift.current.jobs} jobs)`;
  $("drift-note").textContent = `Level ${drift.level}: ${base}; ${current}. PSI ≥ ${drift.psi_warn} warn, ` +
    `≥ ${drift.psi_alert} alert; fewer than ${drift.min_samples} in a window: too few, never an alert.`;
  table("drift-table", ["feature", "kind", "baseline n", "current n", "PSI", "level"], drift.features, (row, f) => {
    for (const v of [f.feature, f.input ? `input (${f.kind})` : `output (${f.kind})`, f.baseline_count,
      f.current_count, f.psi === null ? "–" : number(f.psi, 3)]) cell(row, v);
    const level = cell(row, f.level);
    level.className = f.level === "alert" ? "error" : f.level === "warn" ? "warn" : f.level === "ok" ? "ok" : "muted";
    row.dataset.feature = f.feature;
  });
}

const COMPARED = [
  ["Studies read", (p) => `${p.counts.studies_read}`],
  ["Sensitivity", (p) => (p.detection ? estimateText("", p.detection.sensitivity).trim() : "–")],
  ["PPV", (p) => (p.detection ? estimateText("", p.detection.ppv).trim() : "–")],
  ["False marks per study", (p) => (p.detection ? estimateText("", p.detection.false_marks_per_study).trim() : "–")],
  ["AUC", (p) => (p.classification ? estimateText("", p.classification.auc).trim() : "–")],
  ["Sensitivity at the operating point", (p) => (p.classification ? estimateText("", p.classification.sensitivity).trim() : "–")],
  ["Specificity at the operating point", (p) => (p.classification ? estimateText("", p.classification.specificity).trim() : "–")],
  ["Kappa", (p) => (p.grading ? estimateText("", p.grading.kappa).trim() : "–")],
];

async function compareSection(model, partners) {
  const section = $("monitoring-compare");
  section.hidden = !partners.length;
  if (!partners.length) return;
  const other = partners[0];
  const both = await api("GET", `/api/monitoring/${encodeURIComponent(model)}/compare?${query({ with: other })}`);
  $("compare-note").textContent = `${model} (${both.model.versions.map((v) => v.modes.join("/")).join(", ")}) and ` +
    `${other} on the ${(both.model.studies || []).length} studies both read in the period.`;
  const rows = COMPARED.map(([label, text]) => [label, text(both.model), text(both.with)])
    .filter(([, mine, theirs]) => mine !== "–" || theirs !== "–");
  table("compare-table", ["", model, other], rows, (row, values) => { for (const v of values) cell(row, v); });
}

function modelsTable(listing) {
  const headings = ["model", "versions", "mode", "studies", "abstained", "feedback", "model drift", "compared with"];
  table("monitoring-models", headings, listing.models, (row, m) => {
    const link = document.createElement("a");
    link.href = `/ui/monitoring?model=${encodeURIComponent(m.name)}`;
    link.textContent = m.name;
    cell(row, link);
    for (const v of [m.versions.map((v) => v.model_version).join(", "), m.mode, m.studies, m.abstentions,
      m.feedback]) cell(row, v);
    cell(row, m.drift_level).className = m.drift_level === "alert" ? "error" : m.drift_level === "warn" ? "warn" : "";
    cell(row, m.partners.join(", "));
  });
  const select = $("monitoring-model");
  const chosen = select.value || new URLSearchParams(location.search).get("model");
  select.replaceChildren(...listing.models.map((m) => new Option(m.name, m.name)));
  if (listing.models.some((m) => m.name === chosen)) select.value = chosen;
}

function wireChoice() {
  if (monitoring.wired) return;
  monitoring.wired = true;
  const since = new Date(Date.now() - PERIOD_DAYS * 86400000);
  $("monitoring-since").value = isoDay(since);
  $("monitoring-choice").addEventListener("submit", (event) => { event.preventDefault(); load(); });
  $("monitoring-model").addEventListener("change", () => load());
}

async function monitoringPage() {
  wireChoice();
  for (const url of monitoring.blobs.splice(0)) URL.revokeObjectURL(url);
  const listing = await api("GET", `/api/monitoring/models?${query()}`);
  modelsTable(listing);
  const model = $("monitoring-model").value;
  $("monitoring-view").hidden = !model;
  if (!model) { say("No model has outputs in the journal yet."); return; }
  const entry = listing.models.find((m) => m.name === model);
  const path = `/api/monitoring/${encodeURIComponent(model)}`;
  const params = query();
  const [perf, drift, names] = await Promise.all([api("GET", `${path}/performance?${params}`),
    api("GET", `${path}/drift`), api("GET", `${path}/figures?${params}`)]);
  $("monitoring-title").textContent = `${model}: local performance`;
  $("monitoring-period").textContent = `${perf.since.slice(0, 10)} to ${perf.until.slice(0, 10)} (until excluded); ` +
    "the newest job per study counts, and the newest verdict per finding.";
  performanceTiles(perf);
  versionsTable(perf);
  driftSection(drift);
  const until = $("monitoring-until").value ? ` --until ${$("monitoring-until").value}` : "";
  $("report-command").textContent =
    `cad-node report --model ${model} --since ${$("monitoring-since").value}${until} --out report-${model}`;
  await Promise.all([figures("performance-figures", model, names.performance, params),
    figures("drift-figures", model, names.drift, params), compareSection(model, entry.partners)]);
}

pages.monitoring = monitoringPage;
