/**
 * The tracefs probe engine against THIS machine's kernel (run as root). It has
 * tracefs and tracepoints but no kprobes, so kprobe specs must fail cleanly.
 * Each run uses its own instance/group prefix so parallel runs do not collide.
 */
process.env.UV_THREADPOOL_SIZE ??= "16";

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import os from "node:os";
import path from "node:path";
import fs from "node:fs";
import { after, before, describe, test } from "node:test";
import { ErrorCode, ring } from "@vesper/protocol";
import { ProbeEngine, ProbeError, Tracefs, parseCpuStats, startUrgentReader, type PageRead, type RunRead } from "../src/tracefs/index.js";

const PREFIX = `vesper_t${process.pid}`;
const { DELIVERY_MODE_URGENT: URGENT, DELIVERY_MODE_BULK: BULK } = ring.DeliveryMode;
const RC = ring.ResultCode;

let tf: Tracefs;
let engine: ProbeEngine;

function spec(p: Partial<ring.ProbeSpec> & { name: string }): ring.ProbeSpec {
  return { description: "", kprobes: [], uprobes: [], tracepoints: [], bufferKbPerCpu: 0, delivery: URGENT, flushIntervalMs: 0, ...p };
}

function kprobe(p: Partial<ring.KprobeSpec> & { name: string; symbol: string }): ring.KprobeSpec {
  return { offset: 0n, fetchArgs: [], isReturn: false, filter: "", waitStatusArg: "", ...p };
}

/** Everything in tracefs that carries this run's prefix. */
async function ours(): Promise<string[]> {
  const inst = (await fs.promises.readdir(tf.path("instances"))).filter((n) => n.startsWith(PREFIX)).map((n) => `instances/${n}`);
  const read = (f: string): string => {
    try {
      return fs.readFileSync(tf.path(f), "utf8");
    } catch {
      return "";
    }
  };
  const dyn = [...read("kprobe_events").split("\n"), ...read("uprobe_events").split("\n"), ...read("dynamic_events").split("\n")].filter((l) => l.includes(PREFIX));
  return [...inst, ...dyn];
}

async function expectProbeError(p: Promise<unknown>, code: ring.ResultCode): Promise<ProbeError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ProbeError, `expected a ProbeError, got ${String(err)}`);
    assert.equal(err.resultCode, code, `resultCode ${err.resultCode} (${err.message})`);
    return err;
  }
  assert.fail(`expected ProbeError ${RC[code]}`);
}

/**
 * Pumps every reader (all CPUs) until they end (at unload), keeping every page;
 * waitFor() resolves with the first page, seen or future, that satisfies pred.
 */
