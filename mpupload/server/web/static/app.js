// The mpupload dashboard: sign in, list the viewer's uploads, keep them live through the GraphQL subscription.
//
// Data flow: an HTTP query loads every upload with its history; a graphql-ws subscription (uploadEvents)
// then streams each change, applied to the row in place. On every (re)connect the query runs again, so the
// page catches up with whatever happened while the socket was down. All user-provided text goes through
// textContent, never innerHTML.
//
// A directory run (filesTotal is not null) shows its file counts in its row; a click on the row opens a
// details panel with the files in flight and the failed files (the files query, a page at a time), read
// again when the subscription says the record changed, at most once a second.

import { createClient } from "./vendor/graphql-ws.js";

const TOKEN_KEY = "mpupload.token";
const MAX_POINTS = 600;
const ACTIVE = new Set(["PENDING", "UPLOADING", "FINALIZING"]);
const REFRESH_MS = 60000; // a safety net: the subscription already re-sends an upload when it stops being live
const MiB = 1024 * 1024;
const DETAILS_MIN_INTERVAL_MS = 1000; // the details panel's files query runs at most this often

const FIELDS = `id filename bucket key host status totalBytes bytesDone percent speedBps avgSpeedBps etaSeconds
  partsDone partsTotal elapsedSeconds createdAt updatedAt error checksum etag resumable resumeCommand live
  stopRequested filesTotal filesDone filesFailed filesSkipped brokered`;
const FILE_FIELDS = `path key size bytesDone status error updatedAt`;
const FILES_QUERY = `query UploadFiles($id: ID!) { upload(id: $id) { id
  inFlight: files(status: UPLOADING, first: 50) { items { ${FILE_FIELDS} } hasNextPage }
  failed: files(status: FAILED, first: 100) { items { ${FILE_FIELDS} } endCursor hasNextPage } } }`;
const FAILED_PAGE_QUERY = `query FailedFiles($id: ID!, $after: String) { upload(id: $id) { id
  files(status: FAILED, first: 100, after: $after) { items { ${FILE_FIELDS} } endCursor hasNextPage } } }`;
const UPLOADS_QUERY = `query Uploads { uploads { ${FIELDS} history { at bytesDone speedBps } } }`;
const REFRESH_QUERY = `query UploadsNow { uploads { ${FIELDS} } }`;
const EVENTS_SUBSCRIPTION = `subscription UploadEvents { uploadEvents { ${FIELDS} } }`;
const STOP_MUTATION = `mutation Stop($id: ID!) { stopUpload(id: $id) { id status stopRequested } }`;

const $ = (id) => document.getElementById(id);
const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

