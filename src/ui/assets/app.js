// Exemplar's annotation page. It speaks only the public API (openapi.yaml), so it can do
// nothing that a curl user cannot; every failure shows the API's own error message.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "exemplar.key";
const TASK = "exemplar.task";
const UPLOAD_BATCH = 200;
const PAGE = 50;

// ---- the API -------------------------------------------------------------------------

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = { accept: "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.authorization = `Bearer ${key}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return { status: 204, body: null };
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!response.ok) {
    const error = json && json.error;
    throw new ApiError(error ? `${error.code}: ${error.message}` : `HTTP ${response.status}: ${text}`);
  }
  return { status: response.status, body: json };
}

const taskPath = (suffix = "") => `/v1/tasks/${encodeURIComponent(currentTask())}${suffix}`;

function showError(error) {
  const box = $("error");
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

// Runs an action started by the person, showing what the API answered if it failed.
function guarded(action) {
  return async (event) => {
    if (event) event.preventDefault();
    clearError();
    try {
      await action(event);
    } catch (error) {
      showError(error);
    }
  };
}

function currentTask() {
  return sessionStorage.getItem(TASK) || "";
}

function requireTask() {
  if (!currentTask()) throw new Error("Pick a task first (or create one on the Tasks page).");
  return currentTask();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    if (cell instanceof Node) {
      const td = document.createElement("td");
      td.append(cell);
      tr.append(td);
    } else {
      tr.append(element("td", String(cell), typeof cell === "number" ? "num" : undefined));
    }
  }
  return tr;
}

const percent = (x) => `${(100 * x).toFixed(1)} %`;

// ---- files: JSON lines or CSV with a header --------------------------------------------

function parseCsv(text) {
  const rows = [];
  let field = "";
  let record = [];
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { record.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      record.push(field); field = "";
      if (record.some((f) => f !== "")) rows.push(record);
      record = [];
    } else field += c;
  }
  record.push(field);
  if (record.some((f) => f !== "")) rows.push(record);
  if (rows.length === 0) return [];
  const header = rows[0].map((h) => h.trim());
  return rows.slice(1).map((values) => Object.fromEntries(header.map((h, i) => [h, values[i] ?? ""])));
}

// The rows of a file; a row without a `required` field is refused with its line number
// before anything is sent.
async function readRows(file, required) {
  const text = await file.text();
  const csv = /\.csv$/i.test(file.name);
  const records = csv
    ? parseCsv(text)
    : text.split(/\r?\n/).filter((line) => line.trim()).map((line, i) => {
        try { return JSON.parse(line); } catch (_) { throw new Error(`${file.name}, line ${i + 1}: not JSON`); }
      });
  return records.map((record, i) => {
    for (const field of required) {
      if (typeof record[field] !== "string" || !record[field]) {
        throw new Error(`${file.name}, ${csv ? "row" : "line"} ${i + 1}: no "${field}"`);
      }
    }
    const out = {};
    for (const field of ["id", "text", "text_pair", "label"]) {
      if (record[field] !== undefined && record[field] !== "") out[field] = String(record[field]);
    }
    return out;
  });
}

// ---- views ------------------------------------------------------------------------------

const views = {};

function show(name) {
  const view = views[name] ? name : "tasks";
  for (const section of document.querySelectorAll(".view")) {
    section.classList.toggle("active", section.id === `view-${view}`);
  }
  for (const link of document.querySelectorAll("#tabs a")) {
    link.classList.toggle("active", link.dataset.view === view);
  }
  clearError();
  views[view]().catch(showError);
}

async function refreshTaskPicker() {
  const { body } = await api("GET", "/v1/tasks");
  const picker = $("task-picker");
  picker.replaceChildren(new Option("(none)", ""));
  for (const task of body.tasks) picker.append(new Option(task.name, task.name));
  if (!body.tasks.some((t) => t.name === currentTask())) sessionStorage.removeItem(TASK);
  picker.value = currentTask();
  return body.tasks;
}

function pickTask(name) {
  sessionStorage.setItem(TASK, name);
  $("task-picker").value = name;
}

// Tasks: the list with counts, and a form with a live preview.
views.tasks = async () => {
  const tasks = await refreshTaskPicker();
  const body = $("task-table").querySelector("tbody");
  body.replaceChildren();
  for (const task of tasks) {
    const open = element("button", "Open", "secondary");
    open.addEventListener("click", () => { pickTask(task.name); location.hash = "#pool"; });
    body.append(row([task.name, task.labels.join(", "), task.counts.examples, task.counts.pool, open]));
  }
  renderPreview();
};

function taskLabels() {
  return $("task-labels").value.split(",").map((l) => l.trim()).filter(Boolean);
}

