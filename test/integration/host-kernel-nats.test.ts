/**
 * Integration on this machine's own kernel, no VM: the guest frontend runs on the
 * host and talks to real host services over real NATS. This kernel has
 * tracepoints and uprobes but no kprobes, so a tracepoint-only probe and a uprobe
 * probe must work and the kprobe-based `process` probe must fail with a clear error.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { existsSync, mkdtempSync, readdirSync, statSync, writeFileSync, mkdirSync } from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { connect } from "@nats-io/transport-node";
import { VesperApiClient, ApiError } from "@vesper/cli";
import { PAGES_HEADER } from "@vesper/probe-listener";
import { decodeGuestMessage, ErrorCode, subjects, type api } from "@vesper/protocol";
import { HostProcess } from "../harness/host-process.js";
import { waitFor } from "../harness/wait.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const TRACEFS = "/sys/kernel/tracing";
const tag = `it${process.pid}`;
const guest = `host-${tag}`;
const prefix = `vesper_${tag}`;
const WINDOW_PAGES = 32;

let host: HostProcess;
let frontend: ChildProcess;
let client: VesperApiClient;
/** A program built for the uprobe tests: `tick N...` calls vesper_it_tick(N) for each argument. */
let tickBin: string;

before(async () => {
  const runDir = mkdtempSync("/tmp/vesper-it-");
  const probeDir = path.join(runDir, "probes");
  mkdirSync(probeDir);
  // A tracepoint-only probe, as a user would drop into the probe directory.
  writeFileSync(
    path.join(probeDir, "exits.json"),
    JSON.stringify({
      name: "exits",
      description: "process exits and fatal signals, tracepoints only",
      tracepoints: [
        { system: "sched", event: "sched_process_exit" },
        { system: "signal", event: "signal_deliver" },
      ],
      delivery: "urgent",
    }),
  );
  // The same events in bulk mode: the stream stores their pages, the watcher gets them decoded.
  writeFileSync(
    path.join(probeDir, "bulkexits.json"),
    JSON.stringify({
      name: "bulkexits",
      tracepoints: [{ system: "sched", event: "sched_process_exit", filter: 'comm == "sleep"' }],
      delivery: "bulk",
      flushIntervalMs: 50,
    }),
  );
  // Every system call, in bulk mode: pages fill as fast as a test makes system calls.
  writeFileSync(
    path.join(probeDir, "bulksys.json"),
    JSON.stringify({ name: "bulksys", tracepoints: [{ system: "raw_syscalls", event: "sys_enter" }], delivery: "bulk", flushIntervalMs: 50 }),
  );
  // A uprobe and a uretprobe on a function of a program built here; and one on a function it lacks.
  tickBin = path.join(runDir, "tick");
  writeFileSync(
    `${tickBin}.c`,
    "#include <stdlib.h>\n__attribute__((noinline)) long vesper_it_tick(long n) { __asm__ volatile(\"\"); return n * 3; }\n" +
      "int main(int argc, char **argv) { long r = 0; for (int i = 1; i < argc; i++) r += vesper_it_tick(atol(argv[i])); return (int)(r & 1); }\n",
  );
  execFileSync("gcc", ["-O1", "-o", tickBin, `${tickBin}.c`]);
  writeFileSync(
    path.join(probeDir, "ticks.json"),
    JSON.stringify({
      name: "ticks",
      uprobes: [
        { name: "tick", path: tickBin, symbol: "vesper_it_tick", fetchArgs: ["n=%di:s64", "comm=$comm"] },
        { name: "tick_ret", path: tickBin, symbol: "vesper_it_tick", isReturn: true, fetchArgs: ["r=$retval:s64"], filter: "r > 30" },
      ],
      delivery: "urgent",
    }),
  );
  writeFileSync(
    path.join(probeDir, "noticks.json"),
    JSON.stringify({ name: "noticks", uprobes: [{ name: "tick", path: tickBin, symbol: "vesper_it_tock" }], delivery: "urgent" }),
  );
  host = await HostProcess.start({ runDir, probeDir, services: ["loader", "listener", "gateway"] });
  client = new VesperApiClient(host.address!, { timeoutMs: 30_000 });
  frontend = spawn(
    process.execPath,
    // A small send window (a quarter of it is WINDOW_PAGES / 4 pages), so a test can see the
    // frontend ask for acks.
    [path.join(REPO_ROOT, "dist", "guest-frontend.mjs"), "--guest-id", guest, "--transport", "nats", "--instance-prefix", prefix, "--no-oom-protect", "--window-pages", String(WINDOW_PAGES)],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
  await waitFor(`frontend ${guest} online`, async () => (await client.listGuests()).find((g) => g.id === guest && g.state === 1), {
    timeoutMs: 30_000,
  });
});

after(async () => {
  frontend?.kill("SIGTERM");
  if (frontend !== undefined && frontend.exitCode === null && frontend.signalCode === null) await new Promise((r) => frontend.once("exit", r));
  client?.close();
  await host?.stop();
});

function ours(): string[] {
  return readdirSync(path.join(TRACEFS, "instances")).filter((d) => d.startsWith(prefix.replaceAll("_", "-")) || d.startsWith(prefix));
}

/**
 * This guest as ListGuests gives it with its tracepoint list; without one, the same guest
 * says only how many it has.
 */
async function listedBothWays(): Promise<api.Guest> {
  const g = (await client.listGuests(undefined, { guest, withTracepoints: true })).find((x) => x.id === guest)!;
  assert.ok(g.tracepointCount > 100);
  assert.equal(g.capabilities?.tracepoints.length, g.tracepointCount);
  const brief = (await client.listGuests()).find((x) => x.id === guest)!;
  assert.deepEqual(brief.capabilities?.tracepoints, [], "the full list only when asked for");
  assert.equal(brief.tracepointCount, g.tracepointCount);
  return g;
}

test("the guest reports this kernel's capabilities", async () => {
  const g = await listedBothWays();
  assert.equal(g.capabilities?.kprobes, existsSync(path.join(TRACEFS, "kprobe_events")));
  assert.ok((g.capabilities?.cpus ?? 0) >= 1);
  assert.ok(g.capabilities?.tracepoints.includes("sched:sched_process_exit"));
});

test("a tracepoint probe sees a killed child's exit, decoded, at a gRPC watcher", { timeout: 120_000 }, async () => {
  const loaded = await client.insmod({ guest, probe: "exits", options: {} });
  assert.deepEqual(loaded.events.sort(), ["sched/sched_process_exit", "signal/signal_deliver"]);
  assert.equal(ours().length, 1, "one tracefs instance for the probe");

  const abort = new AbortController();
  const stream = client.watch({ guest, probe: "exits" }, { signal: abort.signal });
  await stream.ready;
  const child = spawn("sleep", ["300"], { stdio: "ignore" });
  const pid = child.pid!;
  await new Promise((r) => child.once("spawn", r));
  child.kill("SIGKILL");
  let exit: { comm: string; pid: number; cpu: number } | undefined;
  let deliver: bigint | undefined;
  const timer = setTimeout(() => abort.abort(), 60_000);
  try {
    for await (const res of stream) {
      if (res.kind?.$case !== "event") continue;
      const ev = res.kind.value;
      if (ev.pid !== pid) continue;
      if (ev.event === "sched/sched_process_exit") exit = ev;
      if (ev.event === "signal/signal_deliver") {
        const k = ev.fields.sig?.kind;
        deliver = k?.$case === "int" ? k.value : undefined;
      }
      if (exit !== undefined && deliver !== undefined) break;
    }
  } finally {
    clearTimeout(timer);
    stream.cancel();
  }
  assert.ok(exit !== undefined, "sched_process_exit of the child arrived");
  assert.equal(exit.comm, "sleep");
  assert.equal(deliver, 9n, "signal_deliver says SIGKILL");

  const r = await client.rmmod({ guest, probe: "exits", flags: 0 });
  assert.equal(r.guestClean, true);
  assert.deepEqual(ours(), [], "rmmod removed the instance");
});

test("a bulk probe's pages are stored as pages and reach the watcher decoded", { timeout: 120_000 }, async () => {
  const nc = await connect({ servers: "127.0.0.1:4222", name: "it-bulk" });
  const stored: number[] = [];
  const sub = nc.subscribe(subjects.events(guest, "bulkexits"), { callback: (_e, m) => void stored.push(Number(m.headers?.get(PAGES_HEADER) ?? -1)) });
  await nc.flush();
  await client.insmod({ guest, probe: "bulkexits", options: {} });
  const abort = new AbortController();
  const stream = client.watch({ guest, probe: "bulkexits" }, { signal: abort.signal });
  await stream.ready;
  const children = [0, 1, 2].map(() => spawn("sleep", ["300"], { stdio: "ignore" }));
  await Promise.all(children.map((c) => new Promise((r) => c.once("spawn", r))));
  const pids = new Set(children.map((c) => c.pid!));
  // sleep is exec'd by spawn itself: its comm is right by the time it runs.
  for (const c of children) c.kill("SIGKILL");
  const exits = new Map<number, api.Event>();
  const timer = setTimeout(() => abort.abort(), 60_000);
  try {
    for await (const res of stream) {
      if (res.kind?.$case === "event" && pids.has(res.kind.value.pid)) exits.set(res.kind.value.pid, res.kind.value);
      if (exits.size === pids.size) break;
    }
  } finally {
    clearTimeout(timer);
    stream.cancel();
    sub.unsubscribe();
    await nc.close();
  }
  assert.equal(exits.size, 3, "every child's exit arrived");
  for (const ev of exits.values()) {
    assert.equal(ev.event, "sched/sched_process_exit");
    assert.equal(ev.comm, "sleep");
    assert.equal(ev.fields.comm?.kind?.$case === "str" && ev.fields.comm.kind.value, "sleep", "its own fields, decoded");
    assert.ok(ev.pageSeq >= 1n);
  }
  assert.ok(stored.length > 0 && stored.every((n) => n >= 1), `the stream holds stored pages with their event counts (${stored.join(",")})`);
  assert.ok(stored.reduce((a, b) => a + b, 0) >= 3);
  const r = await client.rmmod({ guest, probe: "bulkexits", flags: 0 });
  assert.equal(r.guestClean, true);
});

test("a live watch gets urgent and bulk events before they are stored (stream seq 0), the same events a stored watch gets with seqs", { timeout: 120_000 }, async () => {
  await assert.rejects(
    client.watch({ guest, live: true, fromStreamSeq: 1n }).ready,
    (e: unknown) => e instanceof ApiError && e.code === ErrorCode.InvalidArgument && /cannot replay/.test(e.message),
  );
  await client.insmod({ guest, probe: "exits", options: {} });
  await client.insmod({ guest, probe: "bulkexits", options: {} });
  const abort = new AbortController();
  const live = client.watch({ guest, event: "sched_process_exit", live: true }, { signal: abort.signal });
  const stored = client.watch({ guest, event: "sched_process_exit" }, { signal: abort.signal });
  await Promise.all([live.ready, stored.ready]);
  const children = [0, 1].map(() => spawn("sleep", ["300"], { stdio: "ignore" }));
  await Promise.all(children.map((c) => new Promise((r) => c.once("spawn", r))));
  const pids = new Set(children.map((c) => c.pid!));
  for (const c of children) c.kill("SIGKILL");
  // Per stream: "<probe> <pid> <page seq> <index>" -> stream seq. Both probes see both exits.
  const collect = async (stream: typeof live): Promise<Map<string, bigint>> => {
    const got = new Map<string, bigint>();
    for await (const res of stream) {
      if (res.kind?.$case !== "event" || !pids.has(res.kind.value.pid)) continue;
      const ev = res.kind.value;
      got.set(`${ev.probe} ${ev.pid} ${ev.pageSeq} ${ev.index}`, res.streamSeq);
      if (got.size === 2 * pids.size) break;
    }
    return got;
  };
  const timer = setTimeout(() => abort.abort(), 60_000);
  let liveGot: Map<string, bigint>;
  let storedGot: Map<string, bigint>;
  try {
    [liveGot, storedGot] = await Promise.all([collect(live), collect(stored)]);
  } finally {
    clearTimeout(timer);
    live.cancel();
    stored.cancel();
  }
  assert.equal(liveGot.size, 4, `the live watch got both exits from both probes: ${[...liveGot.keys()].join("; ")}`);
  assert.deepEqual([...liveGot.keys()].sort(), [...storedGot.keys()].sort(), "the same events, with the same page seqs and indexes");
  assert.ok([...liveGot.values()].every((s) => s === 0n), "live records have no stream seq yet");
  assert.ok([...storedGot.values()].every((s) => s > 0n), "stored records have theirs");
  for (const p of ["exits", "bulkexits"]) assert.equal((await client.rmmod({ guest, probe: p, flags: 0 })).guestClean, true);
});

test("the guest's probe stats reach the probe-listener; the control side refuses none of its messages", { timeout: 120_000 }, async () => {
  // The frontend reports a busy probe's kernel counters every 5 s, on the data channel.
  await client.insmod({ guest, probe: "exits", options: {} });
  const drops = async (): Promise<api.GuestDrops> => (await client.listGuests()).find((x) => x.id === guest)!.drops!;
  const before = await drops();
  const children: ChildProcess[] = [];
  try {
    await waitFor("a stats report at the listener", async () => {
      // Keep the probe busy: stats go out only while its counters move.
      const c = spawn("true", [], { stdio: "ignore" });
      children.push(c);
      return (await drops()).statsReports > before.statsReports;
    }, { timeoutMs: 60_000, intervalMs: 500 });
  } finally {
    await Promise.all(children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once("exit", r)) : undefined)));
  }
  const after = await drops();
  assert.equal(after.unsolicited, before.unsolicited, "no guest message refused as out of place on the control channel");
  assert.equal(after.unknownProbe, before.unknownProbe);
  const r = await client.rmmod({ guest, probe: "exits", flags: 0 });
  assert.equal(r.guestClean, true);
});

