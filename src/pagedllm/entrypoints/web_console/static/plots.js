// Small line plots on a canvas for the engine view's history (throughput, TTFT, KV usage), in
// the theme's colours, sized for the device's pixel ratio.

// Colours come from the theme's custom properties so the plots follow light / dark mode.
export function themeColour(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

// 1, 2, 2.5, 5 times a power of ten: axis maxima that read well.
export function niceCeil(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power + 1e-9) return step * power;
  }
  return 10 * power;
}

export function formatNumber(value) {
  if (value >= 1000) return `${(value / 1000).toFixed(value >= 10000 ? 0 : 1)}k`;
  if (value >= 10 || Number.isInteger(value)) return String(Math.round(value));
  return value.toFixed(1);
}

function formatSpan(seconds) {
  if (seconds >= 90) return `−${Math.round(seconds / 60)} min`;
  return `−${Math.round(seconds)} s`;
}

// Sizes the canvas's backing store to its CSS box; returns the context scaled to CSS pixels.
function prepare(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return null;
  const w = Math.round(width * dpr);
  const h = Math.round(height * dpr);
  // Assigning width clears the canvas and its state even when unchanged: only on a real change.
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

// series: [{values: (number|null)[], colour, skipNulls}], one value per entry of `times`
// (seconds). skipNulls: a null is left out and the line joins its neighbours (TTFT has a value
// only in the seconds a first token came); otherwise a null breaks the line.
// fixedMax: the y axis top (KV usage is always out of 100); otherwise it follows the data.
export function drawLinePlot(canvas, { times, series, fixedMax = null, unit = "", interval = 1 }) {
  const box = prepare(canvas);
  if (!box) return;
  const { ctx, width, height } = box;
  const textColour = themeColour("--muted", "#667");
  const gridColour = themeColour("--plot-grid", "#ccd");
  const font = getComputedStyle(document.body).fontFamily;
  const pad = { top: 16, bottom: 16, left: 2, right: 2 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;

  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  const yMax = fixedMax ?? niceCeil(max * 1.05);

  const tEnd = times.length ? times[times.length - 1] : 0;
  const first = times.length ? times[0] : 0;
  // At least a minute across, so the first samples do not stretch over the whole width.
  const span = Math.max(60, tEnd - first);
  const x = (t) => pad.left + plotW * (1 - (tEnd - t) / span);
  const y = (v) => pad.top + plotH * (1 - Math.min(v, yMax) / yMax);

  ctx.lineWidth = 1;
  ctx.strokeStyle = gridColour;
  ctx.setLineDash([3, 3]);
  for (const frac of [0, 0.5]) {
    const gy = Math.round(pad.top + plotH * frac) + 0.5;
    ctx.beginPath();
    ctx.moveTo(pad.left, gy);
    ctx.lineTo(width - pad.right, gy);
    ctx.stroke();
  }
  ctx.setLineDash([]);
  ctx.beginPath();
  const baseY = Math.round(pad.top + plotH) + 0.5;
  ctx.moveTo(pad.left, baseY);
  ctx.lineTo(width - pad.right, baseY);
  ctx.stroke();

  ctx.fillStyle = textColour;
  ctx.font = `11px ${font}`;
  ctx.textBaseline = "bottom";
  ctx.textAlign = "left";
  ctx.fillText(`max ${formatNumber(yMax)}${unit}`, pad.left + 2, pad.top - 3);
  ctx.textBaseline = "top";
  ctx.fillText(times.length ? formatSpan(span) : "no samples yet", pad.left + 2, baseY + 3);
  ctx.textAlign = "right";
  ctx.fillText("now", width - pad.right - 2, baseY + 3);

  ctx.lineWidth = 1.5;
  ctx.lineJoin = "round";
  for (const s of series) {
    ctx.strokeStyle = s.colour;
    ctx.fillStyle = s.colour;
    const runs = runsOf(times, s.values, interval, s.skipNulls);
    // Sparse measurements get a dot each so that a joined line does not hide where they are.
    const points = runs.reduce((n, run) => n + run.length, 0);
    const dots = s.skipNulls && points <= plotW / 6;
    for (const run of runs) {
      if (dots || run.length === 1) {
        for (const [t, v] of run) {
          ctx.beginPath();
          ctx.arc(x(t), y(v), 2, 0, Math.PI * 2);
          ctx.fill();
        }
      }
      if (run.length === 1) {
        continue; // a lone value: its dot is all there is to draw
      }
      ctx.beginPath();
      ctx.moveTo(x(run[0][0]), y(run[0][1]));
      for (let i = 1; i < run.length; i++) ctx.lineTo(x(run[i][0]), y(run[i][1]));
      ctx.stroke();
    }
  }
}

// Splits a series into runs of [time, value] to draw as one line each: a hole in the samples
// (the server restarted, the tab slept) breaks the line instead of bridging it, and so does a
// null unless skipNulls.
function runsOf(times, values, interval, skipNulls) {
  const runs = [];
  let run = null;
  for (let i = 0; i < times.length; i++) {
    const v = values[i];
    const gap = times[i] - (i > 0 ? times[i - 1] : -Infinity) > interval * 2.5;
    if (v === null || v === undefined || !Number.isFinite(v)) {
      if (!skipNulls || gap) run = null;
      continue;
    }
    if (run === null || gap) {
      run = [];
      runs.push(run);
    }
    run.push([times[i], v]);
  }
  return runs;
}