function renderPreview() {
  const labels = taskLabels();
  const fill = (template, text, label) =>
    template.replaceAll("{text}", text).replaceAll("{text_pair}", "(second text)").replaceAll("{label}", label);
  const demonstration = `${fill($("task-input").value, "an example text", "")}\n${fill($("task-output").value, "", labels[0] || "(output)")}`;
  const instruction = $("task-instruction").value.trim();
  $("task-preview").textContent = instruction ? `${instruction}\n\n${demonstration}` : demonstration;
}

async function createTask() {
  const name = $("task-name").value.trim();
  const spec = {
    labels: taskLabels(),
    instruction: $("task-instruction").value.trim(),
    template: { input: $("task-input").value, output: $("task-output").value },
  };
  const { status } = await api("PUT", `/v1/tasks/${encodeURIComponent(name)}`, spec);
  pickTask(name);
  await views.tasks();
  $("task-status").textContent = `${status === 201 ? "Created" : "Replaced"} ${name}.`;
}

// Pool: upload with a progress bar, a paged list with deletes.
let poolCursor = null;

views.pool = async () => {
  requireTask();
  $("pool-table").querySelector("tbody").replaceChildren();
  poolCursor = null;
  await Promise.all([poolPage(), poolCount()]);
};

async function poolCount() {
  const { body } = await api("GET", taskPath());
  $("pool-count").textContent = `${currentTask()}: ${body.counts.pool} items, ${body.counts.examples} annotated examples`;
}

async function poolPage() {
  const cursor = poolCursor ? `&cursor=${encodeURIComponent(poolCursor)}` : "";
  const { body } = await api("GET", taskPath(`/pool?limit=${PAGE}${cursor}`));
  const rows = $("pool-table").querySelector("tbody");
  for (const item of body.items) {
    const remove = element("button", "Delete", "delete");
    const tr = row([item.id, item.text, remove]);
    remove.addEventListener("click", guarded(async () => {
      await api("DELETE", taskPath(`/pool/${encodeURIComponent(item.id)}`));
      tr.remove();
      await poolCount();
    }));
    rows.append(tr);
  }
  poolCursor = body.next_cursor;
  $("pool-more").hidden = !poolCursor;
}

async function uploadPool() {
  requireTask();
  const file = $("pool-file").files[0];
  if (!file) throw new Error("Choose a file first.");
  const items = (await readRows(file, ["text"])).map(({ id, text, text_pair }) => ({ id, text, text_pair }));
  const progress = $("pool-progress");
  progress.hidden = false;
  progress.max = items.length;
  progress.value = 0;
  for (let start = 0; start < items.length; start += UPLOAD_BATCH) {
    await api("POST", taskPath("/pool"), { items: items.slice(start, start + UPLOAD_BATCH) });
    progress.value = Math.min(start + UPLOAD_BATCH, items.length);
    $("pool-status").textContent = `${progress.value} of ${items.length} uploaded`;
  }
  await views.pool();
}

// Select: run a method, watch vote-k's stage 2.
const selectionKey = () => `exemplar.selection.${currentTask()}`;

views.select = async () => {
  requireTask();
  const id = sessionStorage.getItem(selectionKey());
  $("selection").hidden = !id;
  if (id) await watchSelection(id);
};

async function runSelection() {
  requireTask();
  const request = {
    method: $("select-method").value,
    budget: Number($("select-budget").value),
    seed: Number($("select-seed").value),
  };
  const { body } = await api("POST", taskPath("/selections"), request);
  sessionStorage.setItem(selectionKey(), body.id);
  $("selection").hidden = false;
  await watchSelection(body.id);
}

async function loadSelection(id) {
  return (await api("GET", taskPath(`/selections/${encodeURIComponent(id)}`))).body;
}

// Shows the selection, polling while stage 2 predicts.
async function watchSelection(id) {
  for (;;) {
    const selection = await loadSelection(id);
    renderSelection(selection);
    if (selection.state !== "predicting" || !$("view-select").classList.contains("active")) return selection;
    await sleep(1000);
  }
}

function renderSelection(selection) {
  const done = selection.items.filter((i) => i.annotated).length;
  const states = {
    complete: "complete",
    awaiting_annotation: "stage 1 chosen: annotate these, then continue",
    predicting: "stage 2: predicting the pool",
  };
  let text = `${selection.method}, budget ${selection.budget}: ${states[selection.state] || selection.state}; ${selection.items.length} items, ${done} annotated`;
  if (selection.error) text += ` (error: ${selection.error})`;
  $("selection-state").textContent = text;
  const progress = $("selection-progress");
  progress.hidden = !selection.progress;
  if (selection.progress) {
    progress.max = Math.max(1, selection.progress.of);
    progress.value = selection.progress.done;
    $("selection-state").textContent += ` (${selection.progress.done} of ${selection.progress.of})`;
  }
  const list = $("selection-items");
  list.replaceChildren(...selection.items.map((item) => element("li", item.text, item.annotated ? "done" : undefined)));
}