test("a frontend whose window is a quarter full asks for its ack (ack_soon)", { timeout: 120_000 }, async () => {
  const nc = await connect({ servers: "127.0.0.1:4222", name: "it-acksoon" });
  const sent: Array<{ pages: number; ackSoon: boolean }> = [];
  const sub = nc.subscribe(subjects.ringUpData(guest), {
    callback: (_e, m) => {
      const msg = decodeGuestMessage(m.data);
      if (msg.body?.$case !== "data" || msg.body.value.probe !== "bulksys") return;
      sent.push({ pages: msg.body.value.runs.reduce((n, r) => n + r.count, 0), ackSoon: msg.body.value.ackSoon });
    },
  });
  await nc.flush();
  await client.insmod({ guest, probe: "bulksys", options: {} });
  try {
    // Each of these messages alone fills a quarter of the window, so each must ask.
    await waitFor(
      "messages of a quarter window or more",
      () => {
        for (let i = 0; i < 20_000; i++) statSync("/"); // a burst of system calls: pages to send
        return sent.filter((s) => s.pages >= WINDOW_PAGES / 4).length >= 3;
      },
      { timeoutMs: 60_000, intervalMs: 200 },
    );
  } finally {
    await client.rmmod({ guest, probe: "bulksys", flags: 0 });
    sub.unsubscribe();
    await nc.close();
  }
  const big = sent.filter((s) => s.pages >= WINDOW_PAGES / 4);
  assert.ok(big.every((s) => s.ackSoon), `every message of ${WINDOW_PAGES / 4}+ pages asks for its ack: ${JSON.stringify(big.slice(0, 5))}`);
  assert.ok(sent.reduce((n, s) => n + s.pages, 0) > WINDOW_PAGES * 2, "the window turned over (acks came)");
});

