// cad-node dashboard: destination health, pending and retrying deliveries, disk space.
// Loaded after admin.js (both deferred), whose api(), table(), cell() and when() it uses;
// admin.js's dashboard page calls dashboardHealth(). Every value is written with textContent.
"use strict";

function byteSize(count) {
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let value = Number(count);
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function healthCell(row, d) {
  const text = d.up === null ? "not checked yet" : d.up ? "OK" : "DOWN";
  const td = cell(row, text);
  td.className = d.up === null ? "health muted" : d.up ? "health ok" : "health error";
}

function destinationHealth(health) {
  $("echo-every").textContent =
    `C-ECHO to every destination every ${health.echo_interval_seconds} s.`;
  const headings = ["destination", "AE title", "address", "health", "last C-ECHO", "checked",
    "round trip", "pending", "retrying", "oldest pending since"];
  table("destination-health", headings, health.destinations, (row, d) => {
    for (const v of [d.name, d.ae_title, d.host ? `${d.host}:${d.port}` : ""]) cell(row, v);
    healthCell(row, d);
    for (const v of [d.detail, when(d.checked_at), d.echo_seconds === null ? "" : `${d.echo_seconds} s`,
      d.pending, d.retrying, when(d.oldest_pending_since)]) cell(row, v);
    row.dataset.destination = d.name;
  });
}

function pendingDeliveries(health) {
  const shown = health.pending.length;
  $("pending-total").textContent = health.pending_total > shown
    ? `${health.pending_total} pending in all; the ${shown} due first are shown (Deliveries lists all).`
    : "";
  const headings = ["id", "state", "destination", "object", "job", "attempts", "next attempt", "last error"];
  table("pending-deliveries", headings, health.pending, (row, d) => {
    cell(row, d.id);
    cell(row, d.attempts > 0 ? "retrying" : "pending").className =
      d.attempts > 0 ? "delivery-state error" : "delivery-state";
    for (const v of [d.destination, d.sop_instance_uid, d.job_id, d.attempts, when(d.next_attempt_at),
      d.last_error]) cell(row, v);
  });
}

// The disk card: /api/storage (retention: what the spool and results take) when the node
// serves it, else the file system's figures from /api/health.
async function diskCard(health) {
  let storage = null;
  try { storage = await api("GET", "/api/storage"); } catch (e) { if (e.status !== 404) throw e; }
  const total = storage ? storage.storage_dir_total_bytes : health.disk.total_bytes;
  const free = storage ? storage.free_bytes : health.disk.free_bytes;
  const low = storage ? storage.low : health.disk.low;
  const rows = [
    ["free", `${byteSize(free)} of ${byteSize(total)} (${total ? Math.round((100 * free) / total) : 0} %)`],
  ];
  if (storage) {
    rows.push(["spool", byteSize(storage.spool_bytes)], ["results", byteSize(storage.results_bytes)],
      ["purgeable series", storage.purgeable_series], ["purged series", storage.purged_series]);
  }
  table("disk", ["storage folder", ""], rows, (row, [name, value]) => { cell(row, name); cell(row, value); });
  $("disk").rows[1].cells[1].className = low ? "error" : "ok";
  const warning = $("disk-warning");
  warning.hidden = !low;
  warning.textContent = low
    ? `Disk space low: ${byteSize(free)} free of ${byteSize(total)}, under ` +
      `${Math.round(100 * health.disk.min_free_fraction)} % (health.min_free_disk_fraction). ` +
      "A full disk refuses every C-STORE."
    : "";
}

// Time to result per priority class (p90 against its target) and per class and model.
async function timeToResult() {
  const t = await api("GET", "/api/time-to-result");
  table("time-to-result-classes", ["class", "jobs", "p90", "target", ""], t.by_class, (row, c) => {
    for (const v of [c.priority_class, c.count, `${c.p90_seconds} s`,
      c.target_seconds === null ? "none" : `${c.target_seconds} s`]) cell(row, v);
    const flag = cell(row, c.missed ? "target missed" : "");
    flag.className = c.missed ? "error" : "ok";
  });
  table("time-to-result", ["class", "model", "jobs", "median", "p90"], t.by_model, (row, m) => {
    for (const v of [m.priority_class, m.model_name, m.count, `${m.median_seconds} s`,
      `${m.p90_seconds} s`]) cell(row, v);
  });
}

async function dashboardHealth() {
  const health = await api("GET", "/api/health");
  destinationHealth(health);
  pendingDeliveries(health);
  await diskCard(health);
  await timeToResult();
}
