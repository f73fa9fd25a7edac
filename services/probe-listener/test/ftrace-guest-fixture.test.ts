/**
 * Decodes real pages from the Debian 6.1 guest (fixtures/guest-6.1, see its README.md) and
 * checks them against the kernel's own text rendering of the same buffer (trace.txt):
 * every event, in order, with its timestamp, pid and field values.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { PageDecoder, parseEventFormat, parseHeaderPage, type DecodedEvent, type DecodedPage } from "../src/ftrace/index.js";

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), "fixtures", "guest-6.1");
const present = fs.existsSync(path.join(dir, "expected.json"));

interface Person {
  pid: number;
  comm: string;
  exec_filename: string;
  signal?: number;
  exit_code?: number;
  do_exit_code: number;
}
interface GuestExpected {
  page_size: number;
  formats: Record<string, string>;
  captures: {
    basic: { raw: string; text: string; pages: number; shell_pid: number; sleep: Person; exit3: Person; true: Person };
    multi: { raw: string; text: string; pages: number; loops: number; first_pid: number; last_pid: number };
    overflow: { raw: string; text: string; pages: number; first_page_missed_events: number; first_page_commit_raw: string };
  };
}

interface TextEvent {
  pid: number;
  usecs: bigint;
  name: string;
  args: Map<string, string>;
  line: string;
}

/** "           sleep-206     [000] d..1.     4.690843: signal_deliver: sig=9 errno=0 ..." */
function parseTrace(text: string): TextEvent[] {
  const out: TextEvent[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const m = /^\s*(.+)-(\d+)\s+\[(\d+)\]\s+(\S+)\s+(\d+)\.(\d{6}):\s+(\w+):\s?(.*)$/.exec(line);
    assert.ok(m, `unparsed trace line: ${line}`);
    const args = new Map<string, string>();
    for (const tok of m[8]!.split(" ")) {
      const eq = tok.indexOf("=");
      if (eq > 0) args.set(tok.slice(0, eq), tok.slice(eq + 1).replace(/^"(.*)"$/, "$1"));
    }
    out.push({ pid: Number(m[2]), usecs: BigInt(m[5]!) * 1_000_000n + BigInt(m[6]!), name: m[7]!, args, line });
  }
  return out;
}

/** Text key → decoded field, per event, where they differ. */
const ALIASES: Record<string, Record<string, string>> = {
  sched_process_fork: { comm: "parent_comm", pid: "parent_pid" },
};
const HEX_FIELDS = new Set(["sa_handler", "sa_flags"]);

function assertMatchesText(ev: DecodedEvent, t: TextEvent): void {
  assert.equal(ev.name, t.name, t.line);
  assert.equal(ev.pid, t.pid, t.line);
  assert.equal((ev.ts + 500n) / 1000n, t.usecs, `timestamp of ${t.line}`); // the text rounds ns to µs
  for (const [key, value] of t.args) {
    const field = ALIASES[t.name]?.[key] ?? key;
    const v = ev.fields[field];
    assert.ok(v !== undefined, `field ${field} missing for ${t.line}`);
    const got = typeof v === "bigint" ? (HEX_FIELDS.has(field) ? v.toString(16) : v.toString()) : typeof v === "string" ? v : Buffer.from(v).toString("hex");
    assert.equal(got, value, `${field} in ${t.line}`);
  }
}

