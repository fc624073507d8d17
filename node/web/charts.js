// Hand-written SVG charts. Amount series (BigInt wei) are scaled in BigInt arithmetic: pixel = value * height / max,
// an integer of at most the chart's height; no amount is ever converted to a Number.

import { s } from "./dom.js";

const W = 640, H = 200, PAD = { l: 8, r: 8, t: 10, b: 22 };

function frame(label, extra) {
  return s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label, ...extra },
    s("line", { x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b, class: "axis" }));
}

function xScale(xs) {
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const span = x1 > x0 ? x1 - x0 : 1;
  return (x) => PAD.l + ((x - x0) * (W - PAD.l - PAD.r)) / span;
}

function timeLabel(t) {
  return new Date(t * 1000).toISOString().slice(11, 19);
}

// points: [{x: block number, t: seconds, y: BigInt}] -> a step line of a cumulative amount (x by block, so batches
// settled within one second stay apart; labels show their times)
export function amountStepChart(points, label, format) {
  const svg = frame(label, { "data-chart": "amount" });
  if (!points.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, class: "note", "text-anchor": "middle" }, "nothing settled yet"));
    return svg;
  }
  const first = points[0];
  const pts = [{ x: points.length === 1 ? first.x - 1 : first.x, t: first.t, y: 0n }, ...points];
  const max = pts.reduce((m, p) => (p.y > m ? p.y : m), 1n);
  const plotH = BigInt(H - PAD.t - PAD.b);
  const X = xScale(pts.map((p) => p.x));
  const Y = (y) => `${BigInt(H - PAD.b) - (y * plotH) / max}`;   // BigInt -> decimal string of a pixel row
  let d = `M${X(pts[0].x).toFixed(1)},${Y(pts[0].y)}`;
  for (let i = 1; i < pts.length; i++) d += ` H${X(pts[i].x).toFixed(1)} V${Y(pts[i].y)}`;
  svg.append(s("path", { d, class: "series" }));
  for (const p of pts.slice(1)) {
    svg.append(s("circle", { cx: X(p.x).toFixed(1), cy: Y(p.y), r: 3, class: "dot" },
      s("title", {}, `block ${p.x}, ${timeLabel(p.t)}: ${format(p.y)}`)));
  }
  svg.append(s("text", { x: W - PAD.r, y: PAD.t + 10, "text-anchor": "end", class: "note" }, format(max)));
  svg.append(s("text", { x: PAD.l, y: H - 6, class: "note" }, `block ${first.x} · ${timeLabel(first.t)}`));
  const last = pts[pts.length - 1];
  svg.append(s("text", { x: W - PAD.r, y: H - 6, "text-anchor": "end", class: "note" }, `block ${last.x} · ${timeLabel(last.t)}`));
  return svg;
}

// series: [{name, cls, points: [{x: seconds, y: number}]}] (rates and counts, not amounts)
export function lineChart(series, label) {
  const svg = frame(label, { "data-chart": "line" });
  const all = series.flatMap((x) => x.points);
  if (all.length < 2) {
    svg.append(s("text", { x: W / 2, y: H / 2, class: "note", "text-anchor": "middle" }, "collecting samples…"));
    return svg;
  }
  const max = Math.max(1, ...all.map((p) => p.y));
  const X = xScale(all.map((p) => p.x));
  const Y = (y) => (H - PAD.b - (y * (H - PAD.t - PAD.b)) / max).toFixed(1);
  series.forEach((ser, i) => {
    if (!ser.points.length) return;
    const d = ser.points.map((p, j) => `${j ? "L" : "M"}${X(p.x).toFixed(1)},${Y(p.y)}`).join(" ");
    svg.append(s("path", { d, class: `series ${ser.cls || ""}` }));
    svg.append(s("text", { x: PAD.l + 4 + i * 150, y: PAD.t + 10, class: `legend ${ser.cls || ""}` },
      `${ser.name}: ${ser.points[ser.points.length - 1].y}`));
  });
  svg.append(s("text", { x: W - PAD.r, y: PAD.t + 10, "text-anchor": "end", class: "note" }, `max ${max}`));
  return svg;
}

// used / total as a horizontal bar (small integers: block counts, bytes)
export function bar(used, total, label) {
  const frac = total > 0 ? Math.min(1, used / total) : 0;
  return s("svg", { viewBox: "0 0 200 14", class: "bar", role: "img", "aria-label": label },
    s("rect", { x: 0, y: 0, width: 200, height: 14, class: "bar-bg" }),
    s("rect", { x: 0, y: 0, width: (200 * frac).toFixed(1), height: 14, class: "bar-fg" }));
}
