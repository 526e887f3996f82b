// rtseg review page: show each sample with its pseudo mask, send decisions to the server.
// Decisions are queued one after another (a fast typist's "a r a" applies in order).
"use strict";

const FILL_RGBA = [255, 0, 200, 100];      // mask fill (magenta stands out on skin and clothes)
const EDGE_RGBA = [255, 255, 255, 255];    // mask outline
const FACE_COLOUR = "#ffe600";

const view = document.getElementById("view");
const ctx = view.getContext("2d");
const $ = (id) => document.getElementById(id);

const state = { items: [], counts: null, index: 0, overlay: true, versions: {}, drawToken: 0 };
let queue = Promise.resolve();  // serialises decisions and moves

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`cannot load ${url}`));
    img.src = url;
  });
}

function fileUrl(item, kind) {
  const v = state.versions[item.name] || 0;
  return `api/file?name=${encodeURIComponent(item.name)}&kind=${kind}&v=${v}`;
}

function firstUndecided(from) {
  const n = state.items.length;
  for (let k = 0; k < n; k++) {
    const j = (from + k) % n;
    if (!state.items[j].decision) return j;
  }
  return -1;
}

function describeDecision(d) {
  if (!d) return "undecided";
  return d.decision === "flip" ? `flip → ${d.teacher}` : d.decision;
}

function renderCounter() {
  const c = state.counts;
  if (!c) return;
  $("counter").textContent =
    `${c.left} left of ${c.total} · ${c.accept} accepted · ${c.reject} rejected · ${c.flip} flipped`;
  $("counter").dataset.left = String(c.left);
}

function renderInfo(item) {
  $("name").textContent = item.name;
  $("name").dataset.name = item.name;
  $("position").textContent = `${state.index + 1} / ${state.items.length} (${item.split || "?"})`;
  $("confidence").textContent = item.confidence.toFixed(3);
  const where = item.frame === null || item.frame === undefined
    ? item.source : `${item.source} · frame ${item.frame} (${item.time_s} s)`;
  $("source").textContent = where;
  const d = item.decision;
  $("shown").textContent = d && d.decision === "flip"
    ? `teacher ${d.teacher}` : `consensus of ${item.teachers.join(", ") || "?"}`;
  const dec = $("decision");
  dec.textContent = describeDecision(d);
  dec.className = d ? `d-${d.decision}` : "";
  $("ious").textContent = Object.entries(item.teacher_iou || {})
    .map(([t, v]) => `${t} ${Number(v).toFixed(2)}`).join(" · ") || "–";
  $("flip").disabled = item.teachers.length < 2;
  $("prev").disabled = state.index <= 0;
  $("next").disabled = state.index >= state.items.length - 1;
}

async function draw(item) {
  const token = ++state.drawToken;
  const [img, mask] = await Promise.all([loadImage(fileUrl(item, "image")), loadImage(fileUrl(item, "mask"))]);
  if (token !== state.drawToken) return;  // the user moved on meanwhile
  const w = img.naturalWidth, h = img.naturalHeight;
  view.width = w;
  view.height = h;
  ctx.drawImage(img, 0, 0);
  if (state.overlay) {
    const off = document.createElement("canvas");
    off.width = w;
    off.height = h;
    const octx = off.getContext("2d");
    octx.drawImage(mask, 0, 0, w, h);
    const m = octx.getImageData(0, 0, w, h);
    const px = m.data;
    const on = new Uint8Array(w * h);
    for (let k = 0; k < on.length; k++) on[k] = px[4 * k] > 127 ? 1 : 0;
    const r = Math.max(1, Math.round(Math.max(w, h) / 500));  // outline width
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const k = y * w + x;
        let edge = false;
        if (on[k]) {
          for (let dy = -r; dy <= r && !edge; dy++) {
            for (let dx = -r; dx <= r; dx++) {
              const yy = y + dy, xx = x + dx;
              if (yy >= 0 && yy < h && xx >= 0 && xx < w && !on[yy * w + xx]) { edge = true; break; }
            }
          }
        }
        const c = edge ? EDGE_RGBA : FILL_RGBA;
        px[4 * k] = c[0];
        px[4 * k + 1] = c[1];
        px[4 * k + 2] = c[2];
        px[4 * k + 3] = on[k] ? c[3] : 0;
      }
    }
    octx.putImageData(m, 0, 0);
    ctx.drawImage(off, 0, 0);
  }
  ctx.lineWidth = Math.max(2, Math.round(Math.max(w, h) / 300));
  ctx.strokeStyle = FACE_COLOUR;
  for (const f of item.faces || []) {
    const [x0, y0, x1, y1] = f.box;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  document.body.dataset.shown = item.name;
}

function render() {
  renderCounter();
  if (!state.items.length) {
    $("empty").hidden = false;
    view.hidden = true;
    for (const id of ["prev", "next", "accept", "reject", "flip", "undo"]) $(id).disabled = true;
    return;
  }
  const item = state.items[state.index];
  renderInfo(item);
  draw(item).catch((e) => setStatus(e.message, true));
}

function move(delta) {
  const j = state.index + delta;
  if (j < 0 || j >= state.items.length) return;
  state.index = j;
  render();
}

async function decide(decision) {
  if (!state.items.length) return;
  const item = state.items[state.index];
  if (decision === "flip" && item.teachers.length < 2) {
    setStatus("only one teacher labelled this sample: nothing to flip to", true);
    return;
  }
  try {
    const res = await api("api/decision", { name: item.name, decision });
    Object.assign(item, res.item);
    state.counts = res.counts;
    state.versions[item.name] = (state.versions[item.name] || 0) + 1;  // the mask may have changed
    setStatus(`saved: ${describeDecision(item.decision)} for ${item.name}`);
    document.body.dataset.saved = String(Number(document.body.dataset.saved || 0) + 1);
    if (decision === "accept" || decision === "reject") {
      const next = firstUndecided((state.index + 1) % state.items.length);
      if (next >= 0) state.index = next;
      else setStatus(`saved: ${describeDecision(item.decision)} for ${item.name}; all samples reviewed`);
    }
    render();
  } catch (e) {
    setStatus(`not saved: ${e.message}`, true);
  }
}

function enqueue(action) {
  queue = queue.then(action).catch((e) => setStatus(e.message, true));
  return queue;
}

const KEYS = {
  a: () => decide("accept"),
  r: () => decide("reject"),
  f: () => decide("flip"),
  u: () => decide("clear"),
  o: () => { state.overlay = !state.overlay; $("overlay").checked = state.overlay; render(); },
  ArrowLeft: () => move(-1),
  ArrowRight: () => move(1),
};

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const action = KEYS[ev.key] || KEYS[ev.key.toLowerCase()];
  if (!action) return;
  ev.preventDefault();
  enqueue(action);
});

$("accept").addEventListener("click", () => enqueue(() => decide("accept")));
$("reject").addEventListener("click", () => enqueue(() => decide("reject")));
$("flip").addEventListener("click", () => enqueue(() => decide("flip")));
$("undo").addEventListener("click", () => enqueue(() => decide("clear")));
$("prev").addEventListener("click", () => enqueue(() => move(-1)));
$("next").addEventListener("click", () => enqueue(() => move(1)));
$("overlay").addEventListener("change", (ev) => { state.overlay = ev.target.checked; render(); });

enqueue(async () => {
  const s = await api("api/state");
  state.items = s.items;
  state.counts = s.counts;
  const first = firstUndecided(0);
  state.index = first >= 0 ? first : 0;
  render();
  document.body.dataset.ready = "1";
});
