// emollm explain page: upload a clip (or pick one from --clips), stream the answer (Server-Sent Events
// over a POST, read with fetch), show the label, the reasoning, the frames and face crops the model was
// fed, the builder's cues and the stage timings. Plain JS, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, source: null, objectUrl: null, running: false, streamed: "", chunks: 0 };

function setStatus(kind, text) {
  const el = $("status");
  el.dataset.kind = kind;
  el.textContent = text;
  document.body.dataset.state = kind;
}

function showMessage(error, hint, kind) {
  const box = $("message");
  box.dataset.kind = kind || "error";
  $("message-error").textContent = error || "something went wrong";
  $("message-hint").textContent = hint || "";
  box.hidden = false;
}

function clearMessage() { $("message").hidden = true; }

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function fmtBytes(n) {
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(0) + " kB";
  return n + " B";
}

function when(v) {
  const t = v.time_s === null || v.time_s === undefined ? "" : ` · ${v.time_s.toFixed(2)} s`;
  return `frame ${v.frame}${t}`;
}

// ---------------------------------------------------------------------------------- setup
async function loadInfo() {
  try {
    const res = await fetch("api/info");
    const info = await res.json();
    if (!res.ok) throw new Error(info.error || res.statusText);
    state.info = info;
    $("run").textContent = `run: ${info.run || "?"} · backbone: ${info.backbone || "?"} · device: ${info.device}`;
    $("limits").textContent = `video, image or audio · up to ${info.max_upload_mb} MB`;
    $("file").setAttribute("accept", ["video/*", "image/*", "audio/*", ...info.extensions].join(","));
    $("model").textContent = `Modalities: ${info.modalities.join(", ")} · labels: ${info.label_set.join(", ")}` +
      (info.streaming ? "" : " · beam search: the answer comes at once");
    setStatus(info.busy ? "busy" : "idle", info.busy ? "busy" : "ready");
    if (info.clips) await loadClips();
  } catch (err) {
    setStatus("error", "offline");
    showMessage(`cannot reach the server: ${err.message}`, "is `emollm serve` still running?");
  }
}

async function loadClips() {
  const res = await fetch("api/clips");
  const data = await res.json();
  const select = $("clips");
  for (const clip of data.clips || []) {
    select.appendChild(el("option", { value: clip.name }, `${clip.name}  (${clip.kind}, ${fmtBytes(clip.size)})`));
  }
  $("clips-block").hidden = false;
}

function preview(url, kind) {
  const box = $("preview");
  box.replaceChildren();
  if (kind === "video") {
    box.appendChild(el("video", { src: url, controls: "", muted: "", playsinline: "", preload: "metadata" }));
  } else if (kind === "image") {
    box.appendChild(el("img", { src: url, alt: "the chosen image" }));
  } else {
    box.appendChild(el("p", {}, "audio file: no frames to show"));
  }
  box.hidden = false;
}

function kindOf(name, mime) {
  if (mime && mime.startsWith("video/")) return "video";
  if (mime && mime.startsWith("image/")) return "image";
  if (mime && mime.startsWith("audio/")) return "audio";
  const ext = (name.match(/\.[^.]+$/) || [""])[0].toLowerCase();
  if ([".jpg", ".jpeg", ".png", ".bmp", ".webp"].includes(ext)) return "image";
  if ([".wav", ".flac"].includes(ext)) return "audio";
  return "video";
}

function chooseFile(file) {
  if (!file) return;
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(file);
  state.source = { file };
  $("clips").value = "";
  $("chosen").textContent = `${file.name} · ${fmtBytes(file.size)}`;
  preview(state.objectUrl, kindOf(file.name, file.type));
  clearMessage();
  $("go").disabled = state.running;
}

function chooseClip(name) {
  if (!name) return;
  state.source = { clip: name };
  $("file").value = "";
  $("chosen").textContent = "";
  preview(`api/clips/${encodeURIComponent(name)}`, kindOf(name, ""));
  clearMessage();
  $("go").disabled = state.running;
}

// ---------------------------------------------------------------------------------- output
function resetOutput() {
  $("output").dataset.empty = "0";
  const label = $("label");
  label.textContent = "…";
  label.dataset.label = "none";
  $("label-note").textContent = "";
  const reasoning = $("reasoning");
  reasoning.textContent = "";
  reasoning.dataset.done = "0";
  reasoning.dataset.chunks = "0";
  state.streamed = "";
  state.chunks = 0;
  $("stream-state").textContent = "";
  $("views-empty").hidden = false;
  $("views-empty").textContent = "analysing the clip…";
  for (const id of ["peak-fig", "face-fig", "frames-block", "crops-block"]) $(id).hidden = true;
  $("cues").replaceChildren(el("dt", {}, "—"), el("dd", {}, "after the analysis"));
  $("timings").replaceChildren(el("p", { class: "placeholder" }, "per stage, when the answer is done"));
  $("prompt").textContent = "";
}

