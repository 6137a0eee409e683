// The web UI: search, a page's heatmap, uploads with job progress, documents. Plain modules, no
// build step, no inline script (the page is served with a strict Content-Security-Policy); every
// request goes through `api`, which adds the API key when one is set.

const $ = (selector) => document.querySelector(selector);
const state = { key: sessionStorage.getItem("colqwen-key") || "", hit: null, token: null };

// --- the API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body.detail || body.error || `HTTP ${status}`);
    this.status = status;
    this.code = body.error;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) needKey();
  if (!response.ok) {
    let body = {};
    try { body = await response.json(); } catch { /* not JSON */ }
    throw new ApiError(response.status, body);
  }
  return response;
}

const json = async (path, options) => (await api(path, options)).json();

// Images need the key too: fetch them, and show them from blob URLs.
const objectUrls = new Set();
async function loadImage(img, url) {
  const blob = await (await api(url)).blob();
  const src = URL.createObjectURL(blob);
  objectUrls.add(src);
  img.src = src;
}

function say(text, error = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

function needKey() {
  $("#key-form").hidden = false;
  say("This server needs an API key: enter it above.", true);
  $("#api-key").focus();
}

const collection = () => $("#collection").value.trim();
const withCollection = (params = {}) => {
  const c = collection();
  return new URLSearchParams(c ? { ...params, collection: c } : params).toString();
};

const plural = (n, noun) => `${n.toLocaleString()} ${n === 1 ? noun : `${noun}s`}`;

// A file name that wraps after its separators (/ _ - .), not in the middle of a word.
function wrappable(name) {
  const span = document.createElement("span");
  span.className = "name";
  for (const part of name.split(/(?<=[/_\-.])/)) span.append(part, document.createElement("wbr"));
  return span;
}

// --- collections: the picker, and the start page --------------------------------------

let collections = [];

async function loadCollections() {
  try {
    collections = (await json("/v1/collections")).data;
  } catch (error) {
    collections = [];
    if (error.status !== 401) say(error.message, true);
  }
  $("#collections").replaceChildren(...collections.map((c) => {
    const option = document.createElement("option");
    option.value = c.name;
    option.label = `${c.name}: ${plural(c.documents, "document")}, ${plural(c.pages, "page")}`;
    return option;
  }));
  welcome();
}

function welcome() {
  const box = $("#welcome");
  if ($("#results").children.length) {
    box.hidden = true;
    return;
  }
  const name = collection() || collections.find((c) => c.default)?.name;
  const current = collections.find((c) => c.name === name);
  const text = document.createElement("p");
  const add = document.createElement("p");
  if (current && current.pages) {
    text.textContent = `Collection “${current.name}” holds ${plural(current.documents, "document")}`
      + ` (${plural(current.pages, "page")}). Ask for what a page shows or says.`;
    add.textContent = "Add more under Documents, or with `colqwen ingest FOLDER`.";
  } else {
    text.textContent = name
      ? `Collection “${name}” is empty.`
      : "There is nothing to search yet.";
    add.textContent = "Add PDFs or images under Documents (drop them there), or run "
      + "`colqwen ingest FOLDER` on the server.";
  }
  box.replaceChildren(text, add);
  box.hidden = false;
}

// --- tabs -------------------------------------------------------------------------------

function show(tab) {
  for (const button of document.querySelectorAll("[data-tab]")) {
    const on = button.dataset.tab === tab;
    button.setAttribute("aria-pressed", String(on));
    $(`#${button.dataset.tab}`).hidden = !on;
  }
  say("");  // a message belongs to the tab it came from
  if (tab === "documents") listDocuments();
  else loadCollections();
}

// --- search -----------------------------------------------------------------------------

async function search(event) {
  event.preventDefault();
  const body = {
    query: $("#query").value.trim(),
    mode: $("#mode").value,
    top_k: Number($("#top-k").value) || 12,
    explain: $("#mode").value !== "text",  // text search loads no model: nothing to map
  };
  if (collection()) body.collection = collection();
  const filter = $("#filter").value.trim();
  if (filter) {
    try { body.filter = JSON.parse(filter); } catch {
      say("The filter is not valid JSON.", true);
      return;
    }
  }
  say("Searching…");
  const results = $("#results");
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls.clear();
  try {
    const found = await json("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    results.replaceChildren(...found.hits.map((hit, i) => card(hit, i + 1, body.query)));
    $("#welcome").hidden = true;
    say(found.hits.length
      ? `${plural(found.hits.length, "page")} in ${Math.round(found.took_ms)} ms`
      : "No page matched.");
  } catch (error) {
    results.replaceChildren();
    welcome();
    say(error.message, true);
  }
}

// The query's words in ``text`` marked (<mark>), built as DOM nodes: never as HTML.
function highlighted(text, query) {
  const words = [...new Set(query.toLowerCase().match(/[\p{L}\p{N}_]{2,}/gu) || [])];
  const out = document.createElement("p");
  out.className = "snippet";
  if (!words.length) {
    out.textContent = text;
    return out;
  }
  const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const pattern = new RegExp(`(?<![\\p{L}\\p{N}_])(${escaped.join("|")})(?![\\p{L}\\p{N}_])`, "giu");
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    out.append(text.slice(last, match.index));
    const mark = document.createElement("mark");
    mark.textContent = match[0];
    out.append(mark);
    last = match.index + match[0].length;
  }
  out.append(text.slice(last));
  return out;
}

function card(hit, rank, query) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  const img = document.createElement("img");
  img.alt = `${hit.source}, page ${hit.page}`;
  img.loading = "lazy";
  loadImage(img, `${hit.image_url}&width=240`).catch((e) => say(e.message, true));
  const meta = document.createElement("span");
  meta.className = "meta";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `#${rank} · ${hit.score.toFixed(3)}`;
  meta.append(score, document.createElement("br"), wrappable(hit.source), ` · page ${hit.page}`);
  button.append(img, meta);
  if (hit.snippet) button.append(highlighted(hit.snippet, query));
  button.addEventListener("click", () => openHit(hit));
  item.append(button);
  return item;
}

