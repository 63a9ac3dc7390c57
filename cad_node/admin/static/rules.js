// cad-node admin page, rules: the rule table, an editor (a form beside the JSON, kept in sync),
// live validation, test, dry run, and the versions, with a diff to confirm before a rollback.
// Loaded after admin.js on the rules page only; uses its helpers ($, api, say, cell, button,
// table, when, isAdmin). Every value is written with textContent, never as HTML.
"use strict";

let ruleSet = null;
let editing = null; // the name of the rule in the editor, null for a new rule
let validateTimer = null;
let validationSeq = 0; // only the newest draft's verdict is shown, whatever order answers arrive in
let formDraft = null; // the rule the form shows: the JSON's last parse, or the form's last edit
let nestedWhen = false; // the draft's conditions nest: the form leaves them to the JSON
let choices = { models: [], destinations: [] }; // what a rule may name, for the form's lists

const TEMPLATE_RULE = {
  name: "new-rule", description: "", priority: 0, mode: "shadow", model: "lung_nodule_ct",
  destinations: [], when: { all: [{ keyword: "Modality", equals: "CT" }] },
};
const FORM_OPERATORS = ["equals", "in", "contains", "regex", "min", "max", "between", "present", "plane"];
const OPERATOR_HINTS = {
  equals: "CT", in: "CT, MR (comma-separated)", contains: "AXIAL", regex: "(?i)chest",
  min: "number", max: "number", between: "0.5..2.5", present: "true or false",
  plane: "axial, coronal, sagittal or oblique",
};

// -- the editor: JSON and form --------------------------------------------------------------

function edit(rule) {
  clearTimeout(validateTimer);
  editing = rule ? rule.name : null;
  $("rule-json").value = JSON.stringify(rule || TEMPLATE_RULE, null, 2);
  formDraft = JSON.parse($("rule-json").value);
  renderForm(formDraft);
  validate();
}

function draft() { return JSON.parse($("rule-json").value); }

async function validate() {
  const seq = ++validationSeq;
  const show = (text, ok) => {
    if (seq !== validationSeq) return;
    $("validation").textContent = text;
    $("validation").className = ok ? "validation ok" : "validation error";
  };
  try {
    await api("POST", "/api/rules/validate", draft());
    show("✓ valid", true);
    return true;
  } catch (e) {
    show(`✗ ${e instanceof SyntaxError ? "not JSON: " + e.message : e.message}`, false);
    return false;
  }
}

function validateSoon() {
  clearTimeout(validateTimer);
  validateTimer = setTimeout(validate, 300);
}

function draftRuleSet() {
  const rule = draft();
  const others = ruleSet.rules.filter((r) => r.name !== (editing ?? rule.name));
  return [...others, rule];
}

/** A typed value as the rule takes it: a number when it reads as one, else the text. */
function scalar(text) {
  const trimmed = text.trim();
  return trimmed !== "" && /^-?\d+(\.\d+)?$/.test(trimmed) ? Number(trimmed) : text;
}

/** A bound as a number; text that is not one is sent as it is, for the check to name. */
function bound(text) {
  const trimmed = text.trim();
  return trimmed !== "" && !Number.isNaN(Number(trimmed)) ? Number(trimmed) : text;
}

/** One leaf condition as a form row {keyword, operator, value}; null if the form cannot show it. */
function conditionRow(c) {
  if (!c || typeof c !== "object" || Array.isArray(c) || typeof c.keyword !== "string") return null;
  const keyword = c.keyword;
  if ("equals" in c) return Array.isArray(c.equals) ? null : { keyword, operator: "equals", value: String(c.equals) };
  if ("in" in c) return Array.isArray(c.in) ? { keyword, operator: "in", value: c.in.join(", ") } : null;
  if ("contains" in c) return { keyword, operator: "contains", value: String(c.contains) };
  if ("regex" in c) return { keyword, operator: "regex", value: String(c.regex) };
  if ("present" in c) return { keyword, operator: "present", value: String(c.present) };
  if ("plane" in c) return { keyword, operator: "plane", value: String(c.plane) };
  const hasMin = "min" in c && c.min !== null;
  const hasMax = "max" in c && c.max !== null;
  if (hasMin && hasMax) return { keyword, operator: "between", value: `${c.min}..${c.max}` };
  if (hasMin) return { keyword, operator: "min", value: String(c.min) };
  if (hasMax) return { keyword, operator: "max", value: String(c.max) };
  return null;
}

