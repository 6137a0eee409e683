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

// --- tabs -------------------------------------------------------------------------------

function show(tab) {
  for (const button of document.querySelectorAll("[data-tab]")) {
    const on = button.dataset.tab === tab;
    button.setAttribute("aria-pressed", String(on));
    $(`#${button.dataset.tab}`).hidden = !on;
  }
  if (tab === "documents") listDocuments();
}

// --- search -----------------------------------------------------------------------------

async function search(event) {
  event.preventDefault();
  const body = {
    query: $("#query").value.trim(),
    mode: $("#mode").value,
    top_k: Number($("#top-k").value) || 12,
    explain: true,
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
    results.replaceChildren(...found.hits.map((hit, i) => card(hit, i + 1)));
    say(`${found.hits.length} pages in ${Math.round(found.took_ms)} ms`);
  } catch (error) {
    results.replaceChildren();
    say(error.message, true);
  }
}

function card(hit, rank) {
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
  meta.append(score, document.createElement("br"), `${hit.source} · page ${hit.page}`);
  button.append(img, meta);
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
  const all = tokenButton("all query tokens", null);
  const rest = (hit.explanation?.tokens || []).map((t) =>
    tokenButton(JSON.stringify(t.text.trim() || t.text), t.index));
  tokens.replaceChildren(all, ...rest);
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

function drawPage() {
  const hit = state.hit;
  if (!hit) return;
  const img = $("#page-large");
  let url = `${hit.image_url}&width=1000`;
  if ($("#show-map").checked && hit.explanation) {
    url = `${hit.explanation.heatmap_url}&width=1000`;
    if (state.token !== null) url += `&token=${state.token}`;
  }
  img.alt = `${hit.source}, page ${hit.page}${$("#show-map").checked ? ", with its heatmap" : ""}`;
  loadImage(img, url).catch((e) => say(e.message, true));
}

// --- uploads ----------------------------------------------------------------------------

async function upload(files) {
  for (const file of files) {
    const row = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = file.name;
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = 0;
    bar.setAttribute("aria-label", `${file.name} progress`);
    const status = document.createElement("span");
    status.textContent = "uploading";
    row.append(name, bar, status);
    $("#uploads").append(row);
    const form = new FormData();
    form.append("file", file);
    if (collection()) form.append("collection", collection());
    try {
      const response = await api("/v1/documents", { method: "POST", body: form });
      const body = await response.json();
      if (response.status === 200) {
        bar.value = 1;
        status.textContent = "already indexed";
      } else {
        await follow(body.job_id, bar, status);
      }
    } catch (error) {
      status.textContent = `failed: ${error.message}`;
    }
    listDocuments();
  }
}

async function follow(jobId, bar, status) {
  for (;;) {
    const job = await json(`/v1/jobs/${jobId}`);
    if (job.pages_total) {
      bar.max = job.pages_total;
      bar.value = job.pages_done;
    }
    status.textContent = job.status === "running" && job.pages_total
      ? `${job.pages_done} / ${job.pages_total} pages`
      : job.status;
    if (job.status === "done") {
      bar.value = bar.max;
      status.textContent = `indexed (${job.pages_total} pages)`;
      return;
    }
    if (job.status === "failed" || job.status === "cancelled") {
      status.textContent = `${job.status}: ${job.error || ""}`;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 700));
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
  input.addEventListener("change", () => upload([...input.files]));
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

async function listDocuments() {
  const body = $("#doc-table tbody");
  try {
    const docs = await json(`/v1/documents?${withCollection({ limit: 1000 })}`);
    body.replaceChildren(...(docs.data.length ? docs.data.map(documentRow) : [emptyRow()]));
  } catch (error) {
    body.replaceChildren();
    if (error.status === 404) body.replaceChildren(emptyRow());
    else say(error.message, true);
  }
}

function emptyRow() {
  const row = document.createElement("tr");
  const cell = document.createElement("td");
  cell.colSpan = 4;
  cell.textContent = "No documents yet: drop some above.";
  row.append(cell);
  return row;
}

function documentRow(doc) {
  const row = document.createElement("tr");
  row.dataset.doc = doc.doc_id;
  for (const text of [doc.name, String(doc.page_count), doc.status]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.append(cell);
  }
  const cell = document.createElement("td");
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Delete";
  remove.setAttribute("aria-label", `Delete ${doc.name}`);
  remove.addEventListener("click", async () => {
    if (!confirm(`Delete ${doc.name} (${doc.page_count} pages)?`)) return;
    try {
      await api(`/v1/documents/${doc.doc_id}?${withCollection()}`, { method: "DELETE" });
      say(`Deleted ${doc.name}.`);
    } catch (error) {
      say(error.message, true);
    }
    listDocuments();
  });
  cell.append(remove);
  row.append(cell);
  return row;
}

// --- start ------------------------------------------------------------------------------

function start() {
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  $("#search-form").addEventListener("submit", search);
  $("#show-map").addEventListener("change", drawPage);
  $("#refresh").addEventListener("click", listDocuments);
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#api-key").value.trim();
    sessionStorage.setItem("colqwen-key", state.key);
    say("Key set.");
    listDocuments();
  });
  setUpDrop();
  // Find out early whether this server wants a key.
  api("/v1/documents?limit=1").catch((error) => {
    if (error.status !== 401 && error.status !== 404) say(error.message, true);
  });
}

start();
