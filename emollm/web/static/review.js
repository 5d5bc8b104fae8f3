// emollm review page: plain JS, no framework, no build step (served by emollm/web/review.py).
"use strict";

const S = {
  items: [], pos: 0, labels: [], selected: null, clip: null, busy: false, seq: 0,
  muted: true, decidedHere: 0, skippedHere: 0, queue: null,
};
const $ = (id) => document.getElementById(id);
const enc = (id) => encodeURIComponent(id);  // ids hold '/', spaces, any script: always one encoded segment

async function api(path, opts) {
  const r = await fetch(path, Object.assign({credentials: "same-origin"}, opts || {}));
  let body = null;
  try { body = await r.json(); } catch (e) { body = {error: "HTTP " + r.status}; }
  if (!r.ok) {
    const err = new Error((body && body.error) || ("HTTP " + r.status));
    err.hint = body && body.hint;
    err.status = r.status;
    throw err;
  }
  return body;
}

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const kid of kids) if (kid != null) e.append(kid);
  return e;
}

function fmt(x, digits) { return x == null ? "—" : Number(x).toFixed(digits == null ? 2 : digits); }

function status(text, kind) {
  const s = $("status");
  s.textContent = text || "";
  s.className = "status" + (kind ? " " + kind : "");
}

function setBusy(b) { S.busy = b; $("app").dataset.busy = b ? "1" : "0"; }

// ------------------------------------------------------------------------------ progress / header
function showProgress(p) {
  if (!p) return;
  $("progress").textContent = `${p.reviewed} / ${p.total} reviewed · ${p.left} left`;
  $("progress-bar").style.width = (p.total ? (100 * p.reviewed / p.total) : 0) + "%";
}

function showPosition() {
  const n = S.items.length;
  $("position").textContent = !n ? "queue empty" : S.pos >= n ? `end (${n} in this queue)` : `clip ${S.pos + 1} of ${n}`;
}

// ---------------------------------------------------------------------------------------- pictures
function missing(text) { return el("div", {class: "missing", text}); }

async function loadPicture(box, url, alt, seq) {
  box.replaceChildren(missing("making the picture…"));
  try {
    const r = await fetch(url, {credentials: "same-origin"});
    if (seq !== S.seq) return;
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try { const b = await r.json(); msg = b.error || msg; } catch (e) { /* not JSON */ }
      box.replaceChildren(missing(msg));
      return;
    }
    const blob = await r.blob();
    if (seq !== S.seq) return;
    const img = el("img", {alt});
    img.src = URL.createObjectURL(blob);
    img.onload = () => URL.revokeObjectURL(img.src);
    box.replaceChildren(img);
  } catch (e) {
    if (seq === S.seq) box.replaceChildren(missing("cannot load: " + e.message));
  }
}

function showMedia(c, seq) {
  const player = $("player");
  const url = "/api/media/" + enc(c.id);
  if (c.media.kind === "image") {
    const img = el("img", {alt: "the clip (a still image)"});
    img.onerror = () => { if (seq === S.seq) player.replaceChildren(missing("the image cannot be shown")); };
    img.src = url;
    player.replaceChildren(img);
  } else if (c.media.kind === "audio" || !c.has_video) {
    const a = el("audio", {controls: "", preload: "auto"});
    a.src = url;
    player.replaceChildren(a);
  } else {
    const v = el("video", {controls: "", loop: "", playsinline: "", preload: "auto", autoplay: ""});
    v.muted = S.muted;
    v.onvolumechange = () => { S.muted = v.muted; };
    v.onerror = () => {
      if (seq === S.seq) player.replaceChildren(missing(
        `the browser cannot play this file (${c.media.type || c.media.path}); the frame strip below shows it`));
    };
    v.src = url;
    player.replaceChildren(v);
  }
  const pics = c.images || {};
  const why = c.image_error;
  const peakAt = c.peak_frame ? `#${c.peak_frame.index}` + (c.peak_frame.timestamp_s != null ? ` · ${fmt(c.peak_frame.timestamp_s)} s` : "") : "";
  $("peak-at").textContent = peakAt;
  const one = (kind, box, alt, none) => {
    if (pics[kind]) loadPicture(box, `/api/image/${kind}/${enc(c.id)}`, alt, seq);
    else box.replaceChildren(missing(why || none));
  };
  one("peak", $("pic-peak"), "peak frame", "no peak frame (no face found in the clip)");
  one("face", $("pic-face"), "face crop at the peak", "no face at the peak");
  one("aus", $("pic-aus"), "AU intensities at the peak", "no AU intensities at the peak");
  if (pics.strip) {
    loadPicture($("pic-strip"), `/api/image/strip/${enc(c.id)}`, "frames over the clip (red: peak)", seq);
    $("strip-caption").textContent = `frames over the clip (${fmt(c.duration_s, 1)} s; red: the peak)`;
  } else {
    $("pic-strip").replaceChildren();
    $("strip-caption").textContent = "";
  }
}