/** uprobe_events lines of this run's frontend (its groups start with the instance prefix). */
function ourUprobes(): string[] {
  return readFileSync(path.join(TRACEFS, "uprobe_events"), "utf8").split("\n").filter((l) => l.includes(`:${prefix}_`));
}

test("a uprobe and a uretprobe on a program's function fire with their fetch args and filter, and rmmod removes them", { timeout: 120_000 }, async () => {
  if (!existsSync(path.join(TRACEFS, "uprobe_events"))) return; // no uprobes in this kernel: the loader refuses (see below)
  const loaded = await client.insmod({ guest, probe: "ticks", options: {} });
  assert.deepEqual(loaded.events.sort(), ["vesper_ticks/tick", "vesper_ticks/tick_ret"]);
  assert.equal(ourUprobes().length, 2, ourUprobes().join("\n"));
  const abort = new AbortController();
  const stream = client.watch({ guest, probe: "ticks" }, { signal: abort.signal });
  await stream.ready;
  const child = spawn(tickBin, ["7", "11", "13"], { stdio: "ignore" });
  const pid = child.pid!;
  const calls: bigint[] = [];
  const returns: bigint[] = [];
  const timer = setTimeout(() => abort.abort(), 60_000);
  try {
    for await (const res of stream) {
      if (res.kind?.$case !== "event" || res.kind.value.pid !== pid) continue;
      const ev = res.kind.value;
      const int = (name: string): bigint | undefined => (ev.fields[name]?.kind?.$case === "int" ? (ev.fields[name]!.kind as { value: bigint }).value : undefined);
      if (ev.event.endsWith("/tick")) {
        calls.push(int("n")!);
        assert.equal(ev.comm, "tick", "the event's comm, from its $comm fetch arg");
      }
      if (ev.event.endsWith("/tick_ret")) returns.push(int("r")!);
      if (calls.length === 3 && returns.length === 2) break;
    }
  } finally {
    clearTimeout(timer);
    stream.cancel();
  }
  assert.deepEqual(calls, [7n, 11n, 13n], "each call with its argument");
  assert.deepEqual(returns, [33n, 39n], "returns, filtered in the kernel on r > 30 (21 is not shipped)");
  const r = await client.rmmod({ guest, probe: "ticks", flags: 0 });
  assert.equal(r.guestClean, true);
  assert.deepEqual(ourUprobes(), [], "rmmod removed the uprobes");
  assert.deepEqual(ours(), []);
});

