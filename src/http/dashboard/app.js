// vfi-orchestrator dashboard: plain JavaScript over the public API, no build step.
// Views (by URL hash): #/runs, #/runs/<id>, #/tasks, #/tasks/<name>.
// Live updates come from GET /v1/events, read with fetch() rather than EventSource because
// EventSource cannot send an Authorization header; it resumes with Last-Event-ID like
// EventSource would.
"use strict";

const CALCULATEPI = {
  image: "perl:5.34.0",
  command: ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"],
};
const FINAL = ["succeeded", "failed", "cancelled", "lost"];
const STATUSES = ["queued", "creating", "admitting", "pending", "running", ...FINAL];

const $ = (selector, root = document) => root.querySelector(selector);
const view = $("#view");
const listeners = new Set(); // (event) => void, for the current view

// ---- API ---------------------------------------------------------------------------------

// The token lives in sessionStorage: it is gone when the tab closes, and other sites' pages
// cannot read it.
function token() {
  return sessionStorage.getItem("vfi-token") || "";
}

// The service answered 401: ask for a token (again).
function askForToken(message) {
  $("#token-form").classList.add("needed");
  $("#token").focus();
  say(message);
}

function headers(extra = {}) {
  const h = { ...extra };
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: headers(options.body ? { "content-type": "application/json" } : {}),
  });
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (response.status === 401) {
    askForToken(token()
      ? "The token was refused (unknown or revoked): enter another one above."
      : "This installation needs an API token: enter it above.");
  }
  if (!response.ok) {
    const detail = body && (body.detail || body.title);
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return body;
}

