// cad-node admin page: vanilla JS, no build step. Data comes from the API with the bearer
// token kept in sessionStorage; every value is written with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "cad-node-token";
const $ = (id) => document.getElementById(id);
let me = null;

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(method, path, body) {
  const options = { method, headers: { Authorization: `Bearer ${token()}` } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!response.ok) {
    const detail = data && data.detail !== undefined ? data.detail : text;
    const error = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    error.status = response.status;
    throw error;
  }
  return data;
}

function say(text, isError) {
  const message = $("message");
  message.textContent = text;
  message.className = isError ? "message error" : "message";
}

function cell(row, value) {
  const td = document.createElement("td");
  if (value instanceof Node) td.appendChild(value); else td.textContent = value ?? "";
  row.appendChild(td);
  return td;
}

function button(label, onClick, enabled = true) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.disabled = !enabled;
  b.addEventListener("click", async () => {
    try { await onClick(); } catch (e) { say(e.message, true); }
  });
  return b;
}

function table(id, headings, rows, render) {
  const t = $(id);
  t.replaceChildren();
  const head = t.insertRow();
  for (const h of headings) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  for (const item of rows) render(t.insertRow(), item);
  if (!rows.length) {
    const empty = t.insertRow();
    const td = cell(empty, "none");
    td.colSpan = headings.length;
    td.className = "muted";
  }
}

function counts(id, values) {
  table(id, ["state", "count"], Object.entries(values), (row, [state, count]) => {
    cell(row, state);
    cell(row, count);
  });
}

// Every time the API gives is UTC: shown as "2026-12-06 14:20:00 UTC".
const when = (iso) => (iso ? `${iso.replace("T", " ").slice(0, 19)} UTC` : "");
const isAdmin = () => me && me.role === "admin";

function jobRow(row, job, actions) {
  for (const v of [job.id, job.state, priorityText(job), job.rule_name, job.model_name, seriesLink(job.series_instance_uid),
    when(job.created_at), job.finding_count, abstentionText(job), (job.warnings || []).join("; "), job.error]) cell(row, v);
  if (actions) {
    const span = document.createElement("span");
    span.append(
      button("Retry", async () => { await api("POST", `/api/jobs/${job.id}/retry`); say(`job ${job.id} queued`); await load(); },
        isAdmin() && ["failed", "cancelled"].includes(job.state)),
      button("Cancel", async () => { await api("POST", `/api/jobs/${job.id}/cancel`); say(`job ${job.id} cancelled`); await load(); },
        isAdmin() && job.state === "queued"));
    cell(row, span);
  }
}
// The job's clinical priority class as queued, and whether a long wait promoted it.
function priorityText(job) {
  return `${job.priority_class || "routine"}${job.promoted_at ? ` (promoted ${when(job.promoted_at)})` : ""}`;
}
const JOB_HEADINGS = ["id", "state", "priority", "rule", "model", "series", "created", "findings", "abstention", "warnings", "error"];

// Why the model did not assess the job's input (or, under run_anyway, the findings' caveat).
function abstentionText(job) {
  const a = job.abstention;
  if (!a || !a.reason) return "";
  const choice = job.on_out_of_domain || "report";
  const what = choice === "run_anyway" ? "assessed anyway" : (choice === "skip" ? "not assessed, nothing sent" : "not assessed");
  return `${what} (${a.reason}): ${(a.details || []).join("; ")}`;
}

// Storage Commitment (destinations with commitment: true): committed, or awaited since the request.
function commitmentState(d) {
  if (d.committed_at) return `committed ${when(d.committed_at)}`;
  if (d.state !== "sent") return "";
  if (!d.commitment_requested_at) return "to be asked";
  return `awaited since ${when(d.commitment_requested_at)} (request ${d.commitment_attempts})`;
}
function deliveryRow(row, d, actions) {
  for (const v of [d.id, d.state, d.destination, d.job_id ? jobLink(d.job_id) : "", d.sop_instance_uid,
    d.attempts, when(d.next_attempt_at), commitmentState(d), d.last_error]) cell(row, v);
  if (actions) cell(row, button("Retry now", async () => {
    await api("POST", `/api/deliveries/${d.id}/retry`); say(`delivery ${d.id} will be sent now`); await load();
  }, isAdmin() && ["failed", "pending"].includes(d.state)));
}
const DELIVERY_HEADINGS = ["id", "state", "destination", "job", "object", "attempts", "next attempt", "commitment", "error"];

// Links into the study and series browser (studies page, browser.js).
function seriesLink(uid) {
  const a = document.createElement("a");
  a.href = `/ui/studies?series=${encodeURIComponent(uid)}`;
  a.textContent = uid;
  return a;
}
function jobLink(id) {
  const a = document.createElement("a");
  a.href = `/ui/studies?job=${encodeURIComponent(id)}`;
  a.textContent = `job ${id}`;
  return a;
}

