/**
 * ftrace page throughput vs a plain copy of the same bytes: the probe-listener's pass over bulk
 * pages (PageDecoder.scan) and the full decode into typed events (PageDecoder.decode).
 *
 *   node --import tsx bench/decode/run.ts [--seconds 1] [--fixture services/probe-listener/test/fixtures/host-...]
 *
 * Also times a C version of the listener's pass (walk.c, gcc -O2) against memcpy of the same pages
 * in its own process: the native reference that says what any per-record walk can reach here.
 *
 * Uses the captured fixture pages (every fixtures/host-* and fixtures/guest-* directory with
 * an expected.json listing pages and formats). Ceiling = Buffer#copy of each page into a
 * preallocated buffer; ratio = pages/s ÷ copied pages/s (goal ≥ 0.5).
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { PageDecoder, parseEventFormat, parseHeaderPage } from "../../services/probe-listener/src/ftrace/index.js";
import { barChart, machineLine, table, writeResult } from "../lib/report.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const fixturesDir = path.join(root, "services/probe-listener/test/fixtures");
const args = process.argv.slice(2);
const argOf = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const seconds = Number(argOf("--seconds") ?? 1);

interface HostManifest {
  formats: string[]; // events/<system>/<event>/format
  pages: { file: string }[];
}
interface GuestManifest {
  page_size: number;
  formats: Record<string, string>; // "<system>/<event>" -> path
  captures: Record<string, { raw: string }>;
}

/**
 * Pages as the listener gets them: the pages of a data message's run are views into one
 * buffer (what the guest read with one readv), not a buffer each.
 */
function asRun(pages: Buffer[]): Buffer[] {
  const all = Buffer.concat(pages);
  let off = 0;
  return pages.map((p) => all.subarray(off, (off += p.length)));
}

/** Loads a host-* (capture-host-fixture.ts) or guest-* (guest harness) fixture directory. */
function loadFixture(dir: string): { decoder: PageDecoder; pages: Buffer[] } | undefined {
  const manifestPath = path.join(dir, "expected.json");
  if (!fs.existsSync(manifestPath)) return undefined;
  const json = JSON.parse(fs.readFileSync(manifestPath, "utf8")) as Record<string, unknown>;
  const header = parseHeaderPage(fs.readFileSync(path.join(dir, "header_page"), "utf8"));
  const read = (f: string): string => fs.readFileSync(path.join(dir, f), "utf8");
  if (Array.isArray(json.formats) && Array.isArray(json.pages)) {
    const m = json as unknown as HostManifest;
    const formats = m.formats.map((f) => parseEventFormat(read(f), f.split("/")[1] ?? "unknown"));
    return { decoder: new PageDecoder(formats, header), pages: asRun(m.pages.map((p) => fs.readFileSync(path.join(dir, p.file)))) };
  }
  if (json.formats && !Array.isArray(json.formats) && json.captures && json.page_size) {
    const m = json as unknown as GuestManifest;
    const formats = Object.entries(m.formats).map(([key, f]) => parseEventFormat(read(f), key.split("/")[0] ?? "unknown"));
    const pages: Buffer[] = [];
    for (const cap of Object.values(m.captures)) {
      const raw = fs.readFileSync(path.join(dir, cap.raw));
      for (let off = 0; off + m.page_size <= raw.length; off += m.page_size) pages.push(raw.subarray(off, off + m.page_size));
    }
    return { decoder: new PageDecoder(formats, header), pages };
  }
  return undefined;
}

function timeIt(seconds: number, body: () => number): { perSec: number; units: number; ms: number } {
  // warm-up
  const warmEnd = performance.now() + 200;
  while (performance.now() < warmEnd) body();
  let units = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  let now = t0;
  while (now < end) {
    for (let i = 0; i < 50; i++) units += body();
    now = performance.now();
  }
  const ms = now - t0;
  return { perSec: (units / ms) * 1000, units, ms };
}

/** The decoder's tables that walk.c needs (private to PageDecoder: the reference must use exactly these). */
interface ScanTables {
  minSizes: Int32Array;
  typeOffset: number;
  typeSize: number;
  layout: { commitOffset: number; dataOffset: number };
}