/** A form row as a condition of the rule. */
function rowCondition({ keyword, operator, value }) {
  switch (operator) {
    case "in": return { keyword, in: value.split(",").map((v) => v.trim()).filter((v) => v).map(scalar) };
    case "contains": return { keyword, contains: scalar(value) };
    case "regex": return { keyword, regex: value };
    case "min": return { keyword, min: bound(value) };
    case "max": return { keyword, max: bound(value) };
    case "between": {
      const [low, high = ""] = value.split("..");
      return { keyword, min: bound(low), max: bound(high) };
    }
    case "present": return { keyword, present: value.trim().toLowerCase() !== "false" };
    case "plane": return { keyword, plane: value.trim() };
    default: return { keyword, equals: scalar(value) };
  }
}

/** The conditions as {combinator, rows}, or null when they nest deeper than the form shows. */
function conditionRows(when) {
  const single = conditionRow(when);
  if (single) return { combinator: "all", rows: [single] };
  if (!when || typeof when !== "object") return null;
  const combinator = Array.isArray(when.all) ? "all" : Array.isArray(when.any) ? "any" : null;
  if (!combinator || Object.keys(when).length !== 1) return null;
  const rows = when[combinator].map(conditionRow);
  return rows.every((r) => r) ? { combinator, rows } : null;
}

function option(select, value, label) { select.add(new Option(label ?? value, value)); }

function renderForm(rule) {
  if (!rule || typeof rule !== "object" || Array.isArray(rule)) return;
  $("rf-name").value = rule.name ?? "";
  $("rf-description").value = rule.description ?? "";
  $("rf-priority").value = rule.priority ?? 0;
  $("rf-mode").value = rule.mode ?? "active";
  $("rf-ood").value = rule.on_out_of_domain ?? "report";
  $("rf-priority-class").value = rule.priority_class ?? "";
  $("rf-priority-from").value = rule.priority_from ?? "";
  const model = $("rf-model");
  model.replaceChildren();
  for (const name of choices.models) option(model, name);
  if (rule.model && !choices.models.includes(rule.model)) option(model, rule.model, `${rule.model} (not installed)`);
  model.value = rule.model ?? "";
  renderDestinations(Array.isArray(rule.destinations) ? rule.destinations : []);
  const parsed = conditionRows(rule.when);
  nestedWhen = parsed === null;
  $("rf-nested").hidden = !nestedWhen;
  $("rf-combinator").disabled = nestedWhen;
  $("rf-add-condition").disabled = nestedWhen;
  $("rf-combinator").value = parsed ? parsed.combinator : "all";
  const rows = $("rf-conditions");
  rows.replaceChildren();
  for (const row of parsed ? parsed.rows : []) addConditionRow(row);
}

function renderDestinations(chosen) {
  const box = $("rf-destinations");
  box.replaceChildren(box.querySelector("legend") || document.createElement("legend"));
  box.querySelector("legend").textContent = "Destinations";
  const names = [...choices.destinations, ...chosen.filter((d) => !choices.destinations.includes(d))];
  if (!names.length) box.append("none configured");
  for (const name of names) {
    const label = document.createElement("label");
    label.className = "check";
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.value = name;
    tick.checked = chosen.includes(name);
    tick.dataset.destination = name;
    label.append(tick, choices.destinations.includes(name) ? ` ${name}` : ` ${name} (not configured)`);
    box.append(label);
  }
}

function addConditionRow({ keyword, operator, value }) {
  const row = $("rf-conditions").insertRow();
  row.className = "condition";
  const keywordInput = document.createElement("input");
  keywordInput.className = "keyword";
  keywordInput.setAttribute("list", "rf-keywords");
  keywordInput.setAttribute("aria-label", "DICOM keyword");
  keywordInput.value = keyword;
  const operatorSelect = document.createElement("select");
  operatorSelect.className = "operator";
  operatorSelect.setAttribute("aria-label", "operator");
  for (const op of FORM_OPERATORS) option(operatorSelect, op);
  operatorSelect.value = operator;
  const valueInput = document.createElement("input");
  valueInput.className = "value";
  valueInput.setAttribute("aria-label", "value");
  valueInput.value = value;
  valueInput.placeholder = OPERATOR_HINTS[operator] || "";
  operatorSelect.addEventListener("change", () => { valueInput.placeholder = OPERATOR_HINTS[operatorSelect.value] || ""; });
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Remove";
  remove.addEventListener("click", () => { row.remove(); formChanged(); });
  for (const element of [keywordInput, operatorSelect, valueInput, remove]) cell(row, element);
}

