// The demo page: send the chosen image to POST /v1/recognize as raw bytes, show the answer,
// and flag it (with an optional correction) through POST /v1/flag.
// A server started with --auth-token-file answers the API with 401: the page then asks for the
// token once, keeps it for the tab (sessionStorage) and sends it as `Authorization: Bearer`.
"use strict";

const $ = (id) => document.getElementById(id);
let last = null; // { base64, prediction, version }

function showError(message) {
  const e = $("error");
  e.textContent = message;
  e.hidden = !message;
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || resp.statusText;
  } catch (_) {
    return resp.statusText;
  }
}

const TOKEN_KEY = "textrec-token";

// fetch() with the bearer token, if one was given; on 401 ask for one and try again.
async function apiFetch(url, init) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = Object.assign({}, init.headers);
    if (token) headers["Authorization"] = `Bearer ${token}`;
    const resp = await fetch(url, Object.assign({}, init, { headers }));
    if (resp.status !== 401) return resp;
    const entered = window.prompt(
      token ? "The token was not accepted. Bearer token:" : "This server needs a bearer token:"
    );
    if (!entered || !entered.trim()) return resp;
    sessionStorage.setItem(TOKEN_KEY, entered.trim());
  }
}

async function recognize(file) {
  showError("");
  $("flag-status").textContent = "";
  const buffer = await file.arrayBuffer();
  $("preview").src = URL.createObjectURL(file);
  $("preview-box").hidden = false;
  const started = performance.now();
  const resp = await apiFetch("v1/recognize", {
    method: "POST",
    headers: { "Content-Type": file.type || "application/octet-stream" },
    body: buffer,
  });
  const elapsed = performance.now() - started;
  if (!resp.ok) {
    $("result").hidden = true;
    showError(`Error ${resp.status}: ${await errorText(resp)}`);
    return;
  }
  const r = await resp.json();
  last = { base64: toBase64(buffer), prediction: r.text, version: r.model_version };
  $("text").textContent = r.text;
  $("confidence").textContent = `${(r.confidence * 100).toFixed(1)}%`;
  $("latency").textContent =
    `${elapsed.toFixed(0)} ms round trip (server ${r.timing.total_ms.toFixed(1)} ms, ` +
    `forward pass ${r.timing.inference_ms.toFixed(1)} ms, batch of ${r.batch_size})`;
  $("version").textContent = r.model_version;
  $("correction").value = r.text;
  $("flag").disabled = false;
  $("result").hidden = false;
}

async function flag(event) {
  event.preventDefault();
  if (!last) return;
  $("flag").disabled = true;
  $("flag-status").textContent = "Saving…";
  const resp = await apiFetch("v1/flag", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      image: last.base64,
      prediction: last.prediction,
      corrected_text: $("correction").value,
      model_version: last.version,
    }),
  });
  if (resp.ok) {
    const r = await resp.json();
    $("flag-status").textContent = `Flagged as ${r.name}`;
    $("flag-status").dataset.name = r.name;
  } else {
    $("flag-status").textContent = `Not flagged: ${await errorText(resp)}`;
    $("flag").disabled = false;
  }
}

function pick(files) {
  if (files && files.length) recognize(files[0]).catch((e) => showError(String(e)));
}

$("file").addEventListener("change", (e) => pick(e.target.files));
$("flag-form").addEventListener("submit", (e) => flag(e).catch((err) => showError(String(err))));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  pick(e.dataTransfer.files);
});

// The model in service and where flags go, from GET /v1/model; polled, so a promotion or a
// rollback shows up on an open page without a reload.
async function refreshModel() {
  let info;
  try {
    // The stored token if there is one, but no prompt: this runs every few seconds.
    const token = sessionStorage.getItem(TOKEN_KEY);
    const resp = await fetch("v1/model", {
      headers: token ? { Authorization: `Bearer ${token}` } : {},
    });
    if (!resp.ok) return;
    info = await resp.json();
  } catch (_) {
    return;
  }
  $("serving-version").textContent = info.version || "none yet";
  $("flag-where").textContent = info.flags
    ? `Flagged lines are saved to ${info.flags} as training pairs` +
      (info.flags_max_samples ? ` (the newest ${info.flags_max_samples} are kept).` : ".")
    : "Flagging is off on this server (start it with --flags to keep flagged lines).";
}
refreshModel();
setInterval(refreshModel, 5000);