// --- a page, large, with its heatmap ------------------------------------------------------

function openHit(hit) {
  state.hit = hit;
  state.token = null;
  $("#viewer-title").textContent = `${hit.source}, page ${hit.page} (score ${hit.score.toFixed(3)})`;
  const tokens = $("#tokens");
  const all = tokenButton("all query words", null);
  const rest = (hit.explanation?.tokens || []).map((t) =>
    tokenButton(JSON.stringify(t.text.trim() || t.text), t.index));
  tokens.replaceChildren(...(hit.explanation ? [all, ...rest] : []));
  for (const id of ["#show-map", "#opacity"]) $(id).disabled = !hit.explanation;
  $("#viewer").showModal();
  drawPage();
}

function tokenButton(label, index) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.dataset.token = index === null ? "" : String(index);
  button.setAttribute("aria-pressed", String(index === state.token));
  button.addEventListener("click", () => {
    state.token = index;
    for (const b of document.querySelectorAll("#tokens button")) {
      b.setAttribute("aria-pressed", String(b === button));
    }
    $("#show-map").checked = true;
    drawPage();
  });
  return button;
}

// The page, and over it the same page with its heatmap drawn: the opacity slider fades the
// map in and out without asking the server again.
function drawPage() {
  const hit = state.hit;
  if (!hit) return;
  const page = $("#page-large");
  const map = $("#page-map");
  page.alt = `${hit.source}, page ${hit.page}`;
  loadImage(page, `${hit.image_url}&width=1000`).catch((e) => say(e.message, true));
  const showMap = $("#show-map").checked && hit.explanation;
  map.hidden = !showMap;
  if (showMap) {
    let url = `${hit.explanation.heatmap_url}&width=1000`;
    if (state.token !== null) url += `&token=${state.token}`;
    loadImage(map, url).catch((e) => say(e.message, true));
  }
  fade();
}

function fade() {
  $("#page-map").style.opacity = String(Number($("#opacity").value) / 100);
}

// --- uploads: every file at once, each with its own progress and outcome ------------------

function uploadRow(file) {
  const row = document.createElement("li");
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = 0;
  bar.setAttribute("aria-label", `${file.name} progress`);
  const status = document.createElement("span");
  status.className = "outcome";
  status.textContent = "uploading";
  row.append(wrappable(file.name), bar, status);
  $("#uploads").append(row);
  return { row, bar, status };
}

function upload(files) {
  const metadata = $("#upload-metadata").value.trim();
  if (metadata) {
    try {
      const parsed = JSON.parse(metadata);
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error();
    } catch {
      say("The metadata must be a JSON object, e.g. {\"team\": \"finance\"}.", true);
      return Promise.resolve();
    }
  }
  const password = $("#upload-password").value;
  say(`Uploading ${plural(files.length, "file")}…`);
  const all = files.map((file) => uploadOne(file, metadata, password));
  return Promise.all(all).then((outcomes) => {
    const counts = {};
    for (const outcome of outcomes) counts[outcome] = (counts[outcome] || 0) + 1;
    const parts = Object.entries(counts).map(([outcome, n]) => `${n} ${outcome}`);
    say(`${plural(files.length, "file")}: ${parts.join(", ")}.`, Boolean(counts.failed));
    listDocuments();
    loadCollections();
  });
}

// One file: sent with upload progress (XMLHttpRequest reports it; fetch does not), then its
// ingestion job followed until it ends.
async function uploadOne(file, metadata, password) {
  const { row, bar, status } = uploadRow(file);
  const form = new FormData();
  form.append("file", file);
  if (collection()) form.append("collection", collection());
  if (metadata) form.append("metadata", metadata);
  if (password) form.append("password", password);
  try {
    const { status: code, body } = await send(form, (sent) => {
      bar.value = sent / 2;  // the first half of the bar: the bytes; the second: the pages
    });
    if (code === 200) {
      bar.value = 1;
      status.textContent = "already indexed";
      row.dataset.outcome = "indexed";
    } else {
      await follow(body.job_id, bar, status, row);
    }
  } catch (error) {
    status.textContent = `failed: ${error.message}`;
    row.dataset.outcome = "failed";
  }
  return row.dataset.outcome;
}