// Annotate: one item at a time, a label per key, every label saved at once.
const annotation = { selection: null, queue: [], history: [], labels: [], total: 0 };

views.annotate = async () => {
  requireTask();
  const id = sessionStorage.getItem(selectionKey());
  if (!id) throw new Error("Run a selection first (Select page).");
  const [selection, task] = await Promise.all([loadSelection(id), api("GET", taskPath())]);
  annotation.selection = selection;
  annotation.labels = task.body.labels;
  annotation.total = selection.items.length;
  annotation.queue = selection.items.filter((i) => !i.annotated);
  annotation.history = [];
  const buttons = $("annotate-labels");
  buttons.replaceChildren(...annotation.labels.map((label, i) => {
    const button = element("button");
    if (i < 9) button.append(element("kbd", String(i + 1)));
    button.append(label);
    button.dataset.label = label;
    button.addEventListener("click", guarded(() => annotate(label)));
    return button;
  }));
  renderAnnotation();
};

function renderAnnotation() {
  const left = annotation.queue.length;
  const done = annotation.total - left;
  $("annotate-count").textContent = `${done} done, ${left} left of ${annotation.total}`;
  const item = annotation.queue[0];
  $("annotate-card").hidden = !item;
  $("annotate-done").hidden = Boolean(item);
  if (item) {
    $("annotate-text").textContent = item.text;
    $("annotate-undo").disabled = annotation.history.length === 0;
  } else {
    const more = annotation.selection && !annotation.selection.complete;
    $("annotate-done-text").textContent = more
      ? "Stage 1 is annotated. Continue to let vote-k choose the rest."
      : "Every selected item is annotated.";
    $("annotate-continue").hidden = !more;
  }
}

let saving = false;

async function annotate(label) {
  const item = annotation.queue[0];
  if (!item || saving) return;
  saving = true;
  try {
    await api("POST", taskPath("/examples"), { examples: [{ id: item.id, text: item.text, label }] });
  } finally {
    saving = false;
  }
  annotation.queue.shift();
  annotation.history.push(item);
  renderAnnotation();
}

function skip() {
  if (annotation.queue.length > 1) annotation.queue.push(annotation.queue.shift());
  renderAnnotation();
}

async function undo() {
  const item = annotation.history.pop();
  if (!item) return;
  await api("DELETE", taskPath(`/examples/${encodeURIComponent(item.id)}`));
  annotation.queue.unshift(item);
  renderAnnotation();
}

async function continueSelection() {
  await api("POST", taskPath(`/selections/${encodeURIComponent(annotation.selection.id)}/continue`));
  location.hash = "#select";
}

function onKey(event) {
  if (!$("view-annotate").classList.contains("active") || $("annotate-card").hidden) return;
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const digit = Number(event.key);
  if (Number.isInteger(digit) && digit >= 1 && digit <= Math.min(9, annotation.labels.length)) {
    guarded(() => annotate(annotation.labels[digit - 1]))();
  } else if (event.key === "s") {
    skip();
  } else if (event.key === "u") {
    guarded(undo)();
  }
}

// Evaluate: leave-one-out or a test file, as a background job with progress.
views.evaluate = async () => { requireTask(); };

async function evaluate() {
  requireTask();
  const request = { k: Number($("eval-k").value), background: true };
  if (document.querySelector("input[name=eval-source]:checked").value === "file") {
    const file = $("eval-file").files[0];
    if (!file) throw new Error("Choose a test file first.");
    request.examples = (await readRows(file, ["text", "label"])).map(({ text, text_pair, label }) => ({ text, text_pair, label }));
  } else {
    request.leave_one_out = true;
  }
  $("eval-result").hidden = true;
  const progress = $("eval-progress");
  progress.hidden = false;
  progress.value = 0;
  let job = (await api("POST", taskPath("/evaluate"), request)).body;
  while (job.state === "running") {
    progress.max = Math.max(1, job.progress.of);
    progress.value = job.progress.done;
    const speed = job.progress.rows_per_second ? `, ${job.progress.rows_per_second.toFixed(2)} rows/s` : "";
    const running = job.progress.accuracy !== undefined ? `, accuracy so far ${percent(job.progress.accuracy)}` : "";
    $("eval-status").textContent = `${job.progress.done} of ${job.progress.of} rows${speed}${running}`;
    await sleep(1000);
    job = (await api("GET", taskPath(`/evaluations/${encodeURIComponent(job.id)}`))).body;
  }
  progress.value = progress.max;
  if (job.state !== "complete") throw new Error(`The evaluation ${job.state}${job.error ? `: ${job.error}` : ""}`);
  $("eval-status").textContent = `${job.result.n} rows evaluated`;
  renderEvaluation(job.result);
}

