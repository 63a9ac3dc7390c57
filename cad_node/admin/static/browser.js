// cad-node study and series browser: find a study (accession number, study or series UID),
// its series, a series' timeline (received, complete, routing and why, jobs, results,
// deliveries, audit) and the admin's actions: re-route, re-run, retry a destination.
// Loaded after admin.js (both deferred), whose api(), table(), cell(), button(), say(),
// when() and isAdmin() it uses; admin.js's studies page calls studiesPage(). Every value is
// written with textContent. The view follows the address: ?q=, ?study=, ?series=, ?job=.
"use strict";

const STUDY_HEADINGS = ["accession", "date", "description", "study", "modalities", "series",
  "instances", "states", "last received"];

function link(text, href) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}

const studyHref = (uid) => `/ui/studies?study=${encodeURIComponent(uid)}`;
const seriesHref = (uid) => `/ui/studies?series=${encodeURIComponent(uid)}`;
const jobHref = (id) => `/ui/studies?job=${encodeURIComponent(id)}`;

/** A study date (DICOM DA, YYYYMMDD) as YYYY-MM-DD. */
const studyDate = (da) => (da && da.length === 8 ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6)}` : da || "");

function facts(id, pairs) {
  const t = $(id);
  t.replaceChildren();
  for (const [name, value] of pairs) {
    const row = t.insertRow();
    const th = document.createElement("th");
    th.textContent = name;
    row.appendChild(th);
    cell(row, value);
  }
}

function show(view) {
  for (const id of ["study-list", "study-view", "series-view"]) $(id).hidden = id !== view;
}

function states(counts) {
  return Object.entries(counts).map(([state, count]) => `${count} ${state}`).join(", ");
}

// -- the list, with the search ------------------------------------------------------------

const studyPaging = { offset: 0, limit: 50 };

async function studyList(q) {
  show("study-list");
  const query = new URLSearchParams({ limit: studyPaging.limit, offset: studyPaging.offset });
  if (q) query.set("q", q);
  const page = await api("GET", `/api/browse/studies?${query}`);
  const headings = isAdmin() ? STUDY_HEADINGS : STUDY_HEADINGS.slice(3);
  table("studies", headings, page.items, (row, s) => {
    if (isAdmin()) for (const v of [s.accession_number, studyDate(s.study_date), s.study_description]) cell(row, v);
    cell(row, link(s.study_instance_uid, studyHref(s.study_instance_uid))).className = "uid";
    for (const v of [s.modalities.join(", "), s.series_count, s.instance_count, states(s.series_states),
      when(s.last_received_at)]) cell(row, v);
  });
  const last = Math.min(page.offset + page.items.length, page.total);
  $("page-info").textContent = `${page.total ? page.offset + 1 : 0}-${last} of ${page.total}`;
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
  if (q) say(page.total ? `${page.total} study(ies) match ${q}` : `no study matches ${q}`, !page.total);
}

// -- a study ------------------------------------------------------------------------------

const SERIES_HEADINGS = ["series", "modality", "state", "rule", "instances", "revision", "from",
  "received", "completed"];

async function studyView(uid) {
  show("study-view");
  const s = await api("GET", `/api/browse/studies/${encodeURIComponent(uid)}`);
  $("study-title").textContent = isAdmin() && s.accession_number
    ? `Study ${s.accession_number}` : "Study";
  const pairs = [];
  if (isAdmin()) pairs.push(["Accession number", s.accession_number], ["Study date", studyDate(s.study_date)],
    ["Study description", s.study_description]);
  pairs.push(["Study Instance UID", s.study_instance_uid], ["Modalities", s.modalities.join(", ")],
    ["Series", `${s.series_count} (${states(s.series_states)})`], ["Instances", s.instance_count],
    ["Received", `${when(s.first_received_at)} to ${when(s.last_received_at)}`]);
  facts("study-descriptors", pairs);
  table("study-series", SERIES_HEADINGS, s.series, (row, r) => {
    cell(row, link(r.series_instance_uid, seriesHref(r.series_instance_uid))).className = "uid";
    for (const v of [r.modality, r.state, r.rule_name, r.instance_count, r.revision, r.calling_ae_title,
      when(r.last_received_at), when(r.completed_at)]) cell(row, v);
  });
}

// -- a series: its timeline and the actions -----------------------------------------------

async function seriesView(uid) {
  show("series-view");
  const t = await api("GET", `/api/series/${encodeURIComponent(uid)}/timeline`);
  const s = t.series;
  $("series-title").textContent = `Series ${s.modality} · ${s.state}`;
  const crumbs = $("series-links");
  const studyLabel = isAdmin() && t.study.accession_number
    ? `study ${t.study.accession_number}` : `study ${s.study_instance_uid}`;
  crumbs.replaceChildren(link("studies", "/ui/studies"), " › ", link(studyLabel, studyHref(s.study_instance_uid)));
  const pairs = [["Series Instance UID", s.series_instance_uid], ["State", s.state],
    ["Rule", s.rule_name || "none"], ["Revision", s.revision], ["Instances", s.instance_count],
    ["Sent by", s.calling_ae_title]];
  if (isAdmin()) pairs.unshift(["Study", [t.study.accession_number, studyDate(t.study.study_date),
    t.study.study_description].filter(Boolean).join(" · ")]);
  if (t.purged_at) pairs.push(["Purged", when(t.purged_at)]);
  facts("series-facts", pairs);
  table("timeline", ["when", "what", "event"], t.timeline, (row, e) => {
    cell(row, when(e.at) || "not yet").className = "when";
    cell(row, e.kind).className = `kind ${e.kind}`;
    const event = cell(row, "");
    event.className = "event";
    const summary = document.createElement("div");
    summary.className = "summary";
    summary.textContent = e.summary;
    if (e.state) summary.dataset.state = e.state;
    event.appendChild(summary);
    const details = document.createElement("div");
    details.className = "detail";
    for (const line of e.details) {
      const div = document.createElement("div");
      div.textContent = line;
      details.appendChild(div);
    }
    if (e.job_id && e.kind !== "job") details.append(link(`job ${e.job_id}`, jobHref(e.job_id)));
    if (details.childNodes.length) event.appendChild(details);
  });
  destinations(t.deliveries);
  wireActions(uid);
}

function destinations(deliveries) {
  const by = new Map();
  for (const d of deliveries) {
    const entry = by.get(d.destination) || { destination: d.destination, counts: {} };
    entry.counts[d.state] = (entry.counts[d.state] || 0) + 1;
    by.set(d.destination, entry);
  }
  table("series-destinations", ["destination", "deliveries", ""], [...by.values()], (row, e) => {
    cell(row, e.destination);
    cell(row, states(e.counts));
    const waiting = (e.counts.pending || 0) + (e.counts.failed || 0);
    cell(row, button(`Retry all deliveries to ${e.destination}`, async () => {
      if (!confirm(`Send every pending or failed delivery to ${e.destination} now (all series)?`)) return;
      const r = await api("POST", `/api/destinations/${encodeURIComponent(e.destination)}/retry`);
      say(`${r.retried} delivery(ies) to ${r.destination} will be sent now`);
      await load();
    }, isAdmin() && waiting > 0));
  });
}

function wireActions(uid) {
  for (const [id, path, confirmText] of [
    ["reroute", "reroute", "Route this series again by the rules in force now?"],
    ["rerun", "rerun", "Run this series' last jobs again (a new revision)?"],
  ]) {
    const old = $(id);
    const fresh = old.cloneNode(true); // drop the listener of an earlier load
    old.replaceWith(fresh);
    fresh.disabled = !isAdmin();
    fresh.addEventListener("click", async () => {
      if (!confirm(confirmText)) return;
      try {
        const r = await api("POST", `/api/series/${encodeURIComponent(uid)}/${path}`);
        const result = $("action-result");
        result.hidden = false;
        result.textContent = r.explanation ? `${r.message}\n${r.explanation}` : r.message;
        await load();
        say(r.message);
      } catch (e) { say(e.message, true); }
    });
  }
}

async function jobView(id) {
  const job = await api("GET", `/api/jobs/${encodeURIComponent(id)}`);
  await seriesView(job.series_instance_uid);
}

// -- the page -----------------------------------------------------------------------------

function wireSearch(q) {
  const form = $("study-search");
  if (form.dataset.wired) return;
  form.dataset.wired = "yes";
  $("study-q").value = q || "";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("study-q").value.trim();
    location.search = value ? `?q=${encodeURIComponent(value)}` : "";
  });
  $("prev").addEventListener("click", () => { studyPaging.offset = Math.max(0, studyPaging.offset - studyPaging.limit); load(); });
  $("next").addEventListener("click", () => { studyPaging.offset += studyPaging.limit; load(); });
}

async function studiesPage() {
  const params = new URLSearchParams(location.search);
  wireSearch(params.get("q"));
  if (params.get("series")) await seriesView(params.get("series"));
  else if (params.get("job")) await jobView(params.get("job"));
  else if (params.get("study")) await studyView(params.get("study"));
  else await studyList(params.get("q"));
}
