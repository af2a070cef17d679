// The engine view: polls GET /engine/snapshot while shown, and draws what it holds: the totals,
// a grid of KV blocks per replica and KV-cache group, the request tables and the history plots.

import { getSnapshot } from "./api.js";
import { drawLinePlot, themeColour } from "./plots.js";

const POLL_MS = 500;
const RETRY_MS = 2000; // after a failed poll: a server that is down is not asked twice a second
const HISTORY_S = 600;
const STATE_NAMES = ["free", "in use", "cached"];

const $ = (id) => document.getElementById(id);

function percent(fraction) {
  return Number.isFinite(fraction) ? `${(fraction * 100).toFixed(1)}%` : "–";
}

// ImageData is RGBA bytes; its Uint32 view reads them in the platform's byte order.
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function packColour(css) {
  let m = /^#([0-9a-f]{3})$/i.exec(css);
  let r = 128, g = 128, b = 128;
  if (m) {
    [r, g, b] = [...m[1]].map((c) => parseInt(c + c, 16));
  } else if ((m = /^#([0-9a-f]{6})$/i.exec(css))) {
    [r, g, b] = [0, 2, 4].map((i) => parseInt(m[1].slice(i, i + 2), 16));
  } else if ((m = /^rgba?\(\s*(\d+)[\s,]+(\d+)[\s,]+(\d+)/i.exec(css))) {
    [r, g, b] = [m[1], m[2], m[3]].map(Number);
  }
  return LITTLE_ENDIAN ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0 : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0;
}

function decodeBase64(b64) {
  if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(b64);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// The largest cell (CSS px, up to 12) that keeps the grid within maxHeight; 1 px at the least.
function pickCell(numBlocks, width, maxHeight) {
  for (let cell = 12; cell > 1; cell--) {
    const cols = Math.floor(width / cell);
    if (cols > 0 && Math.ceil(numBlocks / cols) * cell <= maxHeight) return cell;
  }
  return 1;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// One replica's KV-cache group: its section, canvas grid and legend, redrawn in place.
class BlockGrid {
  constructor(replica, group) {
    this.section = el("section", "kv-group");
    this.section.dataset.replica = String(replica);
    this.section.dataset.group = String(group);
    this.title = el("h4", "kv-title");
    this.wrap = el("div", "kv-canvas-wrap");
    this.canvas = el("canvas", "kv-canvas");
    this.canvas.setAttribute("role", "img");
    this.wrap.appendChild(this.canvas);
    this.legend = el("ul", "legend");
    this.counts = {};
    for (const [key, label] of [["free", "free"], ["used", "in use"], ["cached", "cached"]]) {
      const li = el("li");
      li.append(el("span", `swatch swatch-${key}`), el("span", null, `${label} `));
      this.counts[key] = el("strong", null, "0");
      li.appendChild(this.counts[key]);
      this.legend.appendChild(li);
    }
    this.section.append(this.title, this.wrap, this.legend);
    // A small offscreen canvas holds one pixel per block; drawImage scales it up.
    this.off = document.createElement("canvas");
    this.states = new Uint8Array(0);
    this.b64 = null;
    this.drawnKey = "";
    this.layout = null;
    this.canvas.addEventListener("mousemove", (event) => this.hover(event));
  }

  update(replica, g, blockSize) {
    this.numBlocks = g.num_blocks;
    const d = this.section.dataset;
    d.numBlocks = String(g.num_blocks);
    d.free = String(g.num_free);
    d.inUse = String(g.num_in_use);
    d.cached = String(g.num_cached);
    let title = `Group ${g.group} · ${g.num_blocks.toLocaleString()} blocks of ${blockSize} tokens`;
    if (g.sliding_window) title += ` · sliding window ${g.sliding_window.toLocaleString()}`;
    this.title.textContent = title;
    this.counts.free.textContent = g.num_free.toLocaleString();
    this.counts.used.textContent = g.num_in_use.toLocaleString();
    this.counts.cached.textContent = g.num_cached.toLocaleString();
    this.canvas.setAttribute(
      "aria-label",
      `KV blocks of replica ${replica}, group ${g.group}: ${g.num_free} free, ${g.num_in_use} in use, ${g.num_cached} cached`,
    );
    // Same string, same blocks: the decode is skipped (the common case on an idle server).
    if (g.block_states !== this.b64) {
      this.b64 = g.block_states;
      this.states = decodeBase64(g.block_states || "");
    }
  }

  draw(colours, force) {
    const width = this.wrap.clientWidth;
    if (!width) return; // hidden: drawn when shown
    const dpr = window.devicePixelRatio || 1;
    const key = `${this.b64?.length}:${width}:${dpr}`;
    if (!force && key === this.drawnKey && this.drawnB64 === this.b64) return;
    this.drawnKey = key;
    this.drawnB64 = this.b64;

    const n = Math.max(1, this.numBlocks || this.states.length);
    const cell = pickCell(n, width, Math.max(160, Math.min(360, window.innerHeight * 0.45)));
    // Whole device pixels per cell keep every cell the same size at fractional pixel ratios.
    const cellDev = Math.max(1, Math.round(cell * dpr));
    const cols = Math.max(1, Math.floor((width * dpr) / cellDev));
    const rows = Math.ceil(n / cols);
    this.layout = { cols, cellDev, dpr, n };

    if (this.off.width !== cols || this.off.height !== rows) {
      this.off.width = cols;
      this.off.height = rows;
      this.image = null;
    }
    const offCtx = this.off.getContext("2d");
    if (!this.image) {
      this.image = offCtx.createImageData(cols, rows);
      this.pixels = new Uint32Array(this.image.data.buffer);
    }
    const pixels = this.pixels;
    const states = this.states;
    const palette = colours.blocks;
    const count = Math.min(n, states.length);
    for (let i = 0; i < count; i++) pixels[i] = palette[states[i]] ?? palette[0];
    pixels.fill(0, count); // cells past the last block stay transparent
    offCtx.putImageData(this.image, 0, 0);

    const w = cols * cellDev;
    const h = rows * cellDev;
    if (this.canvas.width !== w) this.canvas.width = w;
    if (this.canvas.height !== h) this.canvas.height = h;
    this.canvas.style.width = `${w / dpr}px`;
    this.canvas.style.height = `${h / dpr}px`;
    const ctx = this.canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, w, h);
    ctx.drawImage(this.off, 0, 0, w, h);
    if (cell >= 6) {
      // Grid lines are cut out of the scaled image: O(rows + cols), not one draw per block.
      const gap = Math.max(1, Math.round(dpr));
      ctx.globalCompositeOperation = "destination-out";
      for (let c = 1; c <= cols; c++) ctx.fillRect(c * cellDev - gap, 0, gap, h);
      for (let r = 1; r <= rows; r++) ctx.fillRect(0, r * cellDev - gap, w, gap);
      ctx.globalCompositeOperation = "source-over";
    }
  }

  hover(event) {
    if (!this.layout) return;
    const { cols, cellDev, dpr, n } = this.layout;
    const rect = this.canvas.getBoundingClientRect();
    const col = Math.floor(((event.clientX - rect.left) * dpr) / cellDev);
    const row = Math.floor(((event.clientY - rect.top) * dpr) / cellDev);
    const index = row * cols + col;
    this.canvas.title = col < cols && index >= 0 && index < n ? `block ${index + 1}: ${STATE_NAMES[this.states[index]] ?? "?"}` : "";
  }
}

// A request table whose rows are kept by request id and updated in place.
class RequestTable {
  constructor(table, countEl) {
    this.tbody = table.tBodies[0];
    this.countEl = countEl;
    this.rows = new Map();
  }

  update(requests, total) {
    const seen = new Set();
    requests.forEach((req, index) => {
      seen.add(req.request_id);
      let row = this.rows.get(req.request_id);
      if (!row) {
        row = this.createRow(req.request_id);
        this.rows.set(req.request_id, row);
      }
      this.fill(row, req);
      // Moving a row that is already in place would restart its progress transitions.
      if (this.tbody.children[index] !== row.tr) this.tbody.insertBefore(row.tr, this.tbody.children[index] ?? null);
    });
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
    this.countEl.textContent =
      total > requests.length ? `(${requests.length} of ${total} listed)` : `(${total})`;
  }

  createRow(id) {
    const tr = el("tr");
    tr.dataset.requestId = id;
    const idCell = el("td", "req-id");
    const code = el("code", null, id);
    code.title = id;
    idCell.appendChild(code);
    const replica = el("td", "num");
    const status = el("td");
    const prompt = progressCell();
    const generated = progressCell();
    const blocks = el("td", "num");
    tr.append(idCell, replica, status, prompt.td, generated.td, blocks);
    return { tr, replica, status, prompt, generated, blocks };
  }

  fill(row, req) {
    row.replica.textContent = String(req.replica);
    row.status.textContent = req.status;
    row.status.className = `status status-${req.status}`;
    const promptTotal = req.num_prompt_tokens;
    setProgress(row.prompt, Math.min(req.num_computed_tokens, promptTotal), promptTotal);
    setProgress(row.generated, req.num_output_tokens, req.max_tokens);
    row.blocks.textContent = String(req.num_blocks);
  }
}

function progressCell() {
  const td = el("td", "progress-cell");
  const bar = el("progress");
  const label = el("span", "progress-label");
  td.append(bar, label);
  return { td, bar, label };
}

function setProgress(cell, value, max) {
  const known = Number.isFinite(max) && max > 0;
  if (known) {
    cell.bar.max = max;
    cell.bar.value = Math.min(value, max);
    cell.bar.hidden = false;
  } else {
    cell.bar.hidden = true; // no max_tokens: nothing to measure progress against
  }
  cell.label.textContent = known ? `${value.toLocaleString()} / ${max.toLocaleString()}` : value.toLocaleString();
}

export class EngineView {
  constructor({ onAuthError } = {}) {
    this.onAuthError = onAuthError;
    this.statusEl = $("engine-status");
    this.replicasEl = $("replicas");
    this.running = new RequestTable($("running-requests"), $("running-count"));
    this.waiting = new RequestTable($("waiting-requests"), $("waiting-count"));
    this.replicas = new Map(); // replica index -> {box, heading, error, groups: Map}
    this.samples = [];
    this.snapshot = null;
    this.polling = false;
    this.generation = 0;
    this.timer = null;
    this.inflight = null;
    this.readColours();
    this.frame = 0;
    this.lastWidth = 0;
    // Only a change of width needs a redraw: our own drawing changes heights, and reacting to
    // those would loop.
    new ResizeObserver((entries) => {
      const width = entries[0].contentRect.width;
      if (width !== this.lastWidth) {
        this.lastWidth = width;
        this.requestDraw(true);
      }
    }).observe($("engine-panel"));
  }

  readColours() {
    this.colours = {
      blocks: [
        packColour(themeColour("--block-free", "#d0d5dd")),
        packColour(themeColour("--block-used", "#2563eb")),
        packColour(themeColour("--block-cached", "#f59e0b")),
      ],
      plot1: themeColour("--plot-1", "#7c3aed"),
      plot2: themeColour("--plot-2", "#059669"),
      plot3: themeColour("--plot-3", "#dc2626"),
    };
  }

  themeChanged() {
    this.readColours();
    this.requestDraw(true);
  }

  start() {
    if (this.polling) return;
    this.polling = true;
    this.poll(++this.generation);
  }

  stop() {
    this.polling = false;
    this.generation++;
    clearTimeout(this.timer);
    this.inflight?.abort();
    this.inflight = null;
  }

  async poll(generation) {
    const began = performance.now();
    const controller = new AbortController();
    this.inflight = controller;
    let delay = POLL_MS;
    try {
      const newest = this.samples.length ? this.samples[this.samples.length - 1].time : null;
      const snapshot = await getSnapshot(newest, controller.signal);
      if (generation !== this.generation) return;
      this.apply(snapshot);
      this.statusEl.textContent = "";
      this.statusEl.classList.remove("error");
    } catch (err) {
      if (generation !== this.generation) return; // stopped meanwhile: this answer is stale
      if (err?.status === 401) {
        this.stop();
        this.onAuthError?.();
        return;
      }
      this.statusEl.textContent = `Could not read the engine's state: ${err?.message ?? err}`;
      this.statusEl.classList.add("error");
      delay = RETRY_MS;
    } finally {
      if (this.inflight === controller) this.inflight = null;
    }
    if (!this.polling || generation !== this.generation) return;
    this.timer = setTimeout(() => this.poll(generation), Math.max(0, delay - (performance.now() - began)));
  }

  // Takes a snapshot (from a poll, or the page's first one) into the view.
  apply(snapshot) {
    this.snapshot = snapshot;
    this.mergeHistory(snapshot.history);
    this.updateTotals(snapshot.totals);
    this.updateReplicas(snapshot);
    const listed = (key) =>
      snapshot.replicas.flatMap((r) => (r[key] ?? []).map((req) => ({ ...req, replica: r.replica })));
    this.running.update(listed("running"), snapshot.totals.num_running);
    this.waiting.update(listed("waiting"), snapshot.totals.num_waiting);
    this.requestDraw(false);
  }

  mergeHistory(history) {
    if (!history) return;
    this.interval = history.interval_s || 1;
    const newest = this.samples.length ? this.samples[this.samples.length - 1].time : -Infinity;
    for (const s of history.samples ?? []) if (s.time > newest) this.samples.push(s);
    const cutoff = (this.samples.length ? this.samples[this.samples.length - 1].time : 0) - HISTORY_S;
    let drop = 0;
    while (drop < this.samples.length && this.samples[drop].time < cutoff) drop++;
    if (drop) this.samples.splice(0, drop);
  }

  updateTotals(t) {
    $("stat-running").textContent = String(t.num_running);
    $("stat-waiting").textContent = String(t.num_waiting);
    $("stat-kv-usage").textContent = percent(t.kv_cache_usage);
    $("stat-prefix-hit-rate").textContent =
      t.prefix_cache_queries > 0 ? percent(t.prefix_cache_hits / t.prefix_cache_queries) : "–";
    $("stat-preemptions").textContent = String(t.num_preemptions);
    $("stat-aborted").textContent = String(t.requests_aborted);
  }

  updateReplicas(snapshot) {
    const blockSize = snapshot.model?.block_size ?? "?";
    const seen = new Set();
    for (const r of snapshot.replicas) {
      seen.add(r.replica);
      let rep = this.replicas.get(r.replica);
      if (!rep) {
        rep = { box: el("div", "replica"), heading: el("h3", "replica-title"), error: el("p", "replica-error"), groups: new Map() };
        rep.box.dataset.replica = String(r.replica);
        rep.box.append(rep.heading, rep.error);
        this.replicasEl.appendChild(rep.box);
        this.replicas.set(r.replica, rep);
      }
      rep.box.classList.toggle("dead", !r.alive);
      const state = r.alive ? `step ${r.step}` : "stopped";
      rep.heading.textContent = `Replica ${r.replica} · ${state} · ${r.num_running} running · ${r.num_waiting} waiting · KV ${percent(r.kv_cache_usage)}`;
      rep.error.hidden = r.alive && !r.error;
      rep.error.textContent = r.alive ? r.error ?? "" : `This replica stopped: ${r.error ?? "no reason given"}`;
      const groupsSeen = new Set();
      for (const g of r.kv_groups ?? []) {
        groupsSeen.add(g.group);
        let grid = rep.groups.get(g.group);
        if (!grid) {
          grid = new BlockGrid(r.replica, g.group);
          rep.groups.set(g.group, grid);
          rep.box.appendChild(grid.section);
        }
        grid.update(r.replica, g, blockSize);
      }
      for (const [id, grid] of rep.groups) {
        if (!groupsSeen.has(id)) {
          grid.section.remove();
          rep.groups.delete(id);
        }
      }
    }
    for (const [id, rep] of this.replicas) {
      if (!seen.has(id)) {
        rep.box.remove();
        this.replicas.delete(id);
      }
    }
  }

  // Drawing waits for the next frame: several updates in one frame draw once, and a hidden
  // tab draws nothing.
  requestDraw(force) {
    this.forceDraw ||= force;
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      const forced = this.forceDraw;
      this.forceDraw = false;
      this.draw(forced);
    });
  }

  draw(force) {
    if ($("engine-panel").hidden) return;
    for (const rep of this.replicas.values()) for (const grid of rep.groups.values()) grid.draw(this.colours, force);
    const times = this.samples.map((s) => s.time);
    const interval = this.interval || 1;
    const c = this.colours;
    drawLinePlot($("plot-throughput"), {
      times,
      interval,
      series: [
        { values: this.samples.map((s) => s.prompt_tokens_per_s), colour: c.plot1 },
        { values: this.samples.map((s) => s.generation_tokens_per_s), colour: c.plot2 },
      ],
    });
    drawLinePlot($("plot-ttft"), {
      times,
      interval,
      unit: " ms",
      series: [{ values: this.samples.map((s) => s.ttft_ms), colour: c.plot3, skipNulls: true }],
    });
    drawLinePlot($("plot-kv"), {
      times,
      interval,
      unit: "%",
      fixedMax: 100,
      series: [{ values: this.samples.map((s) => (s.kv_cache_usage ?? 0) * 100), colour: c.plot2 }],
    });
  }
}