/** walk.c's binary and its input, for this process's run. */
let walkDir: string | undefined;
/** walk.c on these pages: C's walk and memcpy pages/s, or why it could not run (no gcc, odd layout). */
function nativeWalk(decoder: PageDecoder, pages: Buffer[], seconds: number): { copy: number; walk: number; events: number } | string {
  const t = decoder as unknown as ScanTables;
  if (t.typeSize !== 2 || t.minSizes.length !== 1 << 16) return "event ids not 16 bits wide";
  try {
    if (walkDir === undefined) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vesper-walk-"));
      process.on("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
      execFileSync("gcc", ["-O2", "-o", path.join(dir, "walk"), path.join(root, "bench/decode/walk.c")]);
      walkDir = dir;
    }
    const head = Buffer.alloc(16);
    head.writeUInt32LE(pages.length, 0);
    head.writeUInt32LE(t.layout.dataOffset, 4);
    head.writeUInt32LE(t.layout.commitOffset, 8);
    head.writeUInt32LE(t.typeOffset >>> 1, 12);
    const parts: Buffer[] = [head, Buffer.from(t.minSizes.buffer, t.minSizes.byteOffset, t.minSizes.byteLength)];
    for (const p of pages) {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(p.length & ~3);
      parts.push(len, p.subarray(0, p.length & ~3));
    }
    const input = path.join(walkDir, "pages.bin");
    fs.writeFileSync(input, Buffer.concat(parts));
    const r = JSON.parse(execFileSync(path.join(walkDir, "walk"), [input, String(seconds)], { encoding: "utf8" })) as { copyPagesPerSec: number; walkPagesPerSec: number; eventsPerRound: number };
    return { copy: r.copyPagesPerSec, walk: r.walkPagesPerSec, events: r.eventsPerRound };
  } catch (err) {
    return `walk.c did not run: ${(err as Error).message.split("\n")[0]}`;
  }
}

const dirs = argOf("--fixture")
  ? [path.resolve(argOf("--fixture")!)]
  : fs.existsSync(fixturesDir)
    ? fs.readdirSync(fixturesDir).map((d) => path.join(fixturesDir, d))
    : [];