/** The rule the form shows, keeping what the form has no field for (include_own_results,
 * nested conditions) as the JSON had it. */
function formRule() {
  const rule = { ...(formDraft && typeof formDraft === "object" && !Array.isArray(formDraft) ? formDraft : {}) };
  rule.name = $("rf-name").value;
  rule.description = $("rf-description").value;
  rule.priority = bound($("rf-priority").value || "0");
  rule.mode = $("rf-mode").value;
  rule.model = $("rf-model").value;
  if ($("rf-ood").value === "report") delete rule.on_out_of_domain; // the default
  else rule.on_out_of_domain = $("rf-ood").value;
  for (const [field, id] of [["priority_class", "rf-priority-class"], ["priority_from", "rf-priority-from"]]) {
    if ($(id).value) rule[field] = $(id).value; else delete rule[field]; // none: the default
  }
  rule.destinations = [...$("rf-destinations").querySelectorAll("input[type=checkbox]")]
    .filter((b) => b.checked).map((b) => b.value);
  if (!nestedWhen) {
    const conditions = [...$("rf-conditions").querySelectorAll("tr.condition")].map((tr) => rowCondition({
      keyword: tr.querySelector(".keyword").value.trim(),
      operator: tr.querySelector(".operator").value,
      value: tr.querySelector(".value").value,
    }));
    rule.when = { [$("rf-combinator").value]: conditions };
  }
  return rule;
}

function formChanged() {
  formDraft = formRule();
  $("rule-json").value = JSON.stringify(formDraft, null, 2);
  validateSoon();
}

function jsonChanged() {
  try {
    const parsed = draft();
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) {
      formDraft = parsed;
      renderForm(parsed);
    }
  } catch (_) { /* half-typed: the form keeps the last rule that parsed */ }
  validateSoon();
}

// -- the page -------------------------------------------------------------------------------

async function loadChoices() {
  const [models, destinations] = await Promise.all([api("GET", "/api/models"), api("GET", "/api/destinations")]);
  choices = { models: models.map((m) => m.name).sort(), destinations: destinations.map((d) => d.name).sort() };
}

async function rulesPage() {
  ruleSet = await api("GET", "/api/rules");
  await loadChoices();
  if (!$("rule-json").value) edit(ruleSet.rules[0] || null);
  else renderForm(formDraft);
  $("rule-version").textContent = ruleSet.version;
  $("rule-version-by").textContent = `by ${ruleSet.author}, ${when(ruleSet.created_at)}: ${ruleSet.change}`;
  const conditions = ruleSet.conditions || [];
  table("rules", ["name", "priority", "mode", "conditions", "model", "destinations", ""], ruleSet.rules, (row, rule) => {
    for (const v of [rule.name, rule.priority, rule.mode]) cell(row, v);
    cell(row, conditions[ruleSet.rules.indexOf(rule)] ?? "").className = "conditions";
    for (const v of [rule.model, (rule.destinations || []).join(", ")]) cell(row, v);
    const span = document.createElement("span");
    const next = rule.mode === "off" ? "active" : "off";
    span.append(
      button("Edit", async () => edit(rule)),
      button(rule.mode === "off" ? "Enable" : "Disable", async () => {
        await api("POST", `/api/rules/${encodeURIComponent(rule.name)}/mode`, { mode: next });
        say(`rule ${rule.name}: ${next}`); await rulesPage();
      }, isAdmin()),
      button("Delete", async () => {
        if (!confirm(`Delete rule ${rule.name}?`)) return;
        await api("DELETE", `/api/rules/${encodeURIComponent(rule.name)}`);
        say(`rule ${rule.name} deleted`); await rulesPage();
      }, isAdmin()));
    cell(row, span);
  });
  const versions = await api("GET", "/api/rules/versions");
  table("versions", ["version", "author", "time", "change", "rules", ""], versions, (row, v) => {
    for (const x of [v.version, v.author, when(v.created_at), v.change, v.rule_count]) cell(row, x);
    cell(row, button("Roll back to this…", async () => showRollback(v.version),
      isAdmin() && v.version !== ruleSet.version));
  });
  const series = await api("GET", "/api/series?limit=50");
  const select = $("test-series");
  select.replaceChildren(...series.items.map((s) => new Option(
    `${when(s.last_received_at)} ${s.modality} ${s.series_instance_uid} (${s.rule_name || s.state})`,
    s.series_instance_uid)));
}

// -- rollback: the diff first, then a confirmation ---------------------------------------------

let rollbackVersion = null;

