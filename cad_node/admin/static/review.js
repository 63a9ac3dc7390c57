// cad-node review page (issue 22): the studies the models read, and one study's findings
// drawn on its images, where a radiologist agrees or disagrees with each finding, clicks on
// an image to mark a lesion the model missed, and records the outcome per breast, eye or
// study. Loaded after admin.js (both deferred), whose api(), table(), cell(), button(),
// say(), when(), token() and load() it uses; it adds the page to admin.js's `pages`.
// Every value is written with textContent. The view follows the address: ?study=UID.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const reviewPaging = { offset: 0, limit: 50 };
const imageCache = new Map(); // "sop/frame" -> data: URL of the PNG (the CSP allows data:)
let reviewed = null; // the study shown: GET /api/review/studies/{uid}
let missedMarks = []; // clicks not yet recorded: {sop_instance_uid, frame_number, row, column, laterality}

const studyParam = () => new URLSearchParams(location.search).get("study");
const short = (uid) => (uid && uid.length > 24 ? `…${uid.slice(-20)}` : uid || "");
const canReview = () => me && ["review", "admin"].includes(me.role); // admin.js's `me`
const percent = (p) => (p === null || p === undefined ? "" : `${(100 * p).toFixed(0)}%`);

async function reviewPage() {
  wireReview();
  const uid = studyParam();
  if (uid) await reviewStudy(uid); else await reviewList();
}

function wireReview() {
  const form = $("review-filter");
  if (form.dataset.wired) return;
  form.dataset.wired = "yes";
  form.addEventListener("submit", (event) => { event.preventDefault(); reviewPaging.offset = 0; load(); });
  $("prev").addEventListener("click", () => { reviewPaging.offset = Math.max(0, reviewPaging.offset - reviewPaging.limit); load(); });
  $("next").addEventListener("click", () => { reviewPaging.offset += reviewPaging.limit; load(); });
  $("send-missed").addEventListener("click", () => guarded(sendMissed));
  $("clear-missed").addEventListener("click", () => { missedMarks = []; drawMissed(); });
  $("outcome-form").addEventListener("submit", (event) => { event.preventDefault(); guarded(sendOutcome); });
}

async function guarded(action) {
  try { await action(); } catch (e) { say(e.message, true); }
}

// -- the list -----------------------------------------------------------------------------

async function reviewList() {
  $("review-list").hidden = false;
  $("review-study").hidden = true;
  const query = new URLSearchParams({ limit: reviewPaging.limit, offset: reviewPaging.offset });
  if ($("review-unreviewed").checked) query.set("unreviewed", "true");
  const model = $("review-model").value.trim();
  if (model) query.set("model", model);
  const page = await api("GET", `/api/review/studies?${query}`);
  const headings = ["study", "modalities", "models", "findings", "feedback", "last output", "last feedback"];
  table("review-studies", headings, page.items, (row, s) => {
    const a = document.createElement("a");
    a.href = `/ui/review?study=${encodeURIComponent(s.study_instance_uid)}`;
    a.textContent = s.study_instance_uid;
    cell(row, a).className = "uid";
    for (const v of [s.modalities.join(", "), s.models.join(", "), s.finding_count, s.feedback_count,
      when(s.last_output_at), when(s.last_feedback_at)]) cell(row, v);
  });
  const last = Math.min(page.offset + page.items.length, page.total);
  $("page-info").textContent = `${page.total ? page.offset + 1 : 0}-${last} of ${page.total}`;
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
}

// -- one study ----------------------------------------------------------------------------

async function reviewStudy(uid) {
  $("review-list").hidden = true;
  $("review-study").hidden = false;
  reviewed = await api("GET", `/api/review/studies/${encodeURIComponent(uid)}`);
  $("review-title").textContent = `Study ${uid}`;
  renderJobs();
  await renderImages();
  drawMissed();
  renderOutcomeFields();
  $("send-outcome").disabled = !canReview();
  if (!canReview()) say("this token may read the reviews; a review token records verdicts");
  renderFeedback();
}

function imageLabel(sop, frame) {
  const image = (reviewed.images || []).find((i) => i.sop_instance_uid === sop && (i.frame_number ?? null) === (frame ?? null));
  const view = image ? [image.laterality, image.view_position].filter(Boolean).join(" ") : "";
  return `${view || short(sop)}${frame ? ` frame ${frame}` : ""}`;
}

async function sendFeedback(items, what) {
  const r = await api("POST", "/api/feedback", { source: "review", items });
  const unmatched = r.unmatched.length ? `; unmatched: ${r.unmatched.join("; ")}` : "";
  say(`recorded ${what}: ${r.recorded} row(s)${unmatched}`);
  await load();
}

function verdictButtons(finding) {
  const span = document.createElement("span");
  for (const [label, verdict] of [["Agree", "agree"], ["Disagree", "disagree"]]) {
    const b = button(label, () => sendFeedback([{
      study_instance_uid: reviewed.study_instance_uid, verdict, tracking_uid: finding.tracking_uid,
    }], `${verdict} with ${finding.tracking_identifier}`), canReview());
    b.id = `${verdict}-${finding.tracking_uid}`;
    span.appendChild(b);
  }
  return span;
}