function feedChips(target, names) {
  target.replaceChildren();
  if (!names || !names.length) return;
  target.appendChild(document.createTextNode(" → "));
  for (const n of names) target.appendChild(el("span", { class: "chip", "data-modality": n }, n));
}

function showImages(images, feeds) {
  if (!images || !images.peak) {
    $("views-empty").textContent = "no frames: an audio file (or the frames could not be drawn)";
    return;
  }
  $("views-empty").hidden = true;
  const peak = images.peak;
  $("peak").src = peak.src;
  $("peak-cap").textContent = (peak.is_peak ? "Peak frame" : "Middle frame (no peak found: no face)") +
    ` · ${when(peak)}` + (feeds && feeds.peak && feeds.peak.length ? ` · fed to ${feeds.peak.join(", ")}` : "");
  $("peak-fig").hidden = false;
  if (images.face) {
    $("face").src = images.face.src;
    $("face-cap").textContent = "Face at the peak, aligned";
    $("face-fig").hidden = false;
  }
  const strip = (id, items, block, feedIds) => {
    const box = $(id);
    box.replaceChildren();
    for (const item of items || []) {
      const fig = el("figure", item.peak ? { class: "peak" } : {});
      fig.appendChild(el("img", { src: item.src, alt: when(item), title: when(item) }));
      fig.appendChild(el("figcaption", {}, item.time_s === null || item.time_s === undefined ? `#${item.frame}` : `${item.time_s.toFixed(2)} s`));
      box.appendChild(fig);
    }
    $(block).hidden = !(items && items.length);
    feedChips($(feedIds[0]), feedIds[1]);
  };
  strip("frames", images.frames, "frames-block", ["frames-feeds", feeds && feeds.frames]);
  strip("crops", images.crops, "crops-block", ["crops-feeds", feeds && feeds.crops]);
}

function cueRow(list, name, value) {
  if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return;
  list.appendChild(el("dt", {}, name));
  const dd = el("dd");
  if (value instanceof Node) dd.appendChild(value); else dd.textContent = String(value);
  list.appendChild(dd);
}

function chips(values, cls) {
  const span = el("span");
  for (const v of values) span.appendChild(el("span", { class: `chip ${cls || ""}` }, v));
  return span;
}

function showCues(result) {
  const cues = result.cues || {};
  const list = $("cues");
  list.replaceChildren();
  const fed = chips(cues.modalities_fed || []);
  for (const [name, why] of Object.entries(cues.modalities_absent || {})) {
    const chip = el("span", { class: "chip absent", title: why }, name);
    fed.appendChild(chip);
    fed.appendChild(el("small", {}, ` (${why}) `));
  }
  cueRow(list, "Modalities fed", fed);
  if (cues.pseudo_label) {
    const conf = typeof cues.pseudo_label_confidence === "number" ? ` (confidence ${(cues.pseudo_label_confidence * 100).toFixed(0)} %)` : "";
    cueRow(list, "Pseudo-label", `${cues.pseudo_label}${conf} · the builder's, from the cues`);
  }
  cueRow(list, "AUs at the peak", cues.aus_present_at_peak ? chips(cues.aus_present_at_peak, "au") : null);
  cueRow(list, "Expression", Array.isArray(cues.expression) ? cues.expression.join(", ") : cues.expression);
  cueRow(list, "Tone", Array.isArray(cues.tone) ? cues.tone.join(", ") : cues.tone);
  if (cues.subtitle) cueRow(list, "Subtitle", `“${cues.subtitle}”` + (cues.subtitle_source ? ` (${cues.subtitle_source})` : ""));
  cueRow(list, "Description", cues.coarse_description);
  cueRow(list, "Visual description", cues.visual_description);
  cueRow(list, "Peak frame", cues.peak_frame);
  cueRow(list, "Flags", Array.isArray(cues.flags) ? cues.flags.join(", ") : cues.flags);
  if (!list.children.length) cueRow(list, "—", "no cues");
  $("prompt").textContent = cues.prompt || "";
}