function changeLine(change) {
  const item = document.createElement("li");
  item.className = `diff-${change.change}`;
  const head = document.createElement("strong");
  head.textContent = `${change.change}: rule ${change.rule}`;
  item.append(head);
  if (change.fields.length) {
    const fields = document.createElement("ul");
    for (const f of change.fields) {
      const line = document.createElement("li");
      line.textContent = `${f.field}: ${f.in_force ?? "(not set)"} → ${f.after ?? "(not set)"}`;
      fields.append(line);
    }
    item.append(fields);
  }
  return item;
}

async function showRollback(version) {
  const diff = await api("GET", `/api/rules/versions/${version}/diff`);
  rollbackVersion = version;
  $("rollback-title").textContent =
    `Roll back to version ${diff.version}: what changes against version ${diff.in_force}, in force now`;
  const lines = diff.changes.map(changeLine);
  if (diff.order_changed) {
    const item = document.createElement("li");
    item.textContent = "the rules are listed in another order (it breaks ties of priority)";
    lines.push(item);
  }
  if (!lines.length) {
    const item = document.createElement("li");
    item.textContent = "no change: the same rules as the version in force";
    lines.push(item);
  }
  $("rollback-changes").replaceChildren(...lines);
  $("rollback-refused").textContent = diff.refused ? `Refused now: ${diff.refused}` : "";
  $("rollback-confirm").disabled = Boolean(diff.refused) || !isAdmin();
  $("rollback-confirm").textContent = `Confirm rollback to version ${diff.version}`;
  $("rollback").hidden = false;
  $("rollback").scrollIntoView({ block: "nearest" });
  say(`rollback to version ${diff.version}: read what changes below, then confirm or cancel`);
}

async function confirmRollback() {
  const saved = await api("POST", `/api/rules/versions/${rollbackVersion}/rollback`);
  $("rollback").hidden = true;
  rollbackVersion = null;
  // The editor shows the rule set now in force, not a draft of before: a Save must not undo it.
  await rulesPage();
  const shown = ruleSet.rules.find((r) => r.name === editing) || ruleSet.rules[0] || null;
  edit(shown);
  say(`rolled back: version ${saved.version} is in force (${saved.change}); ` +
    (shown ? `the editor shows rule ${shown.name} as now in force` : "no rule in force"));
}

function wireRulesEditor() {
  $("rule-json").addEventListener("input", jsonChanged);
  const form = $("rule-form");
  form.addEventListener("submit", (event) => event.preventDefault());
  form.addEventListener("input", formChanged);
  form.addEventListener("change", formChanged);
  $("rf-add-condition").addEventListener("click", () => {
    addConditionRow({ keyword: "", operator: "equals", value: "" });
    formChanged();
  });
  $("new-rule").addEventListener("click", () => edit(null));
  $("save-rule").addEventListener("click", async () => {
    try {
      const rule = draft();
      const saved = editing === null
        ? await api("POST", "/api/rules", rule)
        : await api("PUT", `/api/rules/${encodeURIComponent(editing)}`, rule);
      editing = rule.name;
      say(`rule ${rule.name} saved: version ${saved.version}, in force for the next series`);
      await rulesPage();
    } catch (e) { say(e.message, true); }
  });
  $("test-rule").addEventListener("click", async () => {
    try {
      const result = await api("POST", "/api/rules/test",
        { series_instance_uid: $("test-series").value, rule: draft() });
      $("test-result").textContent = result.text;
      $("test-result").className = result.matches ? "ok" : "error";
    } catch (e) { $("test-result").textContent = e.message; $("test-result").className = "error"; }
  });
  $("dry-run").addEventListener("click", async () => {
    try {
      const result = await api("POST", "/api/rules/dry-run",
        { rules: draftRuleSet(), days: Number($("dry-days").value) });
      $("dry-summary").textContent =
        `${result.series_examined} series examined, ${result.changed.length} routed differently`;
      table("dry-result", ["series", "modality", "now", "with the draft", "model"], result.changed, (row, c) => {
        for (const v of [c.series_instance_uid, c.modality, c.current_rule || "none", c.draft_rule || "none",
          c.draft_model]) cell(row, v);
      });
    } catch (e) { $("dry-summary").textContent = e.message; }
  });
  $("rollback-confirm").addEventListener("click", async () => {
    try { await confirmRollback(); } catch (e) { say(e.message, true); }
  });
  $("rollback-cancel").addEventListener("click", () => {
    $("rollback").hidden = true;
    rollbackVersion = null;
    say("rollback cancelled: nothing changed");
  });
}