function renderJobs() {
  const box = $("review-jobs");
  box.replaceChildren();
  for (const job of reviewed.jobs) {
    const section = document.createElement("section");
    section.className = "review-job";
    const h = document.createElement("h3");
    h.textContent = `${job.model_name} ${job.model_version} (${job.mode}), job ${job.job_id}`;
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = [`recorded ${when(job.recorded_at)}`, job.score === null ? "" : `study score ${job.score.toFixed(3)}`,
      job.abstained ? "abstained (not assessed)" : ""].filter(Boolean).join(" · ");
    const assessments = document.createElement("table");
    assessments.id = `assessments-${job.job_id}`;
    assessments.className = "rows";
    const findings = document.createElement("table");
    findings.id = `findings-${job.job_id}`;
    findings.className = "rows findings";
    section.append(h, p, assessments, findings);
    box.appendChild(section);
    table(assessments.id, ["assessment", "laterality", "value", "score"], job.assessments, (row, a) => {
      for (const v of [a.kind, a.laterality, a.value, Number(a.score).toFixed(3)]) cell(row, v);
    });
    const headings = ["finding", "type", "probability", "laterality", "diameter", "image", "verdict", ""];
    table(findings.id, headings, job.findings, (row, f) => {
      for (const v of [f.tracking_identifier, f.finding_type, percent(f.probability), f.laterality,
        f.diameter_mm ? `${f.diameter_mm.toFixed(1)} mm` : "", imageLabel(f.sop_instance_uid, f.frame_number)]) cell(row, v);
      const verdict = f.verdict ? `${f.verdict.verdict} (${f.verdict.reviewer})` : "not reviewed";
      cell(row, verdict).className = f.verdict ? `verdict-${f.verdict.verdict}` : "muted";
      cell(row, verdictButtons(f));
    });
  }
}

// -- images and marks ---------------------------------------------------------------------

async function imageData(image) {
  const key = `${image.sop_instance_uid}/${image.frame_number ?? ""}`;
  if (!imageCache.has(key)) {
    const frame = image.frame_number ? `?frame=${image.frame_number}` : "";
    const response = await fetch(`/api/review/images/${encodeURIComponent(image.sop_instance_uid)}.png${frame}`,
      { headers: { Authorization: `Bearer ${token()}` } });
    if (!response.ok) throw new Error(`image ${image.sop_instance_uid}: HTTP ${response.status}`);
    const blob = await response.blob();
    imageCache.set(key, await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    }));
  }
  return imageCache.get(key);
}

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function sameImage(a, image) {
  return a.sop_instance_uid === image.sop_instance_uid && (a.frame_number ?? null) === (image.frame_number ?? null);
}

function markSize(image) { return Math.max(image.rows, image.columns); }

function drawFindings(svg, image) {
  const size = markSize(image);
  for (const job of reviewed.jobs) {
    for (const f of job.findings.filter((f) => sameImage(f, image))) {
      const state = f.verdict ? f.verdict.verdict : "";
      const radius = size * 0.045;
      svg.appendChild(svgElement("circle", { cx: f.column, cy: f.row, r: radius, class: `finding ${state}` }));
      const label = `${f.tracking_identifier} ${percent(f.probability)}`;
      svg.appendChild(labelAt(image, f.column, f.row, radius, label, state));
    }
  }
}

/** A mark's caption beside it, on the side of the image with room for it. */
function labelAt(image, column, row, radius, text, state) {
  const left = column > image.columns * 0.55;
  return svgElement("text", { x: left ? column - radius * 1.1 : column + radius * 1.1, y: row - radius * 0.6,
    class: state, "text-anchor": left ? "end" : "start", "font-size": markSize(image) * 0.045 }, text);
}

function cross(group, image, point, text, state) {
  const arm = markSize(image) * 0.03;
  const d = `M${point.column - arm} ${point.row}H${point.column + arm}M${point.column} ${point.row - arm}V${point.row + arm}`;
  group.appendChild(svgElement("path", { d, class: state }));
  group.appendChild(labelAt(image, point.column, point.row + arm * 2.5, arm, text, state));
}

function drawMissed() {
  for (const figure of document.querySelectorAll("#review-images figure")) {
    const image = figure.image;
    const group = figure.querySelector("g.missed");
    if (!group) continue;
    group.replaceChildren();
    for (const f of reviewed.feedback) {
      if (f.verdict === "missed" && f.location && sameImage(f.location, image)) {
        cross(group, image, f.location, `missed (${f.reviewer})`, "missed");
      }
    }
    missedMarks.forEach((m, index) => {
      if (sameImage(m, image)) cross(group, image, m, `new ${index + 1}`, "pending");
    });
  }
  table("missed-pending", ["#", "image", "row", "column", "laterality", ""], missedMarks, (row, m) => {
    for (const v of [missedMarks.indexOf(m) + 1, imageLabel(m.sop_instance_uid, m.frame_number),
      Math.round(m.row), Math.round(m.column), m.laterality]) cell(row, v);
    cell(row, button("Remove", () => { missedMarks = missedMarks.filter((x) => x !== m); drawMissed(); }));
  });
  $("send-missed").disabled = !missedMarks.length || !canReview();
  $("clear-missed").disabled = !missedMarks.length;
}