function showTimings(result) {
  const box = $("timings");
  box.replaceChildren();
  const t = result.timings_s || {};
  const stages = ["analyse", "encoders", "generate"].filter((k) => typeof t[k] === "number");
  const max = Math.max(...stages.map((k) => t[k]), 1e-6);
  for (const k of stages) {
    const row = el("div", { class: "row", "data-stage": k });
    row.appendChild(el("span", {}, k));
    const track = el("div", { class: "track" });
    const fill = el("div", { class: `fill ${k}` });
    fill.style.width = `${(100 * t[k]) / max}%`;
    track.appendChild(fill);
    row.appendChild(track);
    row.appendChild(el("span", { class: "num" }, `${t[k].toFixed(3)} s`));
    box.appendChild(row);
  }
  const parts = [];
  if (typeof result.wall_s === "number") parts.push(`total ${result.wall_s.toFixed(2)} s on the server`);
  if (result.stream && result.stream.first_token_s !== null) parts.push(`first text after ${result.stream.first_token_s.toFixed(2)} s`);
  if (result.stream) parts.push(`${result.stream.chunks} streamed chunk${result.stream.chunks === 1 ? "" : "s"}`);
  box.appendChild(el("p", { class: "total" }, parts.join(" · ")));
}

function showResult(result) {
  const label = $("label");
  label.textContent = result.label || "no label";
  label.dataset.label = result.label || "none";
  $("label-note").textContent = result.label ? `parsed from the answer (${result.task})` : "none of the label set in the answer";
  const reasoning = $("reasoning");
  // the streamed text, trimmed as the server trims the answer, is the answer: show the server's copy
  reasoning.dataset.chunks = String(state.chunks);
  reasoning.dataset.streamedMatches = state.streamed.trim() === result.text ? "1" : "0";
  reasoning.textContent = result.text;
  reasoning.dataset.done = "1";
  $("stream-state").textContent = "";
  showCues(result);
  showTimings(result);
}

// ---------------------------------------------------------------------------------- the request
function* sseEvents(buffer) {
  // yields [event, data] for every complete block in buffer.text, leaving the rest there
  let cut;
  while ((cut = buffer.text.indexOf("\n\n")) >= 0) {
    const block = buffer.text.slice(0, cut);
    buffer.text = buffer.text.slice(cut + 2);
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length) yield [event, JSON.parse(data.join("\n"))];
  }
}

async function explain() {
  if (!state.source || state.running) return;
  state.running = true;
  $("go").disabled = true;
  clearMessage();
  resetOutput();
  setStatus("working", "working");
  const form = new FormData();
  if (state.source.file) form.append("file", state.source.file, state.source.file.name);
  else form.append("clip", state.source.clip);
  form.append("task", document.querySelector('input[name="task"]:checked').value);
  const subtitle = $("subtitle").value.trim();
  if (subtitle) form.append("subtitle", subtitle);
  let finished = false;
  try {
    const res = await fetch("api/explain/stream", { method: "POST", body: form });
    if (!res.ok) {
      let body = {};
      try { body = await res.json(); } catch (_) { body = { error: `${res.status} ${res.statusText}` }; }
      fail(body, res.status);
      finished = true;
      return;
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    const buffer = { text: "" };
    const reasoning = $("reasoning");
    for (;;) {
      const { value, done } = await reader.read();
      if (value) buffer.text += decoder.decode(value, { stream: true });
      for (const [event, data] of sseEvents(buffer)) {
        if (event === "start") {
          $("stream-state").textContent = "analysing the clip…";
        } else if (event === "analysed") {
          showImages(data.images, data.feeds);
          $("stream-state").textContent = "encoding, then generating…";
        } else if (event === "token") {
          state.streamed += data.text;
          state.chunks += 1;
          reasoning.textContent = state.streamed;
          $("stream-state").textContent = "generating…";
        } else if (event === "result") {
          showResult(data);
          setStatus("done", "done");
          finished = true;
        } else if (event === "error") {
          fail(data, data.status);
          finished = true;
        }
      }
      if (done) break;
    }
    if (!finished) fail({ error: "the answer stopped before it was finished", hint: "see the server's log" }, 500);
  } catch (err) {
    fail({ error: `the request failed: ${err.message}`, hint: "is `emollm serve` still running?" }, 0);
  } finally {
    state.running = false;
    $("go").disabled = !state.source;
  }
}

function fail(body, status) {
  const busy = status === 503;
  showMessage(body.error, body.hint, busy ? "busy" : "error");
  setStatus(busy ? "busy" : "error", busy ? "busy" : "error");
  $("label").textContent = "—";
  $("label").dataset.label = "none";
  $("reasoning").dataset.done = "1";
  $("stream-state").textContent = "";
  if ($("peak-fig").hidden) {  // frames already shown (the clip failed after its analysis) stay
    $("views-empty").hidden = false;
    $("views-empty").textContent = busy ? "the model is busy with another clip: try again in a moment" : "no answer for this file";
  }
  $("cues").replaceChildren();
  $("timings").replaceChildren();
}

// ---------------------------------------------------------------------------------- wiring
window.addEventListener("DOMContentLoaded", () => {
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  $("clips").addEventListener("change", (e) => chooseClip(e.target.value));
  $("go").addEventListener("click", explain);
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => {
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) chooseFile(file);
  });
  loadInfo();
});