function send(form, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/documents");
    if (state.key) request.setRequestHeader("Authorization", `Bearer ${state.key}`);
    request.responseType = "json";
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    request.addEventListener("load", () => {
      const body = request.response || {};
      if (request.status === 401) needKey();
      if (request.status >= 400) reject(new ApiError(request.status, body));
      else resolve({ status: request.status, body });
    });
    request.addEventListener("error", () => reject(new Error("the connection failed")));
    request.send(form);
  });
}

async function follow(jobId, bar, status, row) {
  for (;;) {
    const job = await json(`/v1/jobs/${jobId}`);
    if (job.pages_total) bar.value = 0.5 + 0.5 * (job.pages_done / job.pages_total);
    status.textContent = job.status === "running" && job.pages_total
      ? `${job.pages_done} / ${plural(job.pages_total, "page")}`
      : job.status;
    if (job.status === "done") {
      bar.value = 1;
      status.textContent = `indexed (${plural(job.pages_total, "page")})`;
      row.dataset.outcome = "indexed";
      return;
    }
    if (job.status === "failed" || job.status === "cancelled") {
      status.textContent = `${job.status}: ${job.error || ""}`;
      row.dataset.outcome = job.status;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function setUpDrop() {
  const drop = $("#drop");
  const input = $("#files");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => {
    upload([...input.files]);
    input.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    upload([...event.dataTransfer.files]);
  });
}

// --- documents --------------------------------------------------------------------------

let documents = [];

async function listDocuments() {
  try {
    documents = (await json(`/v1/documents?${withCollection({ limit: 1000 })}`)).data;
  } catch (error) {
    documents = [];
    if (error.status !== 404) say(error.message, true);
  }
  renderDocuments();
}

function renderDocuments() {
  const body = $("#doc-table tbody");
  const wanted = $("#doc-filter").value.trim().toLowerCase();
  const shown = documents.filter((doc) => !wanted || [
    doc.name, doc.doc_id, doc.status, doc.error || "", JSON.stringify(doc.metadata),
  ].some((text) => text.toLowerCase().includes(wanted)));
  $("#doc-count").textContent = documents.length
    ? `(${wanted ? `${shown.length} of ` : ""}${plural(documents.length, "document")})`
    : "";
  body.replaceChildren(...(shown.length ? shown.map(documentRow) : [emptyRow(wanted)]));
}

function emptyRow(filtered) {
  const row = document.createElement("tr");
  const cell = document.createElement("td");
  cell.colSpan = 7;
  cell.textContent = filtered ? "No document matches the filter." : "No documents yet: drop some above.";
  row.append(cell);
  return row;
}

function cellOf(content, className) {
  const cell = document.createElement("td");
  if (className) cell.className = className;
  cell.append(content);
  return cell;
}

function documentRow(doc) {
  const row = document.createElement("tr");
  row.dataset.doc = doc.doc_id;
  const id = document.createElement("code");
  id.textContent = doc.doc_id.slice(0, 12);
  id.title = doc.doc_id;
  const status = document.createElement("span");
  status.textContent = doc.status;
  if (doc.error) {
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = doc.error;
    status.append(document.createElement("br"), reason);
  }
  const added = document.createElement("time");
  added.dateTime = doc.created_at;
  added.textContent = doc.created_at ? new Date(doc.created_at).toLocaleString() : "";
  const meta = Object.keys(doc.metadata || {}).length ? JSON.stringify(doc.metadata) : "";
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Delete";
  remove.setAttribute("aria-label", `Delete ${doc.name}`);
  remove.addEventListener("click", async () => {
    if (!confirm(`Delete ${doc.name} (${plural(doc.page_count, "page")})?`)) return;
    try {
      await api(`/v1/documents/${doc.doc_id}?${withCollection()}`, { method: "DELETE" });
      say(`Deleted ${doc.name}.`);
    } catch (error) {
      say(error.message, true);
    }
    listDocuments();
  });
  row.append(
    cellOf(wrappable(doc.name)),
    cellOf(id),
    cellOf(String(doc.page_count)),
    cellOf(status, doc.status === "failed" ? "failed" : ""),
    cellOf(added),
    cellOf(meta, "metadata"),
    cellOf(remove),
  );
  return row;
}

// --- start ------------------------------------------------------------------------------

function start() {
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  $("#search-form").addEventListener("submit", search);
  $("#show-map").addEventListener("change", drawPage);
  $("#opacity").addEventListener("input", fade);
  $("#refresh").addEventListener("click", listDocuments);
  $("#doc-filter").addEventListener("input", renderDocuments);
  $("#upload-form").addEventListener("submit", (event) => event.preventDefault());
  $("#collection").addEventListener("change", () => {
    welcome();
    if (!$("#documents").hidden) listDocuments();
  });
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#api-key").value.trim();
    sessionStorage.setItem("colqwen-key", state.key);
    say("Key set.");
    loadCollections();
    if (!$("#documents").hidden) listDocuments();
  });
  setUpDrop();
  loadCollections();  // also finds out early whether this server wants a key
}

start();