class Collector {
  readonly pages: PageRead[] = [];
  private waiters: { pred: (p: PageRead) => boolean; resolve: (p: PageRead) => void }[] = [];
  readonly done: Promise<void>;
  constructor(readers: AsyncIterable<PageRead>[]) {
    this.done = Promise.all(
      readers.map(async (r) => {
        for await (const p of r) {
          this.pages.push(p);
          this.waiters = this.waiters.filter((w) => (w.pred(p) ? (w.resolve(p), false) : true));
        }
      }),
    ).then(() => undefined);
  }
  waitFor(pred: (p: PageRead) => boolean, ms: number): Promise<PageRead> {
    const seen = this.pages.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching page within ${ms} ms (${this.pages.length} pages seen)`)), ms);
      this.waiters.push({ pred, resolve: (p) => (clearTimeout(timer), resolve(p)) });
    });
  }
}

async function killedSleep(): Promise<Buffer> {
  const child = spawn("sleep", ["30"], { stdio: "ignore" });
  await new Promise<void>((resolve, reject) => child.once("spawn", resolve).once("error", reject));
  const pidBytes = Buffer.alloc(4);
  pidBytes.writeInt32LE(child.pid!);
  child.kill("SIGKILL");
  return pidBytes;
}

/** Bytes of event data in a page (commit field without the missed-events flag bits). */
function commitOf(page: Buffer): number {
  return Number(page.readBigUInt64LE(8) & ((1n << 30n) - 1n));
}

before(async () => {
  tf = await Tracefs.open({ instancePrefix: PREFIX });
  engine = new ProbeEngine(tf);
  assert.deepEqual(await ours(), []);
});

after(async () => {
  for (const p of engine.loaded()) await engine.unload(p).catch(() => undefined);
  await engine.cleanupStale();
  assert.deepEqual(await ours(), []);
});

describe("Tracefs", () => {
  test("finds tracefs and describes the kernel", async () => {
    assert.ok(fs.existsSync(`${tf.root}/instances`));
    assert.match(tf.bootId, /^[0-9a-f-]{36}$/);
    assert.ok(tf.kernelRelease.length > 0);
    const caps = await tf.capabilities();
    assert.equal(caps.kprobes, fs.existsSync(`${tf.root}/kprobe_events`));
    assert.ok(caps.cpus >= 1);
    assert.ok(caps.tracepoints.includes("sched:sched_process_exit"));
    assert.equal(caps.pageSize, 4096);
  });

  test("parses per-CPU stats", () => {
    const s = parseCpuStats(3, "entries: 5\noverrun: 2\ncommit overrun: 0\nbytes: 100\ndropped events: 7\nread events: 11\n");
    assert.deepEqual(s, { cpu: 3, entries: 5n, overrun: 2n, droppedEvents: 7n, readEvents: 11n });
  });
});

describe("ProbeEngine", () => {
  test("urgent tracepoint probe: a killed child's exit arrives as a page; unload leaves nothing", async () => {
    const loaded = await engine.load(
      spec({ name: "exit", tracepoints: [{ system: "sched", event: "sched_process_exit", filter: 'comm == "sleep"' }] }),
    );
    assert.equal(loaded.instance, `${PREFIX}-exit`);
    assert.equal(loaded.pageSize, 4096);
    assert.ok(loaded.cpus >= 1);
    assert.match(loaded.headerPage, /commit/);
    const fmt = loaded.formats[0];
    assert.ok(fmt);
    assert.equal(fmt.system, "sched");
    assert.equal(fmt.name, "sched_process_exit");
    assert.ok(fmt.id > 0);
    assert.match(fmt.format, /field:pid_t pid;/);
    assert.deepEqual(engine.loaded(), ["exit"]);
    assert.equal(fs.readFileSync(`${tf.root}/instances/${PREFIX}-exit/trace_clock`, "utf8").includes("[mono]"), true);

    const pages = new Collector(engine.readers("exit"));
    const t0 = performance.now();
    const pidBytes = await killedSleep();
    const page = await pages.waitFor((p) => p.page.includes(pidBytes) && p.page.includes("sleep"), 10_000);
    const latency = performance.now() - t0;
    assert.equal(page.page.length, 4096);
    assert.ok(commitOf(page.page) > 0 && commitOf(page.page) < 4096);
    console.log(`# spawn+kill -> page on cpu ${page.cpu}: ${latency.toFixed(1)} ms`);

    // Spawning a child closes its copies of our fds at exec, which flushes the
    // trace_pipe_raw files: readers see EOF and must reopen, losing nothing.
    for (let i = 0; i < 3; i++) {
      const again = await killedSleep();
      await pages.waitFor((p) => p.page.includes(again) && p.page.includes("sleep"), 10_000);
    }

    const stats = await engine.stats("exit");
    assert.equal(stats.length, loaded.cpus);
    assert.ok(stats.reduce((a, s) => a + s.readEvents, 0n) >= 1n);

    const t1 = performance.now();
    await engine.unload("exit");
    await pages.done; // readers end at unload
    console.log(`# unload with blocked readers: ${(performance.now() - t1).toFixed(1)} ms`);
    assert.deepEqual(engine.loaded(), []);
    assert.deepEqual(await ours(), []);
    await expectProbeError(engine.unload("exit"), RC.RESULT_CODE_NOT_LOADED);
  });

  test("urgent with minBatchDelayMs: events close together share a page", async (t) => {
    await engine.load(spec({ name: "batch", tracepoints: [{ system: "sched", event: "sched_process_exit", filter: 'comm == "sleep"' }] }));
    t.after(() => (engine.loaded().includes("batch") ? engine.unload("batch") : undefined));
    const pages = new Collector(engine.readers("batch", { minBatchDelayMs: 300 }));
    // All children on CPU 0, so their exits land in one per-CPU buffer.
    const start = async (): Promise<{ kill: () => void; pid: Buffer }> => {
      const c = spawn("taskset", ["-c", "0", "sleep", "30"], { stdio: "ignore" });
      await new Promise<void>((resolve, reject) => c.once("spawn", resolve).once("error", reject));
      // taskset execs sleep after it starts: killed before that, the exit has
      // comm "taskset" and the filter rightly drops it.
      const deadline = Date.now() + 10_000;
      while (fs.readFileSync(`/proc/${c.pid}/comm`, "utf8").trim() !== "sleep") {
        if (Date.now() > deadline) throw new Error(`child ${c.pid} never became sleep`);
        await new Promise((r) => setTimeout(r, 5));
      }
      const pid = Buffer.alloc(4);
      pid.writeInt32LE(c.pid!);
      return { kill: () => c.kill("SIGKILL"), pid };
    };
    const first = await start();
    const rest = await Promise.all([start(), start(), start()]);
    first.kill();
    await pages.waitFor((p) => p.page.includes(first.pid), 10_000);
    for (const r of rest) r.kill(); // within the 300 ms batch window
    const batched = await pages.waitFor((p) => rest.every((r) => p.page.includes(r.pid)), 10_000);
    assert.equal(batched.cpu, 0);
    await engine.unload("batch");
    await pages.done;
    assert.deepEqual(await ours(), []);
  });

  test("urgent under load: the pages that piled up during the coalescing wait come out as one run", async (t) => {
    const loaded = await engine.load(
      spec({ name: "pile", bufferKbPerCpu: 1024, tracepoints: [{ system: "raw_syscalls", event: "sys_enter", filter: 'comm == "dd"' }] }),
    );
    t.after(() => (engine.loaded().includes("pile") ? engine.unload("pile") : undefined));
    const runs: RunRead[] = [];
    let room = 1000;
    const abort = new AbortController();
    const reader = await startUrgentReader(
      engine.instanceDir("pile"),
      0,
      { signal: abort.signal, flushIntervalMs: 0, pageSize: loaded.pageSize, minBatchDelayMs: 300, maxPagesPerBatch: 32, layout: engine.pageLayout("pile"), urgentWait: "pool" },
      (r) => {
        runs.push(r);
        return (room -= r.count);
      },
    );
    assert.ok(reader !== undefined);
    // ~6,000 syscalls of dd on CPU 0, all within the first run's 300 ms wait.
    const dd = spawn("taskset", ["-c", "0", "dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=3000"], { stdio: "ignore" });
    await new Promise<void>((resolve, reject) => dd.once("exit", () => resolve()).once("error", reject));
    const deadline = Date.now() + 10_000;
    while (!runs.some((r) => r.count > 1) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    abort.abort();
    await reader.done;
    const big = runs.find((r) => r.count > 1);
    assert.ok(big !== undefined, `no run of more than one page: ${runs.map((r) => r.count).join(",")}`);
    assert.ok(big.count <= 32);
    assert.equal(big.data.length, (big.count - 1) * big.pageSize + big.lastLength);
    // Every page of the run holds events (the kernel wrote each one; nothing is padding).
    for (let i = 0; i < big.count; i++) assert.ok(commitOf(big.data.subarray(i * big.pageSize)) > 0, `page ${i} of the run is empty`);
    assert.equal(room, 1000 - runs.reduce((a, r) => a + r.count, 0));
    console.log(`# urgent drain: runs of ${runs.map((r) => r.count).join(", ")} pages`);
  });

  test("urgent, waiting in epoll: event after event, each page read as it comes; abort ends the reader", async (t) => {
    const loaded = await engine.load(spec({ name: "polled", tracepoints: [{ system: "sched", event: "sched_process_exit", filter: 'comm == "true"' }] }));
    t.after(() => (engine.loaded().includes("polled") ? engine.unload("polled") : undefined));
    const cpus = loaded.cpus;
    const runs: RunRead[] = [];
    const abort = new AbortController();
    const readers = [];
    for (let cpu = 0; cpu < cpus; cpu++) {
      const opts = { signal: abort.signal, flushIntervalMs: 0, pageSize: loaded.pageSize, adaptiveBatch: false as const, layout: engine.pageLayout("polled"), urgentWait: "epoll" as const };
      readers.push(await startUrgentReader(engine.instanceDir("polled"), cpu, opts, (r) => (runs.push(r), 1000)));
    }
    // One child at a time, the next once the last one's exit was read: a reader that stopped
    // after its first page (as one did that resumed inside its own read callback) fails here.
    for (let i = 0; i < 6; i++) {
      const child = spawn("true", [], { stdio: "ignore" });
      const pid = await new Promise<number>((resolve, reject) => child.once("exit", () => resolve(child.pid!)).once("error", reject));
      const deadline = Date.now() + 10_000;
      const has = (): boolean => runs.some((r) => r.data.includes(Buffer.from(new Int32Array([pid]).buffer)));
      while (!has() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      assert.ok(has(), `child ${i} (pid ${pid}): its exit was read`);
    }
    abort.abort();
    await Promise.all(readers.map((r) => r?.done));
  });

  test("a kprobe on a kernel without kprobes: UNSUPPORTED naming kprobes, nothing left", async (t) => {
    if (fs.existsSync(`${tf.root}/kprobe_events`)) return t.skip("this kernel has kprobes");
    const err = await expectProbeError(
      engine.load(
        spec({
          name: "kexit",
          kprobes: [kprobe({ name: "exit", symbol: "do_exit", fetchArgs: ["code=%di:s64"] })],
          tracepoints: [{ system: "sched", event: "sched_process_exit", filter: "" }],
        }),
      ),
      RC.RESULT_CODE_UNSUPPORTED,
    );
    assert.equal(err.code, ErrorCode.Unsupported);
    assert.match(err.message, /kprobes/);
    assert.match(err.message, /do_exit/);
    assert.match(err.message, new RegExp(`${PREFIX}_kexit/exit`));
    assert.deepEqual(engine.loaded(), []);
    assert.deepEqual(await ours(), []);
  });

  test("a bad filter: KERNEL_REFUSED with error_log lines, rolled back", async () => {
    const err = await expectProbeError(
      engine.load(
        spec({
          name: "badfilter",
          tracepoints: [
            { system: "sched", event: "sched_process_fork", filter: "" },
            { system: "sched", event: "sched_process_exit", filter: "bogus == 1" },
          ],
        }),
      ),
      RC.RESULT_CODE_KERNEL_REFUSED,
    );
    assert.equal(err.code, ErrorCode.KernelRefused);
    assert.match(err.message, /bogus == 1/);
    assert.ok(err.kernelLog.length > 0, "kernelLog is empty");
    assert.ok(err.kernelLog.some((l) => /Field not found/.test(l)), err.kernelLog.join("\n"));
    assert.deepEqual(err.details, err.kernelLog);
    console.log(`# ${err.message}\n${err.kernelLog.map((l) => `#   ${l}`).join("\n")}`);
    assert.deepEqual(engine.loaded(), []);
    assert.deepEqual(await ours(), []);
  });

  test("an unknown tracepoint: UNSUPPORTED naming it", async () => {
    const err = await expectProbeError(
      engine.load(spec({ name: "nosuch", tracepoints: [{ system: "sched", event: "no_such_event", filter: "" }] })),
      RC.RESULT_CODE_UNSUPPORTED,
    );
    assert.match(err.message, /sched:no_such_event/);
    assert.deepEqual(await ours(), []);
  });

  test("an invalid spec: INVALID_SPEC before touching tracefs", async () => {
    const err = await expectProbeError(engine.load(spec({ name: "Bad Name!" , tracepoints: [{ system: "sched", event: "sched_switch", filter: "" }] })), RC.RESULT_CODE_INVALID_SPEC);
    assert.equal(err.code, ErrorCode.InvalidSpec);
    await expectProbeError(engine.load(spec({ name: "empty" })), RC.RESULT_CODE_INVALID_SPEC);
    assert.deepEqual(await ours(), []);
  });

  test("loading twice: ALREADY_LOADED; a leftover instance: ALREADY_LOADED until cleanupStale removes it", async () => {
    const s = spec({ name: "twice", tracepoints: [{ system: "sched", event: "sched_process_exit", filter: "" }] });
    await engine.load(s);
    const err = await expectProbeError(engine.load(s), RC.RESULT_CODE_ALREADY_LOADED);
    assert.equal(err.code, ErrorCode.ProbeAlreadyLoaded);
    // cleanupStale leaves probes this engine has loaded alone.
    assert.deepEqual(await engine.cleanupStale(), []);
    assert.deepEqual(engine.loaded(), ["twice"]);
    await engine.unload("twice");

    // An instance left by an "earlier run" (another engine with the same prefix).
    const earlier = new ProbeEngine(tf);
    await earlier.load(spec({ name: "stale", tracepoints: [{ system: "sched", event: "sched_switch", filter: "" }] }));
    const err2 = await expectProbeError(
      engine.load(spec({ name: "stale", tracepoints: [{ system: "sched", event: "sched_switch", filter: "" }] })),
      RC.RESULT_CODE_ALREADY_LOADED,
    );
    assert.match(err2.message, /cleanupStale/);
    // The failed load must not have removed the other engine's instance.
    assert.ok(fs.existsSync(`${tf.root}/instances/${PREFIX}-stale`));
    fs.mkdirSync(`${tf.root}/instances/${PREFIX}-stale2`);
    const removed = await engine.cleanupStale();
    assert.deepEqual(removed.sort(), [`instances/${PREFIX}-stale`, `instances/${PREFIX}-stale2`]);
    assert.deepEqual(await ours(), []);
  });

  test("a uprobe: defined at the symbol's file offset, adopted by a new engine, and removed by a fresh engine's cleanupStale", async (t) => {
    if (!(await tf.hasUprobes())) return t.skip("this kernel has no uprobe_events");
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vesper-uprobe-"));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const bin = path.join(dir, "tick");
    fs.writeFileSync(`${bin}.c`, "__attribute__((noinline)) int vesper_t_tick(int n) { __asm__ volatile(\"\"); return n + 1; }\nint main(void) { return vesper_t_tick(0) - 1; }\n");
    execFileSync("gcc", ["-O1", "-o", bin, `${bin}.c`]);
    const nm = execFileSync("nm", [bin], { encoding: "utf8" });
    assert.match(nm, /vesper_t_tick/);
    const up = { name: "tick", path: bin, symbol: "vesper_t_tick", offset: 0n, fetchArgs: ["n=%di:s32"], isReturn: false, filter: "" };
    const s = spec({ name: "ut", uprobes: [up] });
    const loaded = await engine.load(s);
    assert.deepEqual(loaded.formats.map((f) => `${f.system}/${f.name}`), [`${tf.kprobeGroup("ut")}/tick`]);
    const line = fs.readFileSync(tf.path("uprobe_events"), "utf8").split("\n").find((l) => l.includes(`${tf.kprobeGroup("ut")}/tick`));
    assert.match(line ?? "", new RegExp(`^p:${tf.kprobeGroup("ut")}/tick ${bin}:0x[0-9a-f]+ n=%di:s32$`));
    // Another frontend process (after a restart) takes it over: instance, uprobe, enabled event are all there.
    const next = new ProbeEngine(tf);
    assert.deepEqual(await next.adopt(s), { cpus: loaded.cpus, pageSize: loaded.pageSize });
    // A frontend that knows nothing of it finds it stale and removes instance and uprobe alike.
    const removed = await new ProbeEngine(tf).cleanupStale();
    assert.deepEqual(removed.sort(), [`instances/${tf.instanceName("ut")}`, `uprobe ${tf.kprobeGroup("ut")}/tick`]);
    assert.deepEqual(await ours(), []);
    await engine.unload("ut"); // what it had is gone: its teardown finds nothing left
    assert.deepEqual(await ours(), []);
  });

  test("bulk mode delivers full pages under a burst", async () => {
    const loaded = await engine.load(
      spec({
        name: "burst",
        delivery: BULK,
        flushIntervalMs: 50,
        bufferKbPerCpu: 512,
        tracepoints: [
          { system: "raw_syscalls", event: "sys_enter", filter: "" },
          { system: "sched", event: "sched_switch", filter: "" },
        ],
      }),
    );
    const collector = new Collector(engine.readers("burst"));
    const busy = spawn("dd", ["if=/dev/zero", "of=/dev/null", "bs=1", "count=200000"], { stdio: "ignore" });
    const isFull = (p: PageRead): boolean => commitOf(p.page) > loaded.pageSize - 16 - 128;
    try {
      let full = 0;
      await collector.waitFor((p) => isFull(p) && ++full >= 8, 10_000);
    } finally {
      busy.kill("SIGKILL");
    }
    const pages = collector.pages;
    const full = pages.filter(isFull).length;
    assert.ok(pages.every((p) => p.page.length === loaded.pageSize));
    assert.ok(full >= 8, `only ${full} full pages of ${pages.length}`);
    console.log(`# bulk: ${pages.length} pages, ${full} full`);
    await engine.unload("burst");
    await collector.done;
    assert.deepEqual(await ours(), []);
  });
});

describe("page layout", () => {
  test("from this kernel's header_page: pages are cut after the committed data", async () => {
    const { parsePageLayout, usedBytes } = await import("../src/tracefs/page-layout.js");
    const layout = parsePageLayout(fs.readFileSync(`${tf.root}/events/header_page`, "utf8"));
    assert.ok(layout !== undefined);
    assert.equal(layout.commitOffset, 8);
    assert.equal(layout.dataOffset, 16);
    const page = Buffer.alloc(4096);
    page.writeUInt32LE(40, 8);
    assert.equal(usedBytes(page, 0, 4096, layout), 56);
    page.writeUInt32LE((40 | 0x80000000 | 0x40000000) >>> 0, 8); // missed events, count stored after the data
    assert.equal(usedBytes(page, 0, 4096, layout), 56 + layout.commitSize);
    page.writeUInt32LE(5000, 8); // a commit past the page: left whole, for the host to judge
    assert.equal(usedBytes(page, 0, 4096, layout), 4096);
    assert.equal(parsePageLayout("no fields here"), undefined);
  });
});
