"use strict";
const CONFIG = JSON.parse(document.getElementById("page-config").textContent);
const COLORS = CONFIG.colors;
const FPS = CONFIG.fps, CLIP_FRAMES = CONFIG.clip_frames;
const $ = (id) => document.getElementById(id);
let controller = null;
const KEY_ITEM = "openpack-vlm-api-key";

// every API call: with the server's API key when it asks for one (401: the page asks once, keeps it for this tab)
async function api(url, opts = {}) {
  const call = () => {
    const key = sessionStorage.getItem(KEY_ITEM);
    const headers = Object.assign({}, opts.headers || {}, key ? {"Authorization": `Bearer ${key}`} : {});
    return fetch(url, Object.assign({}, opts, {headers}));
  };
  let r = await call();
  if (r.status === 401) {
    const key = window.prompt("This server needs an API key:");
    if (key) { sessionStorage.setItem(KEY_ITEM, key.trim()); r = await call(); }
  }
  return r;
}
// links to API resources open through api(), so they carry the key too
async function openResource(url) {
  const r = await api(url);
  if (!r.ok) { showError(await r.json(), r.status); return; }
  window.open(URL.createObjectURL(await r.blob()), "_blank");
}

function chip(op) { return `<span class="chip" style="background:${COLORS[op] || "#999"}"></span>${op}`; }
function showError(body, status) {
  const e = $("error");
  e.innerHTML = `<b>${status ? status + " " : ""}${esc(body.error || "error")}</b>: ${esc(body.detail || "")}`;
  e.style.display = "block";
  $("status").textContent = "";
}
function clearError() { $("error").style.display = "none"; $("error").textContent = ""; }
function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }
function busy(on) { $("run").disabled = on || !$("file").files.length; $("cancel").classList.toggle("hidden", !on); }

async function ready() {
  try {
    const r = await api("/ready");
    const b = await r.json();
    const shown = b.input && b.input.frames === "pose" ? " · sees skeletons (pose estimated from your video)" : "";
    $("model").textContent = r.ok ? `model: ${b.model_id}${b.adapter ? " + " + b.adapter : " (base)"} · ${b.device}${shown}`
                                  : `model: ${b.detail || b.error}`;
    if (!r.ok) setTimeout(ready, 3000);
  } catch (e) { $("model").textContent = "model: server not answering"; setTimeout(ready, 3000); }
}

async function predictClip(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("include_frames", "true");
  $("status").textContent = "uploading and analysing…";
  controller = new AbortController();
  const t0 = performance.now();
  const r = await api("/predict", {method: "POST", body: form, signal: controller.signal});
  const body = await r.json();
  if (!r.ok) { showError(body, r.status); return; }
  const frames = body.frames || [];
  delete body.frames;
  $("dominant").innerHTML = chip(body.dominant_operation);
  const seg = body.temporal_segment;
  $("span").textContent = `frames ${seg.start_frame}–${seg.end_frame} of 0–${CLIP_FRAMES - 1} ` +
    `(${(seg.start_frame / FPS).toFixed(2)}–${((seg.end_frame + 1) / FPS).toFixed(2)} s)`;
  $("next").innerHTML = chip(body.anticipated_next_operation);
  $("conf").textContent = body.confidence.toFixed(3);
  $("conf-bar").style.width = (100 * body.confidence).toFixed(1) + "%";
  $("json").textContent = JSON.stringify(body, null, 2);
  $("frames-note").textContent = `(${frames.length} of ${CLIP_FRAMES}, chosen by the run's sampler; outlined: inside the predicted span)`;
  $("frames").innerHTML = frames.map((f) => {
    const inside = f.index >= seg.start_frame && f.index <= seg.end_frame ? "inspan" : "";
    const read = f.operation ? `<br>reads: ${f.operation} (${f.operation_p.toFixed(2)})` : "";
    return `<figure><img class="${inside}" src="${f.jpeg}" alt="frame ${f.index}"><figcaption>frame ${f.index} · ${f.t_s.toFixed(2)} s${read}</figcaption></figure>`;
  }).join("");
  $("clip-result").classList.remove("hidden");
  $("status").textContent = `answered in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
}

// ---------------------------------------------------------------- timeline chart (SVG, drawn as windows arrive)
const chart = {duration: 1, windows: [], segments: [], truth: null};
function drawChart() {
  const W = Math.max(600, $("chart").clientWidth || 900), left = 86, right = 10, rowH = 26;
  const rows = [["prediction", chart.segments], ["windows", chart.windows]];
  if (chart.truth) rows.push(["truth", chart.truth]);
  const H = rows.length * (rowH + 8) + 28;
  const x = (t) => left + (W - left - right) * Math.min(1, t / chart.duration);
  let svg = `<svg id="timeline-svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">`;
  rows.forEach(([name, segs], i) => {
    const y = 6 + i * (rowH + 8);
    svg += `<text x="0" y="${y + rowH / 2 + 4}">${name}</text>`;
    svg += `<rect x="${left}" y="${y}" width="${W - left - right}" height="${rowH}" fill="#f1f3f6"/>`;
    const h = name === "windows" ? rowH / 2 : rowH, yy = name === "windows" ? y + rowH / 4 : y;
    for (const s of segs) {
      const w = Math.max(1, x(s.end_s) - x(s.start_s));
      svg += `<rect class="seg-${name}" x="${x(s.start_s)}" y="${yy}" width="${w}" height="${h}" fill="${COLORS[s.operation] || "#999"}"><title>${esc(s.operation)} ${s.start_s.toFixed(1)}–${s.end_s.toFixed(1)} s</title></rect>`;
    }
  });
  const yAxis = rows.length * (rowH + 8) + 16;
  const step = chart.duration > 600 ? 60 : chart.duration > 120 ? 30 : chart.duration > 30 ? 10 : 1;
  for (let t = 0; t <= chart.duration; t += step) svg += `<text x="${x(t) - 6}" y="${yAxis}">${t}s</text>`;
  $("chart").innerHTML = svg + "</svg>";
  const used = new Set([...chart.segments, ...chart.windows, ...(chart.truth || [])].map((s) => s.operation));
  $("legend").innerHTML = Object.keys(COLORS).filter((k) => used.has(k)).map((k) => `<span>${chip(k)}</span>`).join("");
}