// ---------------------------------------------------------------- formatting

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/** Binary units, one decimal: 214748364800 -> "200.0 GiB". */
export function formatBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "—";
  let value = Number(n);
  if (Math.abs(value) < 1024) return `${Math.round(value)} B`;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  // 1023.96 MiB would print as "1024.0 MiB": carry it to the next unit instead
  if (Number(value.toFixed(1)) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${UNITS[unit]}`;
}

export function formatSpeed(bps) {
  if (bps === null || bps === undefined || !Number.isFinite(Number(bps))) return "—";
  return `${formatBytes(bps)}/s`;
}

export function formatPercent(p) {
  if (p === null || p === undefined || !Number.isFinite(Number(p))) return "—";
  return `${Number(p).toFixed(1)} %`;
}

/** Seconds as "42 s", "3 min 05 s", "2 h 07 min"; null/undefined -> "—" (unknown). */
export function formatDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(Number(s)) || Number(s) < 0) return "—";
  const total = Math.round(Number(s));
  if (total < 60) return `${total} s`;
  if (total < 3600) return `${Math.floor(total / 60)} min ${String(total % 60).padStart(2, "0")} s`;
  if (total < 86400) return `${Math.floor(total / 3600)} h ${String(Math.floor((total % 3600) / 60)).padStart(2, "0")} min`;
  return `${Math.floor(total / 86400)} d ${String(Math.floor((total % 86400) / 3600)).padStart(2, "0")} h`;
}

const toSeconds = (iso) => Date.parse(iso) / 1000;

// ---------------------------------------------------------------- state

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  client: null, // graphql-ws client of the current session
  unsubscribe: null,
  refreshTimer: null,
  everConnected: false,
  rows: new Map(), // id -> Row
  generation: 0, // bumps at every sign-in/out, so late answers of an old session are dropped
};

// A test/debug hook: the current client and a way to reload.
window.__mpupload = {
  get client() {
    return state.client;
  },
  get rows() {
    return state.rows.size;
  },
  refetch: () => loadUploads(true),
  /** how many files queries each open details panel has sent (the tests check the rate) */
  detailsQueries: (id) => (state.rows.get(id) && state.rows.get(id).details ? state.rows.get(id).details.queries : 0),
};

class AuthError extends Error {}

// ---------------------------------------------------------------- HTTP

async function api(path, { method = "GET", body, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (auth && state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return { response, data };
}

function detailOf(data, fallback) {
  if (data && typeof data.detail === "string") return data.detail;
  if (data && Array.isArray(data.detail) && data.detail.length) return data.detail.map((d) => d.msg).join("; ");
  return fallback;
}

async function graphql(query, variables) {
  const { response, data } = await api("/graphql", { method: "POST", body: { query, variables } });
  if (response.status === 401 || response.status === 403) throw new AuthError(detailOf(data, "not signed in"));
  if (!data) throw new Error(`GraphQL answered HTTP ${response.status}`);
  if (data.errors && data.errors.length) {
    const message = data.errors.map((e) => e.message).join("; ");
    const codes = data.errors.map((e) => e.extensions && e.extensions.code);
    if (codes.includes("UNAUTHENTICATED") || codes.includes("FORBIDDEN")) throw new AuthError(message);
    if (!data.data) throw new Error(message);
  }
  return data.data;
}

// ---------------------------------------------------------------- sign in / out

function showSignIn(message, kind = "error") {
  stopLive();
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  clearTable();
  $("session").hidden = true;
  $("dashboard").hidden = true;
  $("signin").hidden = false;
  setMessage($("signin-message"), message, kind);
  $("password").value = "";
  ($("username").value ? $("password") : $("username")).focus();
}

function setMessage(node, message, kind = "error") {
  node.hidden = !message;
  node.textContent = message || "";
  node.dataset.kind = kind;
}

function sessionExpired(message) {
  if (!state.token) return;
  showSignIn(message || "Your session has ended; please sign in again.");
}

async function signIn(event) {
  event.preventDefault();
  const button = $("signin-button");
  button.disabled = true;
  setMessage($("signin-message"), "");
  try {
    const username = $("username").value.trim();
    const password = $("password").value;
    const { response, data } = await api("/api/v1/auth/login", {
      method: "POST",
      body: { username, password },
      auth: false,
    });
    if (response.ok && data && data.token) {
      state.token = data.token;
      sessionStorage.setItem(TOKEN_KEY, data.token);
      $("password").value = "";
      await enterDashboard();
    } else {
      const fallback = response.status === 429 ? "Too many attempts; try again later." : "Sign-in failed.";
      setMessage($("signin-message"), detailOf(data, `${fallback} (HTTP ${response.status})`));
    }
  } catch (err) {
    setMessage($("signin-message"), `Cannot reach the server: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

async function signOut() {
  // the token is forgotten here at once; "Signed out." is said only once the server has revoked it
  const token = state.token;
  showSignIn(token ? "Signing out…" : "Signed out.", "info");
  if (!token) return;
  const generation = state.generation;
  let revoked = false;
  try {
    const response = await fetch("/api/v1/auth/logout", {
      method: "POST", headers: { Authorization: `Bearer ${token}` },
    });
    revoked = response.ok || response.status === 401;  // 401: the token was already dead
  } catch {
    revoked = false;
  }
  if (generation !== state.generation) return;  // signed in again meanwhile: leave that message alone
  if (revoked) {
    setMessage($("signin-message"), "Signed out.", "info");
  } else {
    setMessage($("signin-message"),
      "Signed out on this page, but the server could not be told: the session ends when it expires.");
  }
}

async function enterDashboard() {
  state.generation += 1;
  const generation = state.generation;
  const { response, data } = await api("/api/v1/me");
  if (generation !== state.generation) return;
  if (response.status === 401) {
    showSignIn(detailOf(data, "Your session has ended; please sign in again."));
    return;
  }
  if (!response.ok || !data) {
    showSignIn(`The server answered HTTP ${response.status}; try again.`);
    return;
  }
  $("user").textContent = data.username;
  $("signin").hidden = true;
  $("session").hidden = false;
  $("dashboard").hidden = false;
  setMessage($("notice"), "");
  $("empty").hidden = true;
  startLive();
  loadUploads(true); // at once over HTTP; again on every (re)connect of the subscription
}

// ---------------------------------------------------------------- live data

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/graphql`;
}

function setConn(kind) {
  const conn = $("conn");
  conn.dataset.state = kind;
  conn.textContent = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…" }[kind] || kind;
}

const isForbidden = (e) => e && typeof e === "object" && "code" in e && e.code === 4403;

function startLive() {
  stopLive();
  const generation = state.generation;
  state.everConnected = false;
  setConn("connecting");
  const token = state.token;
  const client = createClient({
    url: wsUrl(),
    connectionParams: () => ({ token }),
    lazy: false,
    retryAttempts: Infinity,
    shouldRetry: (e) => !isForbidden(e),
    // 0.5 s, 1 s, 2 s, 4 s, then every 5 s, plus up to 0.5 s of jitter
    retryWait: (retries) =>
      new Promise((resolve) => setTimeout(resolve, Math.min(500 * 2 ** retries, 5000) + Math.random() * 500)),
    onNonLazyError: () => {},
    on: {
      connecting: () => setConn(state.everConnected ? "reconnecting" : "connecting"),
      connected: () => {
        if (generation !== state.generation) return;
        state.everConnected = true;
        setConn("live");
        loadUploads(true);
      },
      closed: (event) => {
        if (generation !== state.generation) return;
        if (isForbidden(event)) {
          sessionExpired("Your session has ended (the server refused the token); please sign in again.");
          return;
        }
        setConn("reconnecting");
      },
    },
  });
  state.client = client;
  state.unsubscribe = client.subscribe(
    { query: EVENTS_SUBSCRIPTION },
    {
      next: (message) => {
        if (generation !== state.generation) return;
        if (message.data && message.data.uploadEvents) applyUpload(message.data.uploadEvents, { sample: true });
        if (message.errors && message.errors.length) notice(message.errors.map((e) => e.message).join("; "));
      },
      error: (err) => {
        if (generation !== state.generation) return;
        if (isForbidden(err)) return; // handled by `closed`
        notice(`Live updates stopped: ${err && err.message ? err.message : "connection error"}`);
        setConn("reconnecting");
      },
      complete: () => {},
    },
  );
  state.refreshTimer = setInterval(() => loadUploads(false), REFRESH_MS);
}

function stopLive() {
  state.generation += 1;
  if (state.refreshTimer) clearInterval(state.refreshTimer);
  state.refreshTimer = null;
  if (state.unsubscribe) state.unsubscribe();
  state.unsubscribe = null;
  if (state.client) state.client.dispose();
  state.client = null;
}

function notice(message) {
  setMessage($("notice"), message);
}

let loading = null;
/** Load every upload; with history (the chart's samples) on a (re)connect, without it on the periodic refresh. */
async function loadUploads(withHistory) {
  if (!state.token) return;
  const generation = state.generation;
  if (loading && !withHistory) return; // a full load is under way
  const run = (async () => {
    try {
      const data = await graphql(withHistory ? UPLOADS_QUERY : REFRESH_QUERY);
      if (generation !== state.generation) return;
      for (const upload of data.uploads) applyUpload(upload, { history: withHistory ? upload.history : null });
      setMessage($("notice"), "");
      updateEmpty();
    } catch (err) {
      if (generation !== state.generation) return;
      if (err instanceof AuthError) sessionExpired(`Your session has ended (${err.message}); please sign in again.`);
      else notice(`Could not load uploads: ${err.message}`);
    }
  })();
  if (withHistory) loading = run;
  try {
    await run;
  } finally {
    if (loading === run) loading = null;
  }
}

// ---------------------------------------------------------------- table

function clearTable() {
  for (const row of state.rows.values()) {
    if (row.chart) row.chart.destroy();
    closeDetails(row);
  }
  state.rows.clear();
  const tbody = $("uploads").tBodies[0];
  while (tbody.firstChild) tbody.firstChild.remove();
  $("uploads").hidden = true;
  $("empty").hidden = true;
}

function updateEmpty() {
  const empty = state.rows.size === 0;
  $("empty").hidden = !empty;
  $("uploads").hidden = empty;
}

/** Merge one upload (full or partial) into its row; create the row the first time. */
function applyUpload(upload, { history = null, sample = false } = {}) {
  let row = state.rows.get(upload.id);
  if (row && upload.updatedAt && row.upload.updatedAt && toSeconds(upload.updatedAt) < toSeconds(row.upload.updatedAt)) {
    return; // an older state than the one shown (a query answer overtaken by an event)
  }
  if (!row) {
    if (!upload.createdAt) return; // a partial answer about a row not shown
    row = createRow(upload);
    state.rows.set(upload.id, row);
    insertSorted(row);
    updateEmpty();
  }
  row.upload = { ...row.upload, ...upload };
  if (history) {
    row.points = history.map((h) => [toSeconds(h.at), h.speedBps]).filter((p) => Number.isFinite(p[0]));
  }
  if (sample && upload.updatedAt) addPoint(row, toSeconds(upload.updatedAt), upload.speedBps);
  renderRow(row);
  if (row.details) scheduleDetails(row);
}

function addPoint(row, t, speed) {
  const last = row.points[row.points.length - 1];
  if (!Number.isFinite(t) || (last && t <= last[0])) return;
  row.points.push([t, speed]);
  if (row.points.length > MAX_POINTS) row.points.splice(0, row.points.length - MAX_POINTS);
}

function insertSorted(row) {
  const tbody = $("uploads").tBodies[0];
  const created = toSeconds(row.upload.createdAt);
  for (const tr of tbody.rows) {
    const other = state.rows.get(tr.dataset.uploadId);
    if (other && other !== row && toSeconds(other.upload.createdAt) < created) {
      tbody.insertBefore(row.tr, tr);
      return;
    }
  }
  tbody.appendChild(row.tr);
}

function createRow(upload) {
  const tr = el("tr");
  tr.dataset.uploadId = upload.id;
  const cell = (cls) => {
    const td = el("td", cls);
    tr.appendChild(td);
    return td;
  };
  const c = {};
  c.name = cell("name");
  c.filename = c.name.appendChild(el("div", "filename"));
  c.dest = c.name.appendChild(el("div", "dest"));
  c.brokered = c.name.appendChild(el("div", "brokered", "brokered"));
  c.brokered.title = "brokered: the server holds the storage credentials, signs each part, completes and aborts";
  c.brokered.hidden = true;
  c.error = c.name.appendChild(el("div", "error"));
  c.resume = c.name.appendChild(el("div", "resume"));
  c.resumeLabel = c.resume.appendChild(el("span", "resume-label", "resume with "));
  c.resumeCommand = c.resume.appendChild(el("code", "resume-command"));
  c.copy = c.resume.appendChild(el("button", "copy secondary", "Copy"));
  c.copy.type = "button";
  c.copy.addEventListener("click", () => copyText(c.resumeCommand.textContent, c.copy));
  c.files = c.name.appendChild(el("div", "files"));
  c.files.hidden = true;
  c.bar = cell("bar");
  c.progress = c.bar.appendChild(el("progress"));
  c.progress.max = 100;
  c.percent = cell("percent num");
  c.bytes = cell("bytes num");
  c.speed = cell("speed num");
  c.avgSpeed = cell("avg-speed num");
  c.eta = cell("eta num");
  c.status = cell("status");
  c.host = cell("host");
  c.live = cell("live");
  c.chart = cell("chart");
  c.actions = cell("actions");
  c.stop = c.actions.appendChild(el("button", "stop", "Stop"));
  c.stop.type = "button";
  const row = { tr, cells: c, upload: { ...upload }, points: [], chart: null, stopping: false, details: null };
  c.stop.addEventListener("click", () => stopUpload(row));
  // a directory run's row opens (and closes) its details panel; buttons and the resume text keep their own clicks
  tr.addEventListener("click", (event) => {
    if (!isDataset(row.upload) || event.target.closest("button, code")) return;
    if (row.details) closeDetails(row);
    else openDetails(row);
  });
  return row;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function renderRow(row) {
  const u = row.upload;
  const c = row.cells;
  row.tr.dataset.status = u.status;
  setText(c.filename, u.filename || "(unnamed)");
  setText(c.dest, `s3://${u.bucket}/${u.key}`);
  c.brokered.hidden = !u.brokered;
  row.tr.classList.toggle("brokered", Boolean(u.brokered));
  c.name.title = `${u.filename} → s3://${u.bucket}/${u.key}${u.checksum ? `\nchecksum ${u.checksum}` : ""}${u.etag ? `\nETag ${u.etag}` : ""}`;
  // a failure's reason, or why the server stopped it (the reaper of brokered uploads says so)
  const failed = (u.status === "FAILED" || u.status === "STOPPED") && u.error;
  c.error.hidden = !failed;
  setText(c.error, failed ? u.error : "");
  const resumable = Boolean(u.resumable && u.resumeCommand);
  c.resume.hidden = !resumable;
  setText(c.resumeCommand, resumable ? u.resumeCommand : "");

  const percent = Math.max(0, Math.min(100, Number(u.percent) || 0));
  c.progress.setAttribute("value", String(percent));
  c.progress.textContent = formatPercent(percent);
  c.bar.dataset.percent = percent.toFixed(1);
  setText(c.percent, formatPercent(u.percent));
  setText(c.bytes, `${formatBytes(u.bytesDone)} / ${formatBytes(u.totalBytes)}`);
  c.bytes.title = `${u.bytesDone} / ${u.totalBytes} bytes, part ${u.partsDone} of ${u.partsTotal}`;
  const active = ACTIVE.has(u.status);
  setText(c.speed, active ? formatSpeed(u.speedBps) : "—");
  setText(c.avgSpeed, formatSpeed(u.avgSpeedBps));
  setText(c.eta, active ? formatDuration(u.etaSeconds) : "—");
  c.eta.title = active && (u.etaSeconds === null || u.etaSeconds === undefined) ? "unknown" : `elapsed ${formatDuration(u.elapsedSeconds)}`;
  setText(c.status, u.status);
  c.status.dataset.status = u.status;
  setText(c.host, u.host || "—");
  setText(c.live, u.live ? "live" : "idle");
  const dataset = isDataset(u);
  row.tr.classList.toggle("dataset", dataset);
  c.files.hidden = !dataset;
  if (dataset) {
    setText(c.files, formatFiles(u));
    c.files.dataset.failed = u.filesFailed ? "true" : "false";
    c.files.title = `${u.filesSkipped || 0} skipped (already on the store); click the row for the files`;
    row.tr.setAttribute("aria-expanded", row.details ? "true" : "false");
  }
  c.live.dataset.live = u.live ? "true" : "false";

  // a brokered upload can be stopped even when its CLI is gone: the server aborts it on the store itself
  const canStop = active && (Boolean(u.live) || Boolean(u.brokered));
  c.stop.hidden = !canStop;
  if (u.stopRequested || row.stopping) {
    c.stop.disabled = true;
    setText(c.stop, "stopping…");
  } else {
    c.stop.disabled = false;
    setText(c.stop, "Stop");
  }
  renderChart(row);
}