// ------------------------------------------------------------------------------------------ clip
function showTexts(c) {
  const dl = $("texts");
  dl.replaceChildren();
  const filt = c.reasoning_filter && c.reasoning_filter.kept === false ? ` (filtered: ${c.reasoning_filter.reason})` : "";
  const rows = [
    ["subtitle", c.subtitle], ["tone", c.tone], ["expression", c.expression],
    ["visual description", c.visual_description], ["coarse description", c.coarse_description],
    ["reasoning" + filt, c.reasoning],
  ];
  for (const [k, v] of rows) {
    dl.append(el("dt", {text: k}));
    dl.append(v ? el("dd", {text: v}) : el("dd", {class: "none", text: "none"}));
  }
  dl.append(el("dt", {text: "flags"}));
  dl.append(c.flags.length ? el("dd", {text: c.flags.join(", ")}) : el("dd", {class: "none", text: "none"}));
}

function showVotes(c) {
  const tb = $("votes");
  tb.replaceChildren();
  for (const v of c.cue_votes) {
    const what = v.label || (v.arousal ? `${v.arousal} arousal` : "?");
    const meter = el("span", {class: "meter"}, el("i"));
    meter.firstChild.style.width = Math.max(0, Math.min(1, v.strength || 0)) * 100 + "%";
    const td = el("td", {text: what});
    if (v.label && c.pseudo_label && v.label !== c.pseudo_label) td.className = "differs";
    tb.append(el("tr", {}, el("td", {text: v.cue}), td, el("td", {}, meter, fmt(v.strength)), el("td", {text: fmt(v.weight)})));
  }
  if (!c.cue_votes.length) tb.append(el("tr", {}, el("td", {colspan: "4", class: "muted", text: "no cue votes recorded"})));
  tb.append(el("tr", {class: "fused"}, el("td", {text: "fused"}), el("td", {text: c.pseudo_label || "—"}),
    el("td", {text: fmt(c.pseudo_label_confidence)}),
    el("td", {text: c.cue_agreement == null ? "" : `agreement ${fmt(c.cue_agreement)}`})));
}

function showLabels(c) {
  const box = $("labels");
  box.replaceChildren();
  S.labels.forEach((name, i) => {
    const b = el("button", {"data-label": name, title: i < 10 ? `key ${(i + 1) % 10}` : ""});
    if (i < 10) b.append(el("span", {class: "n", text: String((i + 1) % 10)}));
    b.append(name);
    if (c && name === c.pseudo_label) b.classList.add("pseudo");
    if (c && name === c.label) b.classList.add("current");
    if (name === S.selected) b.classList.add("selected");
    b.onclick = () => pick(i);
    box.append(b);
  });
  const acc = c && (c.pseudo_label || c.label);
  $("btn-accept").firstChild.textContent = acc ? `Accept ${acc} ` : "Accept ";
  $("btn-accept").disabled = !acc;
  $("btn-correct").firstChild.textContent = S.selected ? `Correct → ${S.selected} ` : "Correct ";
}

function showReview(c) {
  const r = c.review || {};
  const box = $("review-state");
  if (!r.state || r.state === "unreviewed") { box.hidden = true; return; }
  box.hidden = false;
  box.textContent = `${r.state}: ${c.label}` + (r.by ? ` · by ${r.by}` : "") + (r.at ? ` · ${r.at}` : "") +
    (r.note ? ` · “${r.note}”` : "") + (r.previous_label ? ` · was ${r.previous_label}` : "");
}