function onWindow(msg) {
  const w = msg.window, p = msg.progress;
  chart.windows.push({start_s: w.span_s[0], end_s: w.span_s[1], operation: w.dominant_operation});
  chart.duration = Math.max(chart.duration, p.duration_s || 0, w.end_s);
  $("progress").value = p.fraction || 0;
  $("status").textContent = `window ${p.windows_done}${p.windows_total ? " of " + p.windows_total : ""} · ` +
    `${w.start_s.toFixed(1)} s: ${w.dominant_operation}`;
  drawChart();
}

function onDone(status) {
  const r = status.result;
  chart.duration = r.duration_s;
  chart.segments = r.segments;
  chart.truth = r.truth || null;
  drawChart();
  $("progress").value = 1;
  const cs = r.cycle_summary, nx = r.anticipated_next_operation;
  $("tl-summary").innerHTML = `<b>${r.segments.length}</b> segment${r.segments.length === 1 ? "" : "s"} in ${r.duration_s.toFixed(1)} s from ${r.n_windows} windows ` +
    `(every ${r.stride_s} s) · <b>${cs.complete_cycles}</b> complete box cycles` +
    (cs.median_cycle_s ? ` (median ${cs.median_cycle_s} s)` : "") + ` · next: ${chip(nx.operation)}`;
  $("segments").querySelector("tbody").innerHTML = r.segments.map((s) =>
    `<tr><td>${s.start_s.toFixed(1)}</td><td>${s.end_s.toFixed(1)}</td><td>${chip(s.operation)}</td><td>${s.confidence === null ? "–" : s.confidence.toFixed(2)}</td></tr>`).join("");
  $("cycles").querySelector("tbody").innerHTML = r.cycles.map((c) =>
    `<tr><td>${c.box}</td><td>${c.start_s.toFixed(1)}</td><td>${c.end_s === null ? "–" : c.end_s.toFixed(1)}</td>` +
    `<td>${c.cycle_s === null ? "–" : c.cycle_s}</td><td>${c.complete ? "yes" : "no"}</td></tr>`).join("") ||
    `<tr><td colspan="5" class="muted">no box started and ended inside the recording</td></tr>`;
  const slim = Object.assign({}, r, {windows: `[${r.windows.length} windows: GET ${status.status_url}?since=0]`,
                                      seconds: `[${r.seconds.length} per-second labels]`});
  $("tl-json").textContent = JSON.stringify(slim, null, 2);
  $("tl-json-link").textContent = "(full JSON)"; $("tl-json-link").href = status.status_url;
  $("tl-png-link").textContent = "(PNG chart)"; $("tl-png-link").href = status.plot_url;
  for (const id of ["tl-json-link", "tl-png-link"]) $(id).onclick = (ev) => { ev.preventDefault(); openResource($(id).href); };
  $("status").textContent = `done in ${status.elapsed_s} s`;
}

async function runTimeline(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("stride", $("stride").value);
  Object.assign(chart, {duration: 1, windows: [], segments: [], truth: null});
  $("timeline-result").classList.remove("hidden");
  $("segments").querySelector("tbody").innerHTML = ""; $("cycles").querySelector("tbody").innerHTML = "";
  $("tl-summary").textContent = ""; $("tl-json").textContent = ""; $("progress").value = 0;
  drawChart();
  $("status").textContent = "uploading…";
  controller = new AbortController();
  const r = await api("/timeline", {method: "POST", body: form, signal: controller.signal,
                                     headers: {"Accept": "text/event-stream"}});
  if (!r.ok) { showError(await r.json(), r.status); $("timeline-result").classList.add("hidden"); return; }
  $("tl-note").textContent = `(job ${r.headers.get("X-Job-Id")})`;
  const reader = r.body.getReader(), dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true});
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (!data) continue;
      const msg = JSON.parse(data);
      if (event === "job") { chart.duration = Math.max(1, (msg.video && msg.video.duration_s) || 1); $("status").textContent = "decoding…"; }
      else if (event === "window") onWindow(msg);
      else if (event === "done") onDone(msg);
      else if (event === "error") showError(msg, msg.status);
      else if (event === "cancelled") showError(msg, "");
    }
  }
}

$("file").addEventListener("change", () => { busy(false); clearError(); });
$("run").addEventListener("click", async () => {
  const file = $("file").files[0];
  if (!file) return;
  clearError();
  $("clip-result").classList.add("hidden");
  $("timeline-result").classList.add("hidden");
  busy(true);
  try {
    if ($("mode-timeline").checked) await runTimeline(file); else await predictClip(file);
  } catch (e) {
    if (e.name === "AbortError") showError({error: "cancelled", detail: "you cancelled the request"}, "");
    else showError({error: "network", detail: String(e)}, "");
  } finally { busy(false); controller = null; }
});
$("cancel").addEventListener("click", () => { if (controller) controller.abort(); });
window.addEventListener("resize", () => { if (!$("timeline-result").classList.contains("hidden")) drawChart(); });
ready();