function markMissed(event, svg, image) {
  const box = svg.getBoundingClientRect();
  const column = ((event.clientX - box.left) * image.columns) / box.width;
  const row = ((event.clientY - box.top) * image.rows) / box.height;
  missedMarks.push({ sop_instance_uid: image.sop_instance_uid, frame_number: image.frame_number, row, column,
    laterality: image.laterality });
  drawMissed();
}

async function renderImages() {
  const box = $("review-images");
  box.replaceChildren();
  for (const image of reviewed.images) {
    const figure = document.createElement("figure");
    figure.className = "review-image";
    figure.image = image;
    const caption = document.createElement("figcaption");
    caption.textContent = `${imageLabel(image.sop_instance_uid, image.frame_number)} · ${short(image.sop_instance_uid)}`;
    const frame = document.createElement("div");
    frame.className = "frame";
    const svg = svgElement("svg", { viewBox: `0 0 ${image.columns || 1} ${image.rows || 1}`, preserveAspectRatio: "none" });
    svg.appendChild(svgElement("g", { class: "missed" }));
    figure.append(frame, caption);
    box.appendChild(figure);
    if (!image.available) {
      caption.textContent += " · image removed by retention";
      continue;
    }
    const img = document.createElement("img");
    img.alt = imageLabel(image.sop_instance_uid, image.frame_number);
    img.src = await imageData(image);
    await img.decode();
    frame.append(img, svg);
    drawFindings(svg, image);
    frame.addEventListener("click", (event) => markMissed(event, svg, image));
  }
}

async function sendMissed() {
  const items = missedMarks.map((m) => {
    const location = { sop_instance_uid: m.sop_instance_uid, row: m.row, column: m.column };
    if (m.frame_number) location.frame_number = m.frame_number;
    const item = { study_instance_uid: reviewed.study_instance_uid, verdict: "missed", location };
    if (m.laterality === "R" || m.laterality === "L") item.laterality = m.laterality;
    return item;
  });
  const count = items.length;
  await sendFeedback(items, `${count} missed lesion(s)`);
  missedMarks = [];
  drawMissed();
}

// -- outcome ------------------------------------------------------------------------------

const BREAST_TRUTHS = ["malignant", "benign", "normal"];
const ICDR_GRADES = ["0", "1", "2", "3", "4"];

/** Per breast (breast suspicion), per eye (DR grading, ICDR 0-4), else for the study. */
function outcomeParts() {
  const kinds = new Set(reviewed.jobs.flatMap((j) => j.assessments.map((a) => a.kind)));
  if (kinds.has("diabetic_retinopathy")) {
    return [["R", "right eye (OD), ICDR grade", ICDR_GRADES], ["L", "left eye (OS), ICDR grade", ICDR_GRADES]];
  }
  if (kinds.has("breast_suspicion")) {
    return [["R", "right breast", BREAST_TRUTHS], ["L", "left breast", BREAST_TRUTHS]];
  }
  return [["", "study", BREAST_TRUTHS]];
}

function renderOutcomeFields() {
  const box = $("outcome-fields");
  box.replaceChildren();
  for (const [laterality, label, choices] of outcomeParts()) {
    const l = document.createElement("label");
    const select = document.createElement("select");
    select.id = `truth-${laterality || "study"}`;
    select.dataset.laterality = laterality;
    select.add(new Option("—", ""));
    for (const choice of choices) select.add(new Option(choice, choice));
    l.append(`${label} `, select);
    box.appendChild(l);
  }
}

async function sendOutcome() {
  const note = $("outcome-note").value.trim();
  const items = [];
  for (const select of $("outcome-fields").querySelectorAll("select")) {
    if (!select.value) continue;
    const item = { study_instance_uid: reviewed.study_instance_uid, verdict: "outcome", truth: select.value };
    if (select.dataset.laterality) item.laterality = select.dataset.laterality;
    if (note) item.note = note;
    items.push(item);
  }
  if (!items.length) { say("choose an outcome first", true); return; }
  await sendFeedback(items, "the outcome");
  $("outcome-note").value = "";
}

function renderFeedback() {
  const names = new Map(reviewed.jobs.flatMap((j) => j.findings.map((f) => [f.tracking_uid, f.tracking_identifier])));
  const headings = ["received", "source", "reviewer", "verdict", "model", "finding", "laterality", "truth", "location", "note"];
  table("review-feedback", headings, reviewed.feedback, (row, f) => {
    const where = f.location ? `${imageLabel(f.location.sop_instance_uid, f.location.frame_number)} (${Math.round(f.location.row)}, ${Math.round(f.location.column)})` : "";
    for (const v of [when(f.received_at), f.source, f.reviewer, f.verdict, f.model_name || "unmatched",
      f.tracking_uid ? names.get(f.tracking_uid) || f.tracking_uid : "", f.laterality, f.truth, where, f.note]) cell(row, v);
  });
}

pages.review = reviewPage; // admin.js calls pages[page]() once signed in
