/**
 * Shared helpers of the benchmarks: statistics, a tiny dependency-free SVG plotter and the
 * markdown writer for bench/results/<name>.md.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const RESULTS_DIR = path.join(REPO_ROOT, "bench", "results");

export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i]!;
}

export function median(xs: readonly number[]): number {
  return percentile(xs, 50);
}

export function mean(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

export function fmt(n: number, digits = 2): string {
  if (!Number.isFinite(n)) return String(n);
  const a = Math.abs(n);
  if (a >= 1e6) return `${(n / 1e6).toFixed(digits)} M`;
  if (a >= 1e4) return `${(n / 1e3).toFixed(1)} k`;
  return n.toFixed(digits);
}

export function argOf(name: string, def?: string): string | undefined {
  const args = process.argv.slice(2);
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
}

export function hasFlag(name: string): boolean {
  return process.argv.slice(2).includes(name);
}

export interface Series {
  name: string;
  points: Array<[number, number]>;
}

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function niceTicks(min: number, max: number, n = 5): number[] {
  if (!(max > min)) return [min];
  const raw = (max - min) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function tickLabel(v: number, log: boolean): string {
  const x = log ? 10 ** v : v;
  if (Math.abs(x) >= 1e6) return `${+(x / 1e6).toPrecision(3)}M`;
  if (Math.abs(x) >= 1e3) return `${+(x / 1e3).toPrecision(3)}k`;
  return `${+x.toPrecision(3)}`;
}

/** Line/scatter plot (optionally log axes). */
export function lineChart(o: {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  logX?: boolean;
  logY?: boolean;
  width?: number;
  height?: number;
  markersOnly?: boolean;
}): string {
  const W = o.width ?? 720;
  const H = o.height ?? 420;
  const m = { l: 70, r: 170, t: 40, b: 50 };
  const tx = (v: number): number => (o.logX ? Math.log10(Math.max(v, 1e-12)) : v);
  const ty = (v: number): number => (o.logY ? Math.log10(Math.max(v, 1e-12)) : v);
  const all = o.series.flatMap((s) => s.points);
  let x0 = Math.min(...all.map((p) => tx(p[0])));
  let x1 = Math.max(...all.map((p) => tx(p[0])));
  let y0 = o.logY ? Math.min(...all.map((p) => ty(p[1]))) : Math.min(0, ...all.map((p) => p[1]));
  let y1 = Math.max(...all.map((p) => ty(p[1])));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 1; y1 += 1; }
  y1 += (y1 - y0) * 0.05;
  const px = (v: number): number => m.l + ((tx(v) - x0) / (x1 - x0)) * (W - m.l - m.r);
  const py = (v: number): number => H - m.b - ((ty(v) - y0) / (y1 - y0)) * (H - m.t - m.b);
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${W / 2}" y="20" text-anchor="middle" font-size="15">${esc(o.title)}</text>`);
  for (const t of niceTicks(y0, y1)) {
    const yy = H - m.b - ((t - y0) / (y1 - y0)) * (H - m.t - m.b);
    parts.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${yy}" y2="${yy}" stroke="#ddd"/>`);
    parts.push(`<text x="${m.l - 6}" y="${yy + 4}" text-anchor="end">${tickLabel(t, !!o.logY)}</text>`);
  }
  for (const t of niceTicks(x0, x1, 6)) {
    const xx = m.l + ((t - x0) / (x1 - x0)) * (W - m.l - m.r);
    parts.push(`<line x1="${xx}" x2="${xx}" y1="${m.t}" y2="${H - m.b}" stroke="#eee"/>`);
    parts.push(`<text x="${xx}" y="${H - m.b + 16}" text-anchor="middle">${tickLabel(t, !!o.logX)}</text>`);
  }
  parts.push(`<rect x="${m.l}" y="${m.t}" width="${W - m.l - m.r}" height="${H - m.t - m.b}" fill="none" stroke="#333"/>`);
  parts.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 10}" text-anchor="middle">${esc(o.xLabel)}</text>`);
  parts.push(`<text transform="translate(16 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`);
  o.series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length];
    const pts = s.points.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`);
    if (!o.markersOnly && pts.length > 1) parts.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${pts.join(" ")}"/>`);
    if (o.markersOnly || s.points.length <= 40) {
      for (const p of pts) {
        const [a, b] = p.split(",");
        parts.push(`<circle cx="${a}" cy="${b}" r="${o.markersOnly ? 1.8 : 3}" fill="${c}"/>`);
      }
    }
    const ly = m.t + 14 + i * 18;
    parts.push(`<rect x="${W - m.r + 10}" y="${ly - 9}" width="12" height="10" fill="${c}"/>`);
    parts.push(`<text x="${W - m.r + 26}" y="${ly}">${esc(s.name)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n");
}

/** Horizontal bar chart: one bar per label, optional reference line (the goal). */
export function barChart(o: { title: string; unit: string; bars: Array<{ label: string; value: number }>; goal?: { value: number; label: string } }): string {
  const W = 760;
  const rowH = 28;
  const m = { l: 260, r: 80, t: 40, b: 30 };
  const H = m.t + m.b + rowH * o.bars.length;
  const max = Math.max(...o.bars.map((b) => b.value), o.goal?.value ?? 0) * 1.08 || 1;
  const sx = (v: number): number => m.l + (v / max) * (W - m.l - m.r);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="15">${esc(o.title)}</text>`,
  ];
  o.bars.forEach((b, i) => {
    const y = m.t + i * rowH;
    parts.push(`<text x="${m.l - 8}" y="${y + 17}" text-anchor="end">${esc(b.label)}</text>`);
    parts.push(`<rect x="${m.l}" y="${y + 4}" width="${Math.max(0, sx(b.value) - m.l)}" height="${rowH - 8}" fill="${COLORS[i % COLORS.length]}"/>`);
    parts.push(`<text x="${sx(b.value) + 4}" y="${y + 17}">${esc(`${+b.value.toPrecision(3)} ${o.unit}`)}</text>`);
  });
  if (o.goal) {
    const x = sx(o.goal.value);
    parts.push(`<line x1="${x}" x2="${x}" y1="${m.t - 4}" y2="${H - m.b + 4}" stroke="#000" stroke-dasharray="5,4"/>`);
    parts.push(`<text x="${x}" y="${H - 8}" text-anchor="middle">${esc(o.goal.label)}</text>`);
  }
  parts.push("</svg>");
  return parts.join("\n");
}

export function writeResult(name: string, markdown: string, svg?: string): void {
  mkdirSync(RESULTS_DIR, { recursive: true });
  let md = markdown;
  if (svg !== undefined) {
    writeFileSync(path.join(RESULTS_DIR, `${name}.svg`), svg);
    md += `\n![${name}](${name}.svg)\n`;
  }
  writeFileSync(path.join(RESULTS_DIR, `${name}.md`), md);
  console.log(`wrote bench/results/${name}.md${svg ? ` and ${name}.svg` : ""}`);
}

export function table(head: string[], rows: Array<Array<string | number>>): string {
  return [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");
}

export function machineLine(): string {
  return `Run ${new Date().toISOString()} on ${process.platform} node ${process.version}; TCG guests, noisy 2-core host: absolute times are indicative, ratios are measured in the same run.`;
}