function chartData(points) {
  return [points.map((p) => p[0]), points.map((p) => (p[1] === null || p[1] === undefined ? null : p[1] / MiB))];
}

function renderChart(row) {
  const uPlot = window.uPlot;
  if (!uPlot) return;
  const data = chartData(row.points);
  if (!row.chart) {
    row.chart = new uPlot(
      {
        width: 140,
        height: 40,
        class: "spark",
        legend: { show: false },
        cursor: { show: false },
        select: { show: false },
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
        axes: [{ show: false }, { show: false }],
        series: [
          {},
          { label: "MiB/s", stroke: "#2f6fdb", fill: "rgba(47, 111, 219, 0.15)", width: 1.5,
            spanGaps: true, points: { size: 3 } },
        ],
      },
      data,
      row.cells.chart,
    );
  } else {
    row.chart.setData(data);
  }
  const last = row.points[row.points.length - 1];
  row.cells.chart.title = last ? `speed over time; now ${formatSpeed(last[1])}` : "speed over time (no samples yet)";
}

// ---------------------------------------------------------------- a directory run's details

const isDataset = (u) => u.filesTotal !== null && u.filesTotal !== undefined;

/** "files 12 / 100 (2 failed)"; "files 12 / … " while the walk is still counting. */
export function formatFiles(u) {
  const total = u.filesTotal === null || u.filesTotal === undefined ? "…" : String(u.filesTotal);
  const failed = u.filesFailed ? ` (${u.filesFailed} failed)` : "";
  return `files ${u.filesDone || 0} / ${total}${failed}`;
}