let worst = Infinity;
const notes: string[] = [];
const rows: Array<Array<string | number>> = [];
const bars: Array<{ label: string; value: number }> = [];
for (const dir of dirs) {
  const fx = loadFixture(dir);
  if (!fx || fx.pages.length === 0) continue;
  const { decoder, pages } = fx;
  const eventsPerRound = pages.reduce((n, p) => n + decoder.decode(p).events.length, 0);
  const bytesPerRound = pages.reduce((n, p) => n + p.length, 0);
  const target = Buffer.alloc(Math.max(...pages.map((p) => p.length)));

  let sink = 0;
  const copy = timeIt(seconds, () => {
    for (const p of pages) sink += p.copy(target);
    return pages.length;
  });
  // The listener's pass over bulk pages: every record checked (header, length, event id, size).
  const scan = timeIt(seconds, () => {
    for (const p of pages) sink += decoder.scan(p).events;
    return pages.length;
  });
  // Typed events with their fields (what urgent probes get in the listener, bulk ones in a reader).
  const decode = timeIt(seconds, () => {
    for (const p of pages) sink += decoder.decode(p).events.length;
    return pages.length;
  });
  const native = nativeWalk(decoder, pages, seconds);
  const scanEvents = pages.reduce((n, p) => n + decoder.scan(p).events, 0);
  let nativeRatio: number | undefined; // C walk ÷ C memcpy, when walk.c ran and agrees with scan
  let nativeCell = "n/a";
  if (typeof native === "string") notes.push(`${path.basename(dir)}: no native reference (${native})`);
  else if (native.events !== scanEvents) {
    notes.push(`${path.basename(dir)}: walk.c counted ${native.events} events per round, scan ${scanEvents}: the reference is wrong, not shown`);
    process.exitCode = 1;
  } else {
    nativeRatio = native.walk / native.copy;
    nativeCell = `${nativeRatio.toFixed(3)} (${(1e9 / native.walk / (scanEvents / pages.length)).toFixed(1)} ns/event)`;
  }
  const ratio = scan.perSec / copy.perSec;
  const fullRatio = decode.perSec / copy.perSec;
  worst = Math.min(worst, ratio);
  const evPerPage = eventsPerRound / pages.length;
  console.log(`${path.relative(root, dir)}: ${pages.length} pages, ${evPerPage.toFixed(1)} events/page, ${bytesPerRound} bytes`);
  console.log(`  copy   ${fmt(copy.perSec)} pages/s  (${((copy.perSec * bytesPerRound) / pages.length / 1e9).toFixed(2)} GB/s)`);
  console.log(`  scan   ${fmt(scan.perSec)} pages/s  (${fmt(scan.perSec * evPerPage)} events/s, ${(1e9 / scan.perSec / evPerPage).toFixed(1)} ns/event)`);
  console.log(`  decode ${fmt(decode.perSec)} pages/s  (${fmt(decode.perSec * evPerPage)} events/s, ${((1e9 / decode.perSec / evPerPage) | 0)} ns/event)`);
  console.log(`  ratio scan/copy = ${ratio.toFixed(3)} (goal >= 0.5), decode/copy = ${fullRatio.toFixed(4)}${sink === -1 ? "" : ""}`);
  const name = path.basename(dir);
  rows.push([
    name,
    pages.length,
    evPerPage.toFixed(1),
    fmt(copy.perSec),
    fmt(scan.perSec),
    (1e9 / scan.perSec / evPerPage).toFixed(1),
    `**${ratio.toFixed(3)}** (goal ≥ 0.5)`,
    fmt(decode.perSec),
    ((1e9 / decode.perSec / evPerPage) | 0),
    fullRatio.toFixed(4),
    nativeCell,
  ]);
  bars.push({ label: `${name}: listener scan / copy`, value: ratio * 100 });
  bars.push({ label: `${name}: full decode / copy`, value: fullRatio * 100 });
  if (nativeRatio !== undefined) bars.push({ label: `${name}: C walk / C memcpy`, value: nativeRatio * 100 });
}
if (rows.length > 0) {
  const head = ["fixture", "pages", "events/page", "copy pages/s", "listener pass pages/s", "ns/event", "pass ÷ copy", "full decode pages/s", "ns/event", "full decode ÷ copy", "C walk ÷ C memcpy"];
  writeResult(
    "decode",
    [
      "# Decoder speed (`bench/decode`)",
      "",
      "Command: `make bench-decode` (= `node --import tsx bench/decode/run.ts`)",
      "",
      machineLine(),
      "Captured real pages (services/probe-listener/test/fixtures), laid out as the listener gets them (the pages of a run share one buffer); ceiling = Buffer#copy of the same pages (a cache-hot memcpy of 4 KiB).",
      "Listener pass = `PageDecoder.scan`: what the probe-listener does with every bulk page (checks every record's header, length, bounds,",
      "event id and size, counts events and losses, then stores the page as it is; readers decode what they read). Full decode = `PageDecoder.decode`:",
      "typed events with every field (what urgent pages get in the listener, and bulk pages in an EventRecordReader).",
      "",
      table(head, rows),
      "",
      "C walk = the listener's pass written in C (bench/decode/walk.c, gcc -O2, the decoder's own id table; it must count the same",
      "events) against memcpy of the same pages in the same process: what a per-record walk can reach here whatever the language.",
      "Each record's start is known only after the previous record's header is loaded, so a walk costs a load-to-use chain per record",
      "while memcpy streams the page. The listener's pass makes its typed-array views once per buffer, not per page (two views had cost",
      "more than an empty page's walk); what is left is the walk itself.",
      ...notes.map((n) => `- ${n}`),
    ].join("\n"),
    barChart({ title: "Page pass and full decode as % of a plain copy", unit: "%", bars, goal: { value: 50, label: "goal 50 %" } }),
  );
}
if (worst === Infinity) {
  console.error("no fixtures with pages found under", fixturesDir);
  process.exitCode = 1;
}

function fmt(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : n.toFixed(0);
}