function renderEvaluation(result) {
  $("eval-result").hidden = false;
  $("eval-accuracy").textContent = `Accuracy ${percent(result.accuracy)}`;
  $("eval-f1").textContent = `macro-F1 ${percent(result.macro_f1)}`;
  $("eval-per-label").querySelector("tbody").replaceChildren(...result.per_label.map((l) =>
    row([l.label, l.precision.toFixed(3), l.recall.toFixed(3), l.f1.toFixed(3), l.support])));
  const table = $("eval-confusion");
  const header = document.createElement("tr");
  header.append(element("th", "gold \\ predicted"), ...result.labels.map((l) => element("th", l)));
  const largest = Math.max(1, ...result.confusion.flat());
  const rows = result.confusion.map((counts, gold) => {
    const tr = document.createElement("tr");
    tr.append(element("th", result.labels[gold]));
    for (const count of counts) {
      const td = element("td", String(count));
      const strength = count / largest;
      td.style.background = `rgba(47, 93, 158, ${strength.toFixed(3)})`;
      td.style.color = strength > 0.55 ? "#fff" : "#1d1d1f";
      tr.append(td);
    }
    return tr;
  });
  table.replaceChildren(header, ...rows);
}

// Try it: a prediction with its probabilities, demonstrations and prompt.
views.try = async () => { requireTask(); };

async function tryPrediction() {
  requireTask();
  const text = $("try-text").value.trim();
  if (!text) throw new Error("Type a text first.");
  const request = {
    inputs: [{ text }],
    k: Number($("try-k").value),
    strategy: $("try-strategy").value,
    calibrate: $("try-calibrate").checked,
    return_prompt: true,
  };
  const prediction = (await api("POST", taskPath("/predict"), request)).body.predictions[0];
  const examples = await Promise.all(prediction.demonstrations.map((d) =>
    api("GET", taskPath(`/examples/${encodeURIComponent(d.id)}`)).then((r) => r.body)));
  $("try-result").hidden = false;
  $("try-label").textContent = prediction.label ?? prediction.output;
  const bars = Object.entries(prediction.probabilities || {}).sort((a, b) => b[1] - a[1]).map(([label, p]) => {
    const bar = element("div", undefined, "bar");
    const track = element("div", undefined, "track");
    const fill = element("div", undefined, "fill");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    bar.append(element("span", label), track, element("span", p.toFixed(3)));
    return bar;
  });
  $("try-bars").replaceChildren(...bars);
  $("try-demos").querySelector("tbody").replaceChildren(...prediction.demonstrations.map((d, i) =>
    row([i + 1, d.similarity.toFixed(3), examples[i].label ?? "", examples[i].text])));
  $("try-tokens").textContent = `(${prediction.prompt_tokens} tokens)`;
  $("try-prompt").textContent = prediction.prompt ?? "";
}

// ---- wiring -----------------------------------------------------------------------------

function start() {
  $("api-key").value = sessionStorage.getItem(KEY) || "";
  $("key-state").textContent = sessionStorage.getItem(KEY) ? "key in use" : "";
  $("key-form").addEventListener("submit", guarded(async () => {
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
    $("key-state").textContent = key ? "key in use" : "";
    await refreshTaskPicker();
    show(location.hash.slice(1));
  }));
  $("task-picker").addEventListener("change", (e) => {
    if (e.target.value) sessionStorage.setItem(TASK, e.target.value); else sessionStorage.removeItem(TASK);
    show(location.hash.slice(1));
  });
  for (const id of ["task-labels", "task-instruction", "task-input", "task-output"]) {
    $(id).addEventListener("input", renderPreview);
  }
  $("task-form").addEventListener("submit", guarded(createTask));
  $("pool-form").addEventListener("submit", guarded(uploadPool));
  $("pool-more").addEventListener("click", guarded(poolPage));
  $("select-form").addEventListener("submit", guarded(runSelection));
  $("selection-annotate").addEventListener("click", () => { location.hash = "#annotate"; });
  $("annotate-skip").addEventListener("click", skip);
  $("annotate-undo").addEventListener("click", guarded(undo));
  $("annotate-continue").addEventListener("click", guarded(continueSelection));
  $("eval-form").addEventListener("submit", guarded(evaluate));
  $("try-form").addEventListener("submit", guarded(tryPrediction));
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  refreshTaskPicker().catch(showError).finally(() => show(location.hash.slice(1)));
}

start();