async function show(pos) {
  S.pos = pos;
  S.selected = null;
  const seq = ++S.seq;
  showPosition();
  const done = pos >= S.items.length;
  $("done").hidden = !done;
  for (const sec of document.querySelectorAll("main > section.media, main > section.side")) sec.hidden = done;
  $("app").classList.toggle("finished", done);
  if (done) {
    $("app").dataset.clipId = "";
    $("done-text").textContent = S.items.length
      ? `${S.decidedHere} decided and ${S.skippedHere} skipped on this page.`
      : "Nothing to review in this queue.";
    setBusy(false);
    return;
  }
  const id = S.items[pos].id;
  $("clip-id").textContent = id;
  $("app").dataset.clipId = id;
  setBusy(true);
  try {
    const c = await api("/api/clip/" + enc(id));
    if (seq !== S.seq) return;
    S.clip = c;
    const reasons = $("reasons");
    reasons.replaceChildren(...c.reasons.map((r) => el("span", {class: "chip", text: r.replace(/_/g, " ")})));
    $("pseudo").textContent = c.pseudo_label || "—";
    const conf = $("confidence");
    conf.textContent = fmt(c.pseudo_label_confidence);
    conf.classList.toggle("low", c.pseudo_label_confidence != null && c.pseudo_label_confidence < S.queue.threshold);
    $("label-now").textContent = c.label || "—";
    showReview(c);
    showVotes(c);
    showLabels(c);
    showTexts(c);
    showMedia(c, seq);
    $("note").value = "";
    prefetch(pos + 1);
  } catch (e) {
    if (seq === S.seq) status(`${e.message}${e.hint ? " — " + e.hint : ""}`, "err");
  } finally {
    if (seq === S.seq) setBusy(false);
  }
}

function prefetch(pos) {  // warm the server's picture cache for the next clip
  const it = S.items[pos];
  if (!it) return;
  for (const kind of ["peak", "aus"]) fetch(`/api/image/${kind}/${enc(it.id)}`, {credentials: "same-origin"}).catch(() => {});
}

// --------------------------------------------------------------------------------------- actions
function pick(i) {
  if (i < 0 || i >= S.labels.length) return;
  S.selected = S.labels[i];
  if (document.activeElement && document.activeElement.tagName === "BUTTON") document.activeElement.blur();
  showLabels(S.clip);
  status(`picked ${S.selected}: Enter or c corrects to it`);
}

async function decide(action) {
  if (S.busy || S.pos >= S.items.length) return;
  const it = S.items[S.pos];
  const body = {id: it.id, action, note: $("note").value.trim() || null};
  if (action === "correct") {
    if (!S.selected) { status("pick a label first: 1–9 (or click one), then Enter", "err"); return; }
    body.label = S.selected;
  }
  setBusy(true);
  try {
    const res = await api("/api/decision", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    it.state = res.review ? res.review.state : "reviewed";
    S.decidedHere += 1;
    showProgress(res.progress);
    setBusy(false);
    await show(S.pos + 1);
    status(`${it.id}: ${res.review.state} as ${res.label}`, "ok");
  } catch (e) {
    setBusy(false);
    status(`${e.message}${e.hint ? " — " + e.hint : ""}`, "err");
  }
}

function skip() {
  if (S.pos >= S.items.length) return;
  const id = S.items[S.pos].id;
  S.skippedHere += 1;
  show(S.pos + 1).then(() => status(`skipped ${id}`));
}

function back() {
  if (S.pos > 0) show(S.pos - 1).then(() => status(""));
}

function togglePlay() {
  const v = document.querySelector("#player video, #player audio");
  if (!v) return;
  if (v.paused) v.play().catch(() => {}); else v.pause();
}

function toggleSound() {
  const v = document.querySelector("#player video");
  if (!v) return;
  v.muted = !v.muted;
  S.muted = v.muted;
  status(v.muted ? "sound off" : "sound on");
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const typing = ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "TEXTAREA");
  if (typing) {
    if (ev.key === "Escape" || ev.key === "Enter") { ev.target.blur(); ev.preventDefault(); }
    return;
  }
  const k = ev.key;
  if (k === "a") decide("accept");
  else if (k === "Enter" || k === "c") decide("correct");
  else if (k === "s" || k === "ArrowRight") skip();
  else if (k === "ArrowLeft") back();
  else if (/^[0-9]$/.test(k)) pick(k === "0" ? 9 : Number(k) - 1);
  else if (k === "n") $("note").focus();
  else if (k === " ") togglePlay();
  else if (k === "m") toggleSound();
  else return;
  ev.preventDefault();
});

$("btn-accept").onclick = () => decide("accept");
$("btn-correct").onclick = () => decide("correct");
$("btn-skip").onclick = skip;
$("btn-back").onclick = back;
// buttons keep no focus: Enter / Space stay the page's shortcuts, not a click on the last button
for (const b of document.querySelectorAll("button")) b.addEventListener("mouseup", () => b.blur());

(async function start() {
  try {
    const q = await api("/api/queue");
    S.queue = q;
    S.items = q.items;
    S.labels = q.labels;
    $("dataset").textContent = q.dataset;
    $("queue-name").textContent = q.queue === "uncertain" ? `uncertain (confidence < ${q.threshold})` : "all clips";
    $("reviewer").textContent = q.reviewer;
    showProgress(q.progress);
    await show(q.start);
  } catch (e) {
    status(`${e.message}${e.hint ? " — " + e.hint : ""}`, "err");
    setBusy(false);
  }
})();