// -- pages -------------------------------------------------------------------------------

const pages = {
  async dashboard() {
    const s = await api("GET", "/api/summary");
    counts("series-counts", s.series);
    counts("job-counts", s.jobs);
    counts("delivery-counts", s.deliveries);
    table("last-jobs", JOB_HEADINGS, s.last_jobs, (r, j) => jobRow(r, j, false));
    table("failed-jobs", JOB_HEADINGS, s.failed_jobs, (r, j) => jobRow(r, j, false));
    table("abstentions", ["model", "reason", "on_out_of_domain", "jobs"], s.abstentions || [], (r, c) => {
      for (const v of [c.model_name, c.reason, c.on_out_of_domain, c.count]) cell(r, v);
    });
    table("failed-deliveries", DELIVERY_HEADINGS, s.failed_deliveries, (r, d) => deliveryRow(r, d, false));
    await dashboardHealth(); // dashboard.js: destination health, pending deliveries, disk
  },
  async jobs() { await listing("jobs", "/api/jobs", [...JOB_HEADINGS, ""], (r, j) => jobRow(r, j, true)); },
  async deliveries() {
    await listing("deliveries", "/api/deliveries", [...DELIVERY_HEADINGS, ""], (r, d) => deliveryRow(r, d, true));
  },
  async models() {
    const models = await api("GET", "/api/models");
    const headings = ["name", "version", "family", "format", "task", "labels", "modality", "device", "sha256", "use",
      "validated domain", "OOD score", "mode"];
    table("models", headings, models, (row, m) => {
      for (const v of [m.name, m.version, m.family, m.format, m.task || "", m.labels.join(", "), m.modality,
        m.device, m.sha256.slice(0, 16) + "…", m.clinical_use, domainText(m.validated_domain), oodText(m.ood)]) cell(row, v);
      const select = document.createElement("select");
      select.id = `mode-${m.name}`;
      for (const mode of MODEL_MODES) select.add(new Option(mode, mode, false, mode === m.mode));
      select.disabled = !isAdmin();
      select.addEventListener("change", async () => {
        try {
          await api("PUT", `/api/models/${encodeURIComponent(m.name)}/mode`, { mode: select.value });
          say(`model ${m.name} is now ${select.value}`);
        } catch (e) { say(e.message, true); }
        await load();
      });
      cell(row, select);
    });
  },
  async destinations() {
    const destinations = await api("GET", "/api/destinations");
    table("destinations", ["name", "AE title", "host", "port", "results", "C-ECHO", ""], destinations, (row, d) => {
      for (const v of [d.name, d.ae_title || "STOW-RS", d.host, d.port, d.results.join(", ")]) cell(row, v);
      const outcome = cell(row, "");
      outcome.className = "echo";
      const span = document.createElement("span");
      span.append(button("Echo", async () => {
        outcome.textContent = "…";
        const e = await api("POST", `/api/destinations/${encodeURIComponent(d.name)}/echo`);
        outcome.textContent = `${e.ok ? "OK" : "FAILED"}: ${e.detail} (${e.seconds} s)`;
        outcome.className = e.ok ? "echo ok" : "echo error";
      }),
      button("Edit", async () => {
        const full = await api("GET", `/api/destinations/${encodeURIComponent(d.name)}`);
        const { name, ...settings } = full;
        $("destination-name").value = name;
        $("destination-json").value = JSON.stringify(settings, null, 2);
      }, isAdmin()),
      button("Delete", async () => {
        if (!confirm(`Delete destination ${d.name}?`)) return;
        await api("DELETE", `/api/destinations/${encodeURIComponent(d.name)}`);
        say(`destination ${d.name} deleted`);
        await load();
      }, isAdmin()));
      cell(row, span);
    });
    wireDestinationEditor();
  },
  async audit() {
    await listing("audit", "/api/audit", ["id", "at", "actor", "action", "target", "detail"], (row, a) => {
      for (const v of [a.id, when(a.at), a.actor, a.action, a.target]) cell(row, v);
      cell(row, auditDetail(a.detail)).className = "detail";
    });
  },
  async rules() { await rulesPage(); },
  async studies() { await studiesPage(); }, // browser.js: studies, series timeline, actions
};

/** An audit event's detail as "key: value" lines (nested keys dotted), wrapped by the page. */
function auditDetail(detail) {
  const box = document.createElement("div");
  const add = (key, value) => {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) add(key ? `${key}.${k}` : k, v);
      return;
    }
    const line = document.createElement("div");
    const name = document.createElement("span");
    name.className = "key";
    name.textContent = `${key}: `;
    const text = Array.isArray(value) && value.every((v) => v === null || typeof v !== "object")
      ? value.join(", ") : typeof value === "string" ? value : JSON.stringify(value);
    line.append(name, text);
    box.appendChild(line);
  };
  add("", detail || {});
  return box;
}

const MODEL_MODES = ["active", "shadow", "off"];