function say(text, kind = "error") {
  const box = $("#message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

// ---- Formatting --------------------------------------------------------------------------

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function duration(run) {
  const start = run.startedAt || null;
  if (!start) return "";
  const end = run.finishedAt ? new Date(run.finishedAt) : new Date();
  let s = Math.max(0, Math.round((end - new Date(start)) / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  s %= 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

function badge(status) {
  return `<span class="badge ${esc(status)}">${esc(status)}</span>`;
}

function runName(run) {
  return `${run.task ? esc(run.task) : "ad hoc"} #${run.number}`;
}

// ---- Live events ---------------------------------------------------------------------------

async function followEvents() {
  let lastId = null;
  for (;;) {
    try {
      const h = headers({ accept: "text/event-stream" });
      if (lastId) h["Last-Event-ID"] = lastId;
      const response = await fetch("/v1/events", { headers: h });
      if (!response.ok) throw new Error(String(response.status));
      setLive(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("id:")) lastId = line.slice(3).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (data) {
            const event = JSON.parse(data);
            for (const listener of listeners) listener(event);
          }
        }
      }
    } catch (error) {
      // Reconnect below.
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function setLive(on) {
  const live = $("#live");
  live.className = "live " + (on ? "on" : "off");
  live.textContent = on ? "live" : "offline";
}

// ---- Runs ----------------------------------------------------------------------------------

function runRow(run) {
  const live = !FINAL.includes(run.status);
  return `<tr data-run-id="${esc(run.id)}" data-status="${esc(run.status)}">
    <td><a href="#/runs/${esc(run.id)}">${runName(run)}</a></td>
    <td>${run.task ? `<a href="#/tasks/${esc(run.task)}">${esc(run.task)}</a>` : '<span class="muted">ad hoc</span>'}</td>
    <td class="status" title="${esc(run.statusMessage || "")}">${badge(run.status)}${queueNote(run)}</td>
    <td>${esc(run.trigger)}</td>
    <td>${esc(when(run.startedAt || run.createdAt))}</td>
    <td class="num" data-duration>${esc(duration(run))}</td>
    <td>${live ? `<button class="danger" data-cancel="${esc(run.id)}">Cancel</button>` : ""}</td>
  </tr>`;
}

/// Why a waiting run waits, in a runs table: its place on its key and the reason.
function queueNote(run) {
  if (!run.queue) return "";
  return ` <span class="muted" data-queue data-queue-key="${esc(run.queue.key || "")}">#${esc(run.queue.position)} ${esc(run.queue.reason)}</span>`;
}

function runsTable(runs) {
  return `<table id="runs"><thead><tr><th>Run</th><th>Task</th><th>Status</th><th>Trigger</th>
    <th>Started</th><th>Duration</th><th></th></tr></thead>
    <tbody>${runs.map(runRow).join("")}</tbody></table>
    ${runs.length ? "" : '<p class="muted" id="no-runs">No runs yet.</p>'}`;
}

/// Keeps a runs table up to date: new and changed runs are fetched and (re)drawn.
function liveRuns(table, matches) {
  const known = new Map();
  const tick = setInterval(() => {
    for (const [id, run] of known) {
      const cell = table.querySelector(`tr[data-run-id="${id}"] [data-duration]`);
      if (cell && !run.finishedAt) cell.textContent = duration(run);
    }
  }, 1000);
  const listener = async (event) => {
    if (event.type === "queue.moved") {
      // The runs still waiting on the key moved up: redraw those shown.
      for (const note of table.querySelectorAll("[data-queue]")) {
        if (note.dataset.queueKey !== event.key) continue;
        const id = note.closest("tr").dataset.runId;
        listener({ type: "run.queue", runId: id });
      }
      return;
    }
    if (!event.type.startsWith("run.") || !event.runId) return;
    const row = table.querySelector(`tr[data-run-id="${event.runId}"]`);
    if (event.type === "run.pruned") {
      if (row) row.remove();
      return;
    }
    let run;
    try {
      run = await api(`/v1/runs/${event.runId}`);
    } catch (error) {
      return;
    }
    if (!matches(run)) return;
    known.set(run.id, run);
    const current = table.querySelector(`tr[data-run-id="${run.id}"]`);
    if (current) current.outerHTML = runRow(run);
    else table.querySelector("tbody").insertAdjacentHTML("afterbegin", runRow(run));
    const empty = $("#no-runs");
    if (empty) empty.remove();
  };
  listeners.add(listener);
  return () => {
    listeners.delete(listener);
    clearInterval(tick);
  };
}

async function cancelRun(id) {
  try {
    await api(`/v1/runs/${id}/cancel`, { method: "POST" });
  } catch (error) {
    say(`Cancel failed: ${error.message}`);
  }
}

async function showRuns(params) {
  const task = params.get("task") || "";
  const status = params.get("status") || "";
  const query = new URLSearchParams({ limit: "100" });
  if (task) query.set("task", task);
  if (status) query.set("status", status);
  const page = await api(`/v1/runs?${query}`);
  view.innerHTML = `<h1>Runs</h1>
    <form class="toolbar" id="filter">
      <label>Task <input name="task" value="${esc(task)}" placeholder="any"></label>
      <label>Status <select name="status"><option value="">any</option>
        ${STATUSES.map((s) => `<option ${s === status ? "selected" : ""}>${s}</option>`).join("")}
      </select></label>
      <button type="submit">Filter</button>
    </form>
    <details class="card" id="new-run"><summary>New ad-hoc run</summary>
      <form id="new-run-form">
        <p class="muted">A run template (JSON). The example is the calculatepi Job from the Kubernetes documentation.</p>
        <textarea name="template" rows="6">${esc(JSON.stringify(CALCULATEPI, null, 2))}</textarea>
        <p><button class="primary" type="submit" id="start-run">Start run</button></p>
      </form>
    </details>
    <div id="runs-table">${runsTable(page.items)}</div>`;
  $("#filter").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const next = new URLSearchParams();
    for (const key of ["task", "status"]) if (form.get(key)) next.set(key, form.get(key));
    location.hash = `#/runs?${next}`;
  });
  $("#new-run-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const template = JSON.parse(new FormData(e.target).get("template"));
      const run = await api("/v1/runs", { method: "POST", body: JSON.stringify({ template }) });
      say(`Started ${runName(run)}.`, "info");
    } catch (error) {
      say(`Start failed: ${error.message}`);
    }
  });
  const table = $("#runs-table");
  return liveRuns(table, (run) =>
    (!task || run.task === task) && (!status || status.split(",").includes(run.status)));
}

async function showRun(id) {
  const [run, pods, history] = await Promise.all([
    api(`/v1/runs/${id}`),
    api(`/v1/runs/${id}/pods`),
    api(`/v1/runs/${id}/events`),
  ]);
  const live = !FINAL.includes(run.status);
  view.innerHTML = `<h1>${runName(run)} ${badge(run.status)}</h1>
    <div class="actions">
      ${live ? `<button class="danger" data-cancel="${esc(run.id)}">Cancel</button>` : ""}
      <button id="rerun">Run again</button>
    </div>
    <h2>Run</h2>
    <div class="card"><dl>
      <dt>Id</dt><dd>${esc(run.id)}</dd>
      <dt>Task</dt><dd>${run.task ? `<a href="#/tasks/${esc(run.task)}">${esc(run.task)}</a>` : "ad hoc"}</dd>
      <dt>Trigger</dt><dd>${esc(run.trigger)}</dd>
      <dt>Status</dt><dd>${badge(run.status)} ${esc(run.statusReason || "")} ${esc(run.statusMessage || "")}</dd>
      <dt>Created</dt><dd>${esc(when(run.createdAt))}</dd>
      <dt>Started</dt><dd>${esc(when(run.startedAt))}</dd>
      <dt>Finished</dt><dd>${esc(when(run.finishedAt))}</dd>
      <dt>Duration</dt><dd>${esc(duration(run))}</dd>
      <dt>Job</dt><dd>${run.job ? esc(`${run.job.namespace}/${run.job.name}`) : '<span class="muted">not created yet</span>'}</dd>
      <dt>Launch</dt><dd>${esc(run.launch.attempts)} attempt(s) ${esc(run.launch.lastError || "")}</dd>
      <dt>Priority</dt><dd>${esc(run.priority)}</dd>
      ${run.params ? `<dt>Parameters</dt><dd id="params">${Object.entries(run.params).map(([k, v]) => `${esc(k)}=${esc(typeof v === "string" ? v : JSON.stringify(v))}`).join(", ")}</dd>` : ""}
      ${run.queueKey ? `<dt>Queue key</dt><dd>${esc(run.queueKey)}</dd>` : ""}
      ${run.queue ? `<dt>Waiting</dt><dd id="queue">position ${esc(run.queue.position)}: ${esc(run.queue.reason)}${run.queue.blockedBy.length ? `, behind ${run.queue.blockedBy.map((b) => `<a href="#/runs/${esc(b)}">${esc(b.slice(0, 8))}</a>`).join(", ")}` : ""}</dd>` : ""}
      ${run.supersededBy ? `<dt>Superseded by</dt><dd><a href="#/runs/${esc(run.supersededBy)}">${esc(run.supersededBy)}</a></dd>` : ""}
    </dl></div>
    <h2>Pods</h2>
    <table id="pods"><thead><tr><th>Pod</th><th>Node</th><th>Phase</th><th>Exit code</th><th>Reason</th><th>Restarts</th><th>Started</th><th>Finished</th></tr></thead>
    <tbody>${pods.map((p) => `<tr><td>${esc(p.name)}</td><td>${esc(p.nodeName)}</td><td>${esc(p.phase)}</td>
      <td>${esc(p.exitCode)}</td><td>${esc(p.reason)}</td><td>${esc(p.restarts)}</td>
      <td>${esc(when(p.startedAt))}</td><td>${esc(when(p.finishedAt))}</td></tr>`).join("")}</tbody></table>
    <h2>Logs <a href="/v1/runs/${esc(run.id)}/logs?follow=true" target="_blank">raw, followed</a></h2>
    <pre id="log" class="muted">Loading…</pre>
    <h2>History</h2>
    <table><thead><tr><th>At</th><th>Change</th><th>Reason</th></tr></thead><tbody>
    ${history.map((e) => `<tr><td>${esc(when(e.at))}</td><td>${e.kind === "queue" ? "waits in the queue " : e.previous ? `${badge(e.previous)} → ` : "created "}${badge(e.status)}</td>
      <td>${esc(e.reason || "")} ${esc(e.message || "")}</td></tr>`).join("")}</tbody></table>
    <h2>Template</h2><pre class="json">${esc(JSON.stringify(run.template, null, 2))}</pre>`;
  $("#rerun").addEventListener("click", async () => {
    try {
      const next = await api(`/v1/runs/${run.id}/rerun`, { method: "POST" });
      location.hash = `#/runs/${next.id}`;
    } catch (error) {
      say(`Run again failed: ${error.message}`);
    }
  });
  const controller = new AbortController();
  followLog(run.id, controller.signal);
  let redraw = null;
  const listener = (event) => {
    // A waiting run's place changes when runs leave its key's queue.
    const moved = event.type === "queue.moved" && run.queue && event.key === run.queue.key;
    if (event.runId !== run.id && !moved) return;
    clearTimeout(redraw);
    redraw = setTimeout(() => route(), 300);
  };
  listeners.add(listener);
  return () => {
    listeners.delete(listener);
    controller.abort();
    clearTimeout(redraw);
  };
}

/// Streams the run's log into the page, when this server has the logs endpoint.
async function followLog(id, signal) {
  const log = $("#log");
  try {
    const response = await fetch(`/v1/runs/${id}/logs?follow=true`, { headers: headers(), signal });
    if (response.status === 404 || response.status === 405) {
      log.textContent = "No log from this server (yet).";
      return;
    }
    if (!response.ok) {
      log.textContent = `No log: ${response.status}`;
      return;
    }
    log.textContent = "";
    log.classList.remove("muted");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      log.textContent += value;
    }
  } catch (error) {
    if (!signal.aborted) log.textContent = `No log: ${error.message}`;
  }
}

// ---- Tasks ---------------------------------------------------------------------------------

async function startTaskRun(name, params) {
  try {
    const body = JSON.stringify(params ? { params } : {});
    const run = await api(`/v1/tasks/${encodeURIComponent(name)}/runs`, { method: "POST", body });
    say(`Started ${runName(run)}.`, "info");
    return run;
  } catch (error) {
    say(`Start failed: ${error.message}`);
  }
}

/// One input of the start form, generated from a parameter's definition: a select for an enum,
/// a checkbox for a boolean, a password input for a secret (its value is never shown again).
function paramInput(p) {
  const id = `param-${p.name}`;
  const d = p.default;
  const attrs = `id="${esc(id)}" name="${esc(p.name)}" data-type="${esc(p.type || "string")}"${p.required && d === undefined ? " required" : ""}`;
  let input;
  if (p.type === "enum") {
    const blank = p.required || d !== undefined ? "" : '<option value=""></option>';
    input = `<select ${attrs}>${blank}${p.enum.map((v) => `<option${v === d ? " selected" : ""}>${esc(v)}</option>`).join("")}</select>`;
  } else if (p.type === "boolean") {
    input = `<input type="checkbox" ${attrs}${d === true ? " checked" : ""}>`;
  } else if (p.type === "secret") {
    input = `<input type="password" autocomplete="off" ${attrs}>`;
  } else if (p.type === "integer") {
    const range = `${p.minimum !== undefined ? ` min="${esc(p.minimum)}"` : ""}${p.maximum !== undefined ? ` max="${esc(p.maximum)}"` : ""}`;
    input = `<input type="number" step="1"${range} ${attrs} value="${esc(d ?? "")}">`;
  } else {
    input = `<input type="text" ${attrs} value="${esc(d ?? "")}">`;
  }
  return `<p><label for="${esc(id)}">${esc(p.name)}${p.required ? " *" : ""}</label> ${input}
    <span class="muted">${esc(p.description || "")}</span></p>`;
}

/// The values the start form holds, typed as the parameters want them (empty fields are left
/// out, so the task's defaults apply).
function formParams(form, parameters) {
  const params = {};
  for (const p of parameters) {
    const field = form.elements[p.name];
    if (p.type === "boolean") params[p.name] = field.checked;
    else if (field.value !== "") params[p.name] = p.type === "integer" ? Number(field.value) : field.value;
  }
  return params;
}

async function showTasks() {
  const page = await api("/v1/tasks?limit=1000");
  view.innerHTML = `<h1>Tasks</h1>
    <table id="tasks"><thead><tr><th>Task</th><th>Description</th><th>Image</th><th>Generation</th><th>Updated</th><th></th></tr></thead>
    <tbody>${page.items.map((t) => `<tr data-task="${esc(t.name)}">
      <td><a href="#/tasks/${esc(t.name)}">${esc(t.name)}</a></td><td>${esc(t.description || "")}</td>
      <td>${esc(t.template.image)}</td><td class="num">${esc(t.generation)}</td><td>${esc(when(t.updatedAt))}</td>
      <td>${t.parameters && t.parameters.length ? `<a class="button" href="#/tasks/${esc(t.name)}">Start run…</a>` : `<button class="primary" data-start="${esc(t.name)}">Start run</button>`}</td></tr>`).join("")}</tbody></table>
    ${page.items.length ? "" : '<p class="muted">No tasks yet. Create one with <code>PUT /v1/tasks/{name}</code>.</p>'}`;
  const listener = (event) => {
    if (event.type.startsWith("task.")) route();
  };
  listeners.add(listener);
  return () => listeners.delete(listener);
}

async function showTask(name) {
  const [task, runs] = await Promise.all([
    api(`/v1/tasks/${encodeURIComponent(name)}`),
    api(`/v1/runs?task=${encodeURIComponent(name)}&limit=20`),
  ]);
  const parameters = task.parameters || [];
  const start = parameters.length
    ? `<form id="start-form" class="card"><h2>Parameters</h2>${parameters.map(paramInput).join("")}
        <p><button class="primary" type="submit" id="start-task-run">Start run</button></p></form>`
    : `<div class="actions"><button class="primary" data-start="${esc(task.name)}">Start run</button></div>`;
  view.innerHTML = `<h1>${esc(task.name)}</h1>
    ${start}
    <p>${esc(task.description || "")}</p>
    <h2>Definition <span class="muted">(generation ${esc(task.generation)})</span></h2>
    <pre class="json">${esc(JSON.stringify(task.template, null, 2))}</pre>
    <h2>Recent runs</h2><div id="runs-table">${runsTable(runs.items)}</div>`;
  const form = $("#start-form");
  if (form) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const run = await startTaskRun(task.name, formParams(form, parameters));
      if (run) location.hash = `#/runs/${run.id}`;
    });
  }
  return liveRuns($("#runs-table"), (run) => run.task === task.name);
}

// ---- Routing -------------------------------------------------------------------------------

let leave = null;

async function route() {
  if (leave) leave();
  leave = null;
  const [path, query] = (location.hash.slice(1) || "/runs").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === parts[0]);
  }
  try {
    if (parts[0] === "tasks" && parts[1]) leave = await showTask(parts[1]);
    else if (parts[0] === "tasks") leave = await showTasks();
    else if (parts[0] === "runs" && parts[1]) leave = await showRun(parts[1]);
    else leave = await showRuns(params);
  } catch (error) {
    view.innerHTML = `<h1>Not available</h1><p>${esc(error.message)}</p>`;
  }
}

document.addEventListener("click", async (e) => {
  const cancel = e.target.closest("[data-cancel]");
  if (cancel) await cancelRun(cancel.dataset.cancel);
  const start = e.target.closest("[data-start]");
  if (start) {
    const run = await startTaskRun(start.dataset.start);
    if (run) location.hash = `#/runs/${run.id}`;
  }
});

$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("vfi-token", $("#token").value.trim());
  $("#token-form").classList.remove("needed");
  say("Token saved for this tab.", "info");
  route();
});
$("#token").value = token();

window.addEventListener("hashchange", () => {
  say("");
  route();
});
route();
followEvents();