function openDetails(row) {
  const tr = el("tr", "details");
  tr.dataset.detailsFor = row.upload.id;
  const td = tr.appendChild(el("td"));
  td.colSpan = row.tr.cells.length;
  const d = { tr, queries: 0, lastAt: 0, running: false, timer: null, pending: false, generation: state.generation };
  d.inFlightTitle = td.appendChild(el("h3", "", "In flight"));
  d.inFlight = td.appendChild(el("ul", "in-flight"));
  d.inFlightMore = td.appendChild(el("p", "more", "more files in flight than shown"));
  d.failedTitle = td.appendChild(el("h3", "", "Failed"));
  d.failed = td.appendChild(el("ul", "failed-files"));
  d.loadMore = td.appendChild(el("button", "secondary load-more", "Show more failed files"));
  d.loadMore.type = "button";
  d.loadMore.addEventListener("click", () => loadMoreFailed(row));
  d.message = td.appendChild(el("p", "message"));
  d.message.hidden = true;
  d.inFlightMore.hidden = true;
  d.loadMore.hidden = true;
  row.details = d;
  row.tr.after(tr);
  row.tr.setAttribute("aria-expanded", "true");
  scheduleDetails(row);
}

function closeDetails(row) {
  const d = row.details;
  if (!d) return;
  if (d.timer) clearTimeout(d.timer);
  d.tr.remove();
  row.details = null;
  row.tr.setAttribute("aria-expanded", "false");
}