// A model's validated domain (manifest validated_domain): its description and each constraint.
function domainText(domain) {
  if (!domain) return "not declared - every input accepted";
  const parts = Object.entries(domain).filter(([k]) => k !== "description").map(([k, v]) =>
    `${k}: ${Array.isArray(v) ? v.join(", ") : `${v.min ?? "-inf"} to ${v.max ?? "inf"}`}`);
  return [domain.description, ...parts].join("; ");
}
function oodText(ood) {
  if (!ood) return "not fitted";
  const rate = ood.false_abstention_rate == null ? "" : `, false abstention rate ${ood.false_abstention_rate}`;
  return `${ood.method}, threshold ${ood.threshold}${rate}`;
}
const AUDIT_ACTIONS = ["series.received", "series.routed", "delivery.sent", "delivery.committed", "delivery.failed",
  "model.mode", "destination.create", "destination.update", "destination.delete",
  "rule.create", "rule.update", "rule.delete", "rules.rollback", "job.retry", "job.cancel",
  "delivery.retry", "series.reroute", "series.rerun", "destination.retry", "feedback.record", "feedback.import"];
const TEMPLATE_DESTINATION = { host: "127.0.0.1", port: 104, ae_title: "PACS", results: ["seg", "sr"] };

function wireDestinationEditor() {
  const area = $("destination-json");
  if (area.dataset.wired) return;
  area.dataset.wired = "yes";
  area.value = JSON.stringify(TEMPLATE_DESTINATION, null, 2);
  const save = async (create) => {
    const name = $("destination-name").value.trim();
    const path = `/api/destinations/${encodeURIComponent(name)}`;
    await api(create ? "POST" : "PUT", path, JSON.parse(area.value));
    say(`destination ${name} ${create ? "added" : "saved"}`);
    await load();
  };
  for (const [id, create] of [["destination-add", true], ["destination-save", false]]) {
    const b = $(id);
    b.disabled = !isAdmin();
    b.addEventListener("click", async () => { try { await save(create); } catch (e) { say(e.message, true); } });
  }
}

const paging = { offset: 0, limit: 50 };

async function listing(id, path, headings, render) {
  const filter = $("state-filter");
  if (filter.options.length === 1) {
    const states = id === "jobs" ? ["queued", "running", "done", "failed", "cancelled"]
      : id === "audit" ? AUDIT_ACTIONS
      : ["pending", "sent", "committed", "delivered", "delivered_with_warning", "failed"];
    for (const s of states) filter.add(new Option(s, s));
    filter.addEventListener("change", () => { paging.offset = 0; load(); });
    $("prev").addEventListener("click", () => { paging.offset = Math.max(0, paging.offset - paging.limit); load(); });
    $("next").addEventListener("click", () => { paging.offset += paging.limit; load(); });
  }
  const query = new URLSearchParams({ limit: paging.limit, offset: paging.offset });
  if (filter.value) query.set(id === "audit" ? "action" : "state", filter.value);
  const page = await api("GET", `${path}?${query}`);
  table(id, headings, page.items, render);
  const last = Math.min(page.offset + page.items.length, page.total);
  $("page-info").textContent = `${page.total ? page.offset + 1 : 0}-${last} of ${page.total}`;
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
}

// -- rules: in rules.js, loaded by the rules page (rulesPage, wireRulesEditor) -------------

// -- model drift banner (GET /api/monitoring/alerts) -------------------------------------

const DRIFT_SHOWN = 3;

async function showModelDrift() {
  const banner = $("model-drift-banner");
  if (!banner) return;
  let found = null;
  try { found = await api("GET", "/api/monitoring/alerts"); } catch (_) { found = null; }
  const alerts = found ? found.alerts : [];
  banner.replaceChildren();
  banner.hidden = alerts.length === 0;
  if (!alerts.length) return;
  const shown = alerts.slice(0, DRIFT_SHOWN).map((a) => a.message).join("; ");
  const more = alerts.length > DRIFT_SHOWN ? ` and ${alerts.length - DRIFT_SHOWN} more` : "";
  banner.append(`Model drift: ${shown}${more} `);
  const link = document.createElement("a");
  link.href = "/ui/monitoring";
  link.textContent = "see Monitoring";
  banner.append(link);
}

// -- start -------------------------------------------------------------------------------

async function load() {
  delete document.body.dataset.loaded;
  try { await pages[document.body.dataset.page](); } catch (e) { say(e.message, true); }
  document.body.dataset.loaded = "true";
}

async function signIn() {
  try {
    me = await api("GET", "/api/me");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("login").hidden = false;
    $("login-error").textContent = e.status === 401 ? e.message : "";
    return;
  }
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = `${me.name} (${me.role})`;
  if (me.role !== "send") showModelDrift();
  if (document.body.dataset.page === "rules") wireRulesEditor();
  await load();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    signIn();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  if (token()) signIn(); else $("login").hidden = false;
});