describe("guest 6.1 fixture", { skip: present ? false : "fixtures/guest-6.1 not present" }, () => {
  const exp = JSON.parse(fs.readFileSync(path.join(dir, "expected.json"), "utf8")) as GuestExpected;
  const header = parseHeaderPage(fs.readFileSync(path.join(dir, "header_page"), "utf8"));
  const formats = Object.entries(exp.formats).map(([key, file]) => parseEventFormat(fs.readFileSync(path.join(dir, file), "utf8"), key.split("/")[0]!));
  const decoder = new PageDecoder(formats, header, { waitStatusFields: new Map([["vesper_fixture/exit", "code"]]) });

  function decodeCapture(raw: string): DecodedPage[] {
    const bytes = fs.readFileSync(path.join(dir, raw));
    assert.equal(bytes.length % exp.page_size, 0);
    const pages: DecodedPage[] = [];
    for (let off = 0; off < bytes.length; off += exp.page_size) pages.push(decoder.decode(bytes.subarray(off, off + exp.page_size)));
    return pages;
  }

  it("parses the header page and the kprobe format", () => {
    assert.deepEqual(header, { timestampOffset: 0, commitOffset: 8, commitSize: 8, dataOffset: 16, dataSize: 4080 });
    const kprobe = formats.find((f) => f.system === "vesper_fixture" && f.name === "exit");
    assert.ok(kprobe);
    assert.deepEqual(
      kprobe.fields.map((f) => [f.name, f.kind, f.size, f.signed]),
      [
        ["__probe_ip", "int", 8, false],
        ["code", "int", 8, true],
        ["comm", "data_loc_string", 4, true],
      ],
    );
    assert.deepEqual(decoder.warnings, []);
  });

  for (const name of ["basic", "multi"] as const) {
    it(`${name}: every event matches the kernel's text trace`, () => {
      const cap = exp.captures[name];
      const pages = decodeCapture(cap.raw);
      assert.equal(pages.length, cap.pages);
      for (const p of pages) {
        assert.deepEqual(p.errors, []);
        assert.equal(p.missedEvents, 0);
      }
      const events = pages.flatMap((p) => p.events);
      const text = parseTrace(fs.readFileSync(path.join(dir, cap.text), "utf8"));
      assert.equal(events.length, text.length);
      for (let i = 0; i < text.length; i++) assertMatchesText(events[i]!, text[i]!);
    });
  }

  it("basic: the SIGKILLed sleep, exit 3 and /bin/true, with wait-status fields from the kprobe", () => {
    const b = exp.captures.basic;
    const events = decodeCapture(b.raw).flatMap((p) => p.events);
    const of = (pid: number, name: string) => events.filter((e) => e.pid === pid && e.name === name);

    const [sig] = of(b.sleep.pid, "signal_deliver");
    assert.equal(sig?.fields.sig, 9n);
    const [kSleep] = of(b.sleep.pid, "exit");
    assert.ok(kSleep);
    assert.equal(kSleep.system, "vesper_fixture");
    assert.equal(kSleep.fields.code, BigInt(b.sleep.do_exit_code));
    assert.equal(kSleep.fields.comm, "sleep");
    assert.equal(kSleep.fields.signal, 9n);
    assert.equal(kSleep.fields.exit_code, 0n);
    assert.equal(kSleep.fields.core_dumped, 0n);
    const [xSleep] = of(b.sleep.pid, "sched_process_exit");
    assert.equal(xSleep?.fields.comm, "sleep");
    assert.equal(xSleep?.fields.pid, BigInt(b.sleep.pid));
    assert.ok(sig!.ts <= kSleep.ts && kSleep.ts <= xSleep!.ts);

    const [k3] = of(b.exit3.pid, "exit");
    assert.equal(k3?.fields.code, 768n);
    assert.equal(k3?.fields.exit_code, 3n);
    assert.equal(k3?.fields.signal, 0n);
    assert.equal(k3?.fields.comm, "sh");

    const [kTrue] = of(b.true.pid, "exit");
    assert.equal(kTrue?.fields.exit_code, 0n);
    assert.equal(kTrue?.fields.signal, 0n);
    assert.equal(of(b.true.pid, "sched_process_exec")[0]?.fields.filename, "/bin/true");

    const fork = events.find((e) => e.name === "sched_process_fork" && e.fields.child_pid === BigInt(b.sleep.pid));
    assert.equal(fork?.fields.parent_pid, BigInt(b.shell_pid));
  });

  it("multi: one fork, exec, kprobe exit and sched exit per loop child", () => {
    const m = exp.captures.multi;
    const events = decodeCapture(m.raw).flatMap((p) => p.events);
    for (let pid = m.first_pid; pid <= m.last_pid; pid++) {
      const names = events.filter((e) => e.pid === pid).map((e) => e.name);
      assert.deepEqual(names, ["sched_process_exec", "exit", "sched_process_exit"], `pid ${pid}`);
    }
    assert.equal(events.filter((e) => e.name === "sched_process_fork").length >= m.loops, true);
  });

  it("overflow: missed events are counted and what survived matches the text trace", () => {
    const o = exp.captures.overflow;
    const raw = fs.readFileSync(path.join(dir, o.raw));
    assert.equal(raw.readBigUInt64LE(8), BigInt.asUintN(64, BigInt(o.first_page_commit_raw)));
    const pages = decodeCapture(o.raw);
    assert.equal(pages.length, o.pages);
    assert.equal(pages[0]!.missedEvents, o.first_page_missed_events);
    for (const p of pages) assert.deepEqual(p.errors, []);
    const events = pages.flatMap((p) => p.events);
    assert.ok(events.length > 0);
    const text = parseTrace(fs.readFileSync(path.join(dir, o.text), "utf8"));
    // The raw read happened after the text read: the decoded events are the tail of the text trace.
    const start = text.length - events.length;
    assert.ok(start >= 0, `${events.length} decoded vs ${text.length} in text`);
    for (let i = 0; i < events.length; i++) assertMatchesText(events[i]!, text[start + i]!);
  });
});