/** Read the files again now, or as soon as a second has passed since the last query (never two at once). */
function scheduleDetails(row) {
  const d = row.details;
  if (!d) return;
  d.pending = true;
  if (d.running || d.timer) return;
  const wait = d.lastAt + DETAILS_MIN_INTERVAL_MS - Date.now();
  if (wait > 0) {
    d.timer = setTimeout(() => {
      d.timer = null;
      scheduleDetails(row);
    }, wait);
    return;
  }
  loadDetails(row);
}

async function loadDetails(row) {
  const d = row.details;
  d.pending = false;
  d.running = true;
  d.lastAt = Date.now();
  d.queries += 1;
  try {
    const data = await graphql(FILES_QUERY, { id: row.upload.id });
    if (row.details !== d || d.generation !== state.generation) return;
    const upload = data && data.upload;
    if (!upload) {
      setMessage(d.message, "This upload is no longer there.");
      return;
    }
    setMessage(d.message, "");
    renderFiles(d.inFlight, upload.inFlight.items, true);
    d.inFlightMore.hidden = !upload.inFlight.hasNextPage;
    d.inFlightTitle.textContent = `In flight (${upload.inFlight.items.length}${upload.inFlight.hasNextPage ? "+" : ""})`;
    renderFiles(d.failed, upload.failed.items, false);
    d.failedCursor = upload.failed.endCursor;
    d.loadMore.hidden = !upload.failed.hasNextPage;
    d.failedTitle.textContent = `Failed (${row.upload.filesFailed || upload.failed.items.length})`;
  } catch (err) {
    if (row.details !== d) return;
    if (err instanceof AuthError) sessionExpired(`Your session has ended (${err.message}); please sign in again.`);
    else setMessage(d.message, `Could not load the files: ${err.message}`);
  } finally {
    d.running = false;
    d.lastAt = Date.now();
    if (row.details === d && d.pending) scheduleDetails(row);
  }
}