test("a uprobe on a function the file lacks fails with the file and symbol named, and leaves nothing", { timeout: 60_000 }, async () => {
  if (!existsSync(path.join(TRACEFS, "uprobe_events"))) return;
  await assert.rejects(client.insmod({ guest, probe: "noticks", options: {} }), (err: unknown) => {
    assert.ok(err instanceof ApiError);
    assert.equal(err.code, ErrorCode.KernelRefused);
    assert.match(err.message, new RegExp(`${tickBin} has no function vesper_it_tock`));
    return true;
  });
  assert.deepEqual(ourUprobes(), []);
  assert.deepEqual(ours(), [], "the rollback removed the instance");
});

test("a kprobe probe on a kernel without kprobes fails with a clear error and leaves nothing", async () => {
  if (existsSync(path.join(TRACEFS, "kprobe_events"))) return; // this kernel has kprobes: nothing to check here
  await assert.rejects(
    client.insmod({ guest, probe: "process", options: {} }),
    (err: unknown) => {
      assert.ok(err instanceof ApiError);
      assert.equal(err.code, ErrorCode.Unsupported);
      assert.match(err.message, /kprobe/i);
      return true;
    },
  );
  // The probe groups that need kprobes say so, naming the kprobe and its symbol.
  for (const probe of ["memory", "network", "storage", "kernel"]) {
    await assert.rejects(client.insmod({ guest, probe, options: {} }), (err: unknown) => {
      assert.ok(err instanceof ApiError);
      assert.equal(err.code, ErrorCode.Unsupported);
      assert.match(err.message, new RegExp(`cannot load probe ${probe}: its kernel lacks kprobes \\(CONFIG_KPROBE_EVENTS\\), needed for vesper_${probe}/`));
      return true;
    });
  }
  assert.deepEqual(ours(), []);
  const g = await listedBothWays();
  assert.ok(!g.loadedProbes.includes("process"));
});

test("loading an unknown probe or into an unknown guest says so", async () => {
  await assert.rejects(client.insmod({ guest, probe: "nosuch", options: {} }), (e: unknown) => e instanceof ApiError && e.code === ErrorCode.UnknownProbe);
  await assert.rejects(client.insmod({ guest: `nobody-${tag}`, probe: "exits", options: {} }), (e: unknown) => e instanceof ApiError && e.code === ErrorCode.UnknownGuest);
});