async function loadMoreFailed(row) {
  const d = row.details;
  if (!d || !d.failedCursor) return;
  d.loadMore.disabled = true;
  try {
    const data = await graphql(FAILED_PAGE_QUERY, { id: row.upload.id, after: d.failedCursor });
    if (row.details !== d || !data || !data.upload) return;
    renderFiles(d.failed, data.upload.files.items, false, true);
    d.failedCursor = data.upload.files.endCursor;
    d.loadMore.hidden = !data.upload.files.hasNextPage;
  } catch (err) {
    if (row.details === d) setMessage(d.message, `Could not load the files: ${err.message}`);
  } finally {
    d.loadMore.disabled = false;
  }
}

function renderFiles(list, files, inFlight, append = false) {
  if (!append) while (list.firstChild) list.firstChild.remove();
  if (!files.length && !append) {
    list.appendChild(el("li", "none", inFlight ? "none right now" : "none"));
    return;
  }
  for (const f of files) {
    const li = el("li", "file");
    li.dataset.path = f.path;
    li.appendChild(el("span", "path", f.path));
    if (inFlight) {
      li.appendChild(el("span", "file-bytes num", `${formatBytes(f.bytesDone)} / ${formatBytes(f.size)}`));
    } else {
      li.appendChild(el("span", "file-error", f.error || "failed"));
    }
    li.title = `s3 key ${f.key}`;
    list.appendChild(li);
  }
}

async function stopUpload(row) {
  if (row.stopping) return;
  row.stopping = true;
  renderRow(row);
  try {
    const data = await graphql(STOP_MUTATION, { id: row.upload.id });
    row.stopping = false; // from now on the server's stopRequested says whether a stop is pending
    if (data && data.stopUpload) applyUpload(data.stopUpload);
    else renderRow(row);
  } catch (err) {
    row.stopping = false;
    renderRow(row);
    if (err instanceof AuthError) sessionExpired(`Your session has ended (${err.message}); please sign in again.`);
    else notice(`Could not stop ${row.upload.filename}: ${err.message}`);
  }
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    // no clipboard permission (plain HTTP): select the text so Ctrl+C copies it
    const range = document.createRange();
    range.selectNodeContents(button.previousSibling);
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    button.textContent = "Selected";
  }
  setTimeout(() => (button.textContent = "Copy"), 1500);
}

// ---------------------------------------------------------------- start

$("signin-form").addEventListener("submit", signIn);
$("signout").addEventListener("click", signOut);
if (state.token) {
  enterDashboard().catch((err) => showSignIn(`Cannot reach the server: ${err.message}`));
} else {
  showSignIn("");
}
