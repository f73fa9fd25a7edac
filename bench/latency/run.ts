/**
 * Detection latency: `kill` inside a QEMU guest -> the exit event at a gRPC WatchEvents client,
 * against the raw one-way latency of the same virtio-serial channel measured in the same run.
 *
 *   node --import tsx bench/latency/run.ts [--kills 200] [--warmup 20] [--gap-ms 60] [--no-nats] [--no-qemu] [--nice N] [--kernel-args "A B"] [--node-flags F] [--trace] [--host-profile DIR] [--no-floor] [--floor c|js|js-poll] [--probe process|benchkill]
 *
 * Part 1 (virtio-serial): one guest with a second port org.vesper.bench. A driver in the guest
 * (guest-driver.mjs, node) writes "R <mono>" straight into that port (raw one-way sample), and
 * kills a `sleep` (a grandchild init adopts, so the driver handles no SIGCHLD on the measured path), reporting the kill's CLOCK_MONOTONIC time afterwards. The host puts
 * guest times on its own clock with an offset from ping-pong over the bench port (minimum-RTT
 * sample, uncertainty ±RTT/2; the same offset is used for both series, so the ratio does not
 * depend on it). Vesper path: guest tracefs read -> frame -> qemu-bridge -> NATS -> listener ->
 * JetStream -> gateway -> gRPC.
 * Floor (virtio-serial, after Vesper's kills, its probe unloaded): the same kills read by page-relay.c,
 * a static C program in the guest doing the least a tracefs reader can do (blocking read of
 * trace_pipe_raw, one write of the page into a third port); the host decodes each page it gets.
 * It shows how much of Vesper's time is the path (tracepoint -> reader wake-up -> port), not the agent.
 * Part 2 (NATS transport): the guest frontend runs on the host (no network in the test guest)
 * probing this host's kernel (sched_process_exit of a uniquely named sleep) over NATS; baseline
 * is a core NATS publish -> subscribe of a timestamp between two connections (same clock).
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "@nats-io/transport-node";
import { VesperApiClient } from "@vesper/cli";
import { api, subjects } from "@vesper/protocol";
import { PageDecoder, parseEventFormat, parseHeaderPage } from "../../services/probe-listener/src/ftrace/index.js";
import { HostProcess } from "../../test/harness/host-process.js";
import { QemuGuest } from "../../test/harness/qemu-guest.js";
import { waitFor } from "../../test/harness/wait.js";
import { startNats } from "../lib/nats-server.js";
import { pinGuestApart, pushFile } from "../lib/stack.js";
import { argOf, fmt, hasFlag, lineChart, machineLine, median, percentile, REPO_ROOT, table, writeResult, type Series } from "../lib/report.js";

const KILLS = Number(argOf("--kills", "200"));
const WARMUP = Number(argOf("--warmup", "20"));
const GAP_MS = Number(argOf("--gap-ms", "60"));
/** vesper.node_flags for the guest frontend (the image's default is --jitless; "none" for V8's JIT). */
const NODE_FLAGS = argOf("--node-flags", "") ?? "";
/** vesper.nice for the guest frontend (the image leaves it at 0). */
const NICE = argOf("--nice", "") ?? "";
/** --kernel-args "A B": extra guest kernel parameters (e.g. preempt=full), for experiments on the guest's scheduling. */
const KERNEL_ARGS = (argOf("--kernel-args", "") ?? "").split(/\s+/).filter((a) => a !== "");
/** --host-profile DIR: a V8 CPU profile of vesper-host into DIR (written when it stops). */
const HOST_PROFILE = argOf("--host-profile", "") ?? "";
/** --trace: the guest frontend logs each page's timing; the breakdown then splits the guest's part. */
const TRACE = hasFlag("--trace");
/**
 * --floor c|js|js-poll: the floor's relay in C (page-relay.c, default), or page-relay.mjs under the agent's node
 * flags with a blocking read (js) or the agent's own event-loop wait (js-poll).
 */
const FLOOR = argOf("--floor", "c") ?? "c";
if (FLOOR !== "c" && FLOOR !== "js" && FLOOR !== "js-poll") throw new Error(`--floor ${FLOOR}: give c, js or js-poll`);
/**
 * --probe NAME: the probe Vesper's watchers see in the guest: `process` (default, the built-in group: exec, fork, exit)
 * or `benchkill` (only the floor's do_exit kprobe filtered to the victims: the agent then reads what the relay reads).
 */
const PROBE = argOf("--probe", "process") ?? "process";
let natsUrl = "127.0.0.1:4222";
const now = (): bigint => process.hrtime.bigint();
const ms = (ns: bigint): number => Number(ns) / 1e6;

interface PartResult {
  name: string;
  raw: number[];
  vesper: number[];
  /** kill -> the same event at a live WatchEvents client (before it is stored) */
  live: number[];
  /** event timestamp (exit tracepoint) -> watcher */
  pipeline: number[];
  /** kill -> the exit page at the host through page-relay.c (virtio-serial only) */
  floor?: number[] | undefined;
  /** the raw channel's samples of the floor's phase (its ratio's baseline: same phase, same clock offset) */
  floorRaw?: number[] | undefined;
  note: string;
}

type Ev = { pid: number; event: string; ts: bigint; at: bigint };
/** The guest clock's offset from the host's (guest = host + off), from the ping with the shortest round trip. */
type ClockOffset = { off: bigint; rtt: bigint };
/** One run of the guest driver: its raw channel samples and its kills, in guest time. */
type DriverRun = { rawSamples: Array<{ i: number; g: bigint; at: bigint }>; kills: Array<{ i: number; pid: number; g: bigint }> };

/** The offset of the two with the shorter round trip (the tighter bound). */
const tighter = (a: ClockOffset, b: ClockOffset): bigint => (a.rtt <= b.rtt ? a.off : b.off);

/** A connection to a QEMU chardev socket (server=on,wait=off), retried until QEMU listens on it. */
function connectChardev(what: string, sockPath: string): Promise<net.Socket> {
  return waitFor(what, () => new Promise<net.Socket | undefined>((res) => {
    const s = net.createConnection(sockPath);
    s.once("connect", () => res(s));
    s.once("error", () => res(undefined));
  }), { timeoutMs: 30_000, intervalMs: 100 });
}

function watchExits(client: VesperApiClient, guest: string, probe: string, signal: AbortSignal, live = false): { ready: Promise<void>; exits: Map<number, Ev> } {
  const exits = new Map<number, Ev>();
  const stream = client.watch({ guest, probe, live }, { signal });
  void (async () => {
    try {
      for await (const res of stream) {
        const at = now();
        if (res.kind?.$case !== "event") continue;
        const ev = res.kind.value;
        if (!(ev.event.endsWith("/exit") || ev.event === "sched/sched_process_exit")) continue;
        if (!exits.has(ev.pid)) exits.set(ev.pid, { pid: ev.pid, event: ev.event, ts: ev.ts, at });
      }
    } catch {
      /* cancelled */
    }
  })();
  return { ready: stream.ready, exits };
}

/**
 * The floor inside the guest: the driver's kills read by page-relay.c alone (a do_exit kprobe filtered
 * to `sleep`, in an instance of its own, buffer_percent 0), each page length-prefixed into the
 * org.vesper.relay port. Returns when each page reached the host, by the pid that exited.
 */
async function relayFloor(
  guest: QemuGuest,
  runDir: string,
  relaySock: string,
  drive: () => Promise<DriverRun>,
  offset: () => Promise<ClockOffset>,
): Promise<DriverRun & {
  pageAt: Map<number, bigint>;
  pages: number;
  /** The clock offset measured once the relay runs and again after the kills (its own, not the main phase's: in two runs the main phase's offset was off by over a millisecond here). */
  offsets: [ClockOffset, ClockOffset];
}> {
  let relay: string; // the command, before its two paths
  let relayMode = ""; // page-relay.mjs's wait, after them
  if (FLOOR === "c") {
    const bin = path.join(runDir, "vrelay");
    execFileSync("gcc", ["-static", "-O2", "-s", "-o", bin, path.join(REPO_ROOT, "bench/latency/page-relay.c")]);
    await pushFile(guest, bin, "/tmp/vrelay");
    relay = "/tmp/vrelay";
  } else {
    await pushFile(guest, path.join(REPO_ROOT, "bench/latency/page-relay.mjs"), "/tmp/vrelay.mjs", "644");
    const flags = NODE_FLAGS === "" ? "--jitless" : NODE_FLAGS === "none" ? "" : NODE_FLAGS.split(",").join(" ");
    relay = `node ${flags} /tmp/vrelay.mjs`;
    relayMode = FLOOR === "js-poll" ? "poll" : "block";
  }
  const T = "/sys/kernel/tracing";
  const I = `${T}/instances/vbench_relay`;
  // The event Vesper's watchers see first for a kill: the `process` probe's kprobe on do_exit's entry.
  const E = `${I}/events/vbench_relay/exit`;
  const def = await guest.exec(`echo 'p:vbench_relay/exit do_exit' >> ${T}/kprobe_events && echo kprobe-ok`);
  if (!def.output.includes("kprobe-ok")) throw new Error(`cannot define the relay's do_exit kprobe: ${def.output}`);
  const header = parseHeaderPage((await guest.exec(`cat ${T}/events/header_page`)).output);
  const decoder = new PageDecoder([parseEventFormat((await guest.exec(`cat ${T}/events/vbench_relay/exit/format`)).output, "vbench_relay")], header);
  const sock = await connectChardev("relay port", relaySock);
  const pageAt = new Map<number, bigint>();
  let pages = 0;
  let ready = false;
  let acc: Buffer = Buffer.alloc(0);
  sock.on("data", (d: Buffer) => {
    const at = now();
    acc = acc.length === 0 ? d : Buffer.concat([acc, d]);
    while (acc.length >= 4 && acc.length >= 4 + acc.readUInt32LE(0)) {
      const len = acc.readUInt32LE(0);
      const page = acc.subarray(4, 4 + len);
      acc = acc.subarray(4 + len);
      if (len === 0) {
        ready = true;
        continue;
      }
      pages++;
      for (const ev of decoder.decode(Uint8Array.prototype.slice.call(page)).events) if (!pageAt.has(ev.pid)) pageAt.set(ev.pid, at);
    }
  });
  const setup = await guest.exec(
    `mkdir -p ${I} && echo 0 > ${I}/buffer_percent && echo 'comm == "sleep"' > ${E}/filter && echo 1 > ${E}/enable && echo 1 > ${I}/tracing_on && ` +
      `P=$(for d in /sys/class/virtio-ports/*; do [ "$(cat $d/name)" = org.vesper.relay ] && echo /dev/\${d##*/}; done) && ` +
      `(${relay} ${I}/per_cpu/cpu0/trace_pipe_raw $P ${relayMode} </dev/null >/tmp/relay.log 2>&1 & echo $! > /tmp/relay.pid) && echo relay-ok`,
  );
  if (!setup.output.includes("relay-ok")) throw new Error(`page-relay did not start: ${setup.output}`);
  try {
    await waitFor("page relay ready", () => ready, { timeoutMs: 60_000, intervalMs: 50 });
    const before = await offset();
    const run = await drive();
    await waitFor("last relay pages", () => run.kills.every((k) => pageAt.has(k.pid)), { timeoutMs: 10_000 }).catch(() => undefined);
    return { ...run, pageAt, pages, offsets: [before, await offset()] };
  } finally {
    sock.destroy();
    await guest.exec(`kill $(cat /tmp/relay.pid) 2>/dev/null; echo 0 > ${I}/tracing_on; echo 0 > ${E}/enable; sleep 0.2; rmdir ${I}; echo '-:vbench_relay/exit' >> ${T}/kprobe_events`).catch(() => undefined);
  }
}

async function qemuPart(runDir: string, hostPids: ReadonlyArray<number | undefined>, client: VesperApiClient): Promise<PartResult> {
  const name = "blat1";
  const benchSock = path.join(runDir, "bench.sock");
  const relaySock = path.join(runDir, "relay.sock");
  const guest = await QemuGuest.start({
    name,
    runDir,
    extraArgs: ["-chardev", `socket,id=ch1,path=${benchSock},server=on,wait=off`, "-device", "virtserialport,chardev=ch1,name=org.vesper.bench",
      "-chardev", `socket,id=ch2,path=${relaySock},server=on,wait=off`, "-device", "virtserialport,chardev=ch2,name=org.vesper.relay"],
    appendExtra: [...(NODE_FLAGS === "" ? [] : [`vesper.node_flags=${NODE_FLAGS}`]), ...(NICE === "" ? [] : [`vesper.nice=${NICE}`]), ...KERNEL_ARGS, ...(TRACE ? ["vesper.log_level=trace"] : [])],
  });
  const pin = pinGuestApart(guest, hostPids);
  const pinning = pin.note;
  try {
    console.log(`guest booted in ${guest.bootMs} ms; ${pinning}`);
    await waitFor("guest online", async () => (await client.listGuests()).find((g) => g.id === name && g.state === 1), { timeoutMs: 120_000, intervalMs: 200 });
    await client.rmmod({ guest: name, probe: PROBE, flags: 1 }).catch(() => undefined);
    await client.insmod({ guest: name, probe: PROBE, options: {} });
    // driver into the guest, in chunks (console lines are limited)
    const b64 = readFileSync(path.join(REPO_ROOT, "bench/latency/guest-driver.mjs")).toString("base64");
    await guest.exec("rm -f /tmp/d.b64");
    for (let i = 0; i < b64.length; i += 800) await guest.exec(`echo -n '${b64.slice(i, i + 800)}' >> /tmp/d.b64`);
    await guest.exec("base64 -d /tmp/d.b64 > /tmp/d.mjs && (node /tmp/d.mjs </dev/null >/tmp/d.log 2>&1 &)");

    const sock = await connectChardev("bench port", benchSock);
    const lines: Array<{ line: string; at: bigint }> = [];
    let waiters: Array<() => void> = [];
    let acc = "";
    sock.on("data", (d) => {
      const at = now();
      acc += d.toString();
      let nl: number;
      while ((nl = acc.indexOf("\n")) >= 0) {
        lines.push({ line: acc.slice(0, nl), at });
        acc = acc.slice(nl + 1);
      }
      const w = waiters;
      waiters = [];
      for (const f of w) f();
    });
    const nextLine = async (pred: (l: string) => boolean, timeoutMs = 20_000): Promise<{ line: string; at: bigint }> => {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const i = lines.findIndex((l) => pred(l.line));
        if (i >= 0) return lines.splice(i, 1)[0]!;
        if (Date.now() > end) throw new Error("timed out waiting for the guest driver");
        await Promise.race([new Promise<void>((r) => waiters.push(r)), sleep(200)]);
      }
    };
    // the driver may need a moment to start: ping until it answers
    await waitFor("guest driver", async () => {
      sock.write("P\n");
      return await nextLine((l) => l.startsWith("p "), 1000).catch(() => undefined);
    }, { timeoutMs: 60_000, intervalMs: 10 });
    const offset = async (n: number): Promise<ClockOffset> => {
      let best: ClockOffset | undefined;
      for (let i = 0; i < n; i++) {
        // An answer to an earlier ping (the start-up pings above go unanswered for a while) would
        // look like a round trip shorter than possible, and win: only answers that come after this ping count.
        for (let j = lines.length - 1; j >= 0; j--) if (lines[j]!.line.startsWith("p ")) lines.splice(j, 1);
        const h0 = now();
        sock.write("P\n");
        const r = await nextLine((l) => l.startsWith("p "));
        const h1 = r.at;
        const g = BigInt(r.line.split(" ")[1]!);
        const rtt = h1 - h0;
        if (rtt > 0n && (best === undefined || rtt < best.rtt)) best = { off: g - (h0 + h1) / 2n, rtt };
        await sleep(5);
      }
      if (best === undefined) throw new Error("no ping over the bench port came back after it was sent");
      return best;
    };
    const o1 = await offset(40);
    // breakdown: when the bridge published the guest's data frame, when the listener published the event
    const tap = await connect({ servers: natsUrl });
    const dataAt: bigint[] = [];
    const eventAt = new Map<number, bigint>();
    const dsub = tap.subscribe(`vesper.ring.${name}.up.data`, { callback: () => { dataAt.push(now()); } });
    const esub = tap.subscribe(`vesper.events.${name}.${PROBE}`, {
      callback: (_e, m) => {
        const at = now();
        const r = api.WatchEventsResponse.decode(m.data);
        if (r.kind?.$case === "event" && !eventAt.has(r.kind.value.pid) && /exit$/.test(r.kind.value.event)) eventAt.set(r.kind.value.pid, at);
      },
    });
    await tap.flush();
    const ac = new AbortController();
    const w = watchExits(client, name, PROBE, ac.signal);
    const wl = watchExits(client, name, PROBE, ac.signal, true);
    await Promise.all([w.ready, wl.ready]);
    const total = WARMUP + KILLS;
    /** `total` iterations of the driver: a raw sample and a kill each. */
    const drive = async (): Promise<DriverRun> => {
      sock.write(`G ${total} ${GAP_MS}\n`);
      const rawSamples: DriverRun["rawSamples"] = [];
      const kills: DriverRun["kills"] = [];
      for (;;) {
        const l = await nextLine(() => true, 60_000);
        const p = l.line.split(" ");
        if (p[0] === "R") rawSamples.push({ i: Number(p[1]), g: BigInt(p[2]!), at: l.at });
        else if (p[0] === "K") kills.push({ i: Number(p[1]), pid: Number(p[2]), g: BigInt(p[3]!) });
        else if (p[0] === "D") break;
        if (kills.length % 50 === 0 && p[0] === "K") console.log(`  ${kills.length}/${total} kills`);
      }
      return { rawSamples, kills };
    };
    const { rawSamples, kills } = await drive();
    await waitFor("last events", () => kills.every((k) => w.exits.has(k.pid)), { timeoutMs: 10_000 }).catch(() => undefined);
    const o2 = await offset(40);
    dsub.unsubscribe();
    esub.unsubscribe();
    await tap.close();
    ac.abort();
    const off = tighter(o1, o2);
    const drift = ms(o2.off - o1.off);
    const raw = rawSamples.filter((s) => s.i >= WARMUP).map((s) => ms(s.at - (s.g - off)));
    const vesper: number[] = [];
    const live: number[] = [];
    const pipeline: number[] = [];
    let missing = 0;
    const breakdown: number[][] = [];
    for (const k of kills.filter((k) => k.i >= WARMUP)) {
      const el = wl.exits.get(k.pid);
      if (el !== undefined) live.push(ms(el.at - (k.g - off)));
      const e = w.exits.get(k.pid);
      if (e === undefined) {
        missing++;
        continue;
      }
      vesper.push(ms(e.at - (k.g - off)));
      const killHost = k.g - off;
      const d = dataAt.find((t) => t > killHost);
      const ev = eventAt.get(k.pid);
      if (d !== undefined && ev !== undefined) breakdown.push([ms(e.ts - k.g), ms(d - (e.ts - off)), ms(ev - d), ms(e.at - ev)]);
      pipeline.push(ms(e.at - (e.ts - off)));
    }
    await client.rmmod({ guest: name, probe: PROBE, flags: 0 }).catch(() => undefined);
    let floor: number[] | undefined;
    let floorNote = "";
    let floorRaw: number[] | undefined;
    if (!hasFlag("--no-floor")) {
      const f = await relayFloor(guest, runDir, relaySock, drive, () => offset(40));
      const [o3, o4] = f.offsets;
      const foff = tighter(o3, o4);
      floor = [];
      let floorMissing = 0;
      for (const k of f.kills.filter((k) => k.i >= WARMUP)) {
        const at = f.pageAt.get(k.pid);
        if (at === undefined) floorMissing++;
        else floor.push(ms(at - (k.g - foff)));
      }
      const fraw = f.rawSamples.filter((s) => s.i >= WARMUP).map((s) => ms(s.at - (s.g - foff)));
      floorRaw = fraw;
      floorNote = `; floor (${FLOOR === "c" ? "page-relay.c" : `page-relay.mjs ${FLOOR === "js" ? "block" : "poll"}`}, ${f.pages} pages, ${floorMissing} kills without a page): kill→page at the host p50 ${median(floor).toFixed(2)} ms (p99 ${percentile(floor, 99).toFixed(2)}), raw in the same phase p50 ${median(fraw).toFixed(2)} ms, offset drift over the phase ${ms(o4.off - o3.off).toFixed(2)} ms`;
      if (!(median(fraw) > 0)) {
        // The guest's clock moved against the host's within the phase: both series carry the error.
        floorNote += " (the guest clock's offset moved during this phase: floor not rated)";
        floor = undefined;
      }
    }
    sock.write("Q\n");
    sock.destroy();
    let guestSplit = "";
    if (TRACE) {
      // The frontend's own timing of each page: tracepoint -> read() returned -> written to the port.
      const log = (await guest.exec(`grep '"page run"' /tmp/frontend.log | tail -${KILLS * 10}`, { timeoutMs: 60_000 })).output;
      const rows = [...log.matchAll(/"kernelToReadUs":([0-9.]+),"readToSentUs":([0-9.]+)/g)].map((m) => [Number(m[1]) / 1000, Number(m[2]) / 1000]);
      if (rows.length > 0) {
        const toRead = rows.map((r) => r[0]!);
        const late = toRead.filter((v) => v > 20).length;
        guestSplit =
          `; inside the guest (frontend's own clock, ${rows.length} pages): tracepoint→read() returned ${median(toRead).toFixed(2)} (p99 ${percentile(toRead, 99).toFixed(2)}; ` +
          `${late} pages read more than 20 ms after their first event), →written to the port ${median(rows.map((r) => r[1]!)).toFixed(2)}`;
        if (process.env.VESPER_BENCH_TRACE_FILE) writeFileSync(process.env.VESPER_BENCH_TRACE_FILE, log);
      }
    }
    return {
      name: "virtio-serial (QEMU TCG guest)",
      raw,
      vesper,
      live,
      pipeline,
      floor,
      floorRaw,
      note:
        `clock offset from min-RTT ping over the bench port: RTT ${ms(o1.rtt).toFixed(2)}/${ms(o2.rtt).toFixed(2)} ms ` +
        `(before/after), offset drift over the run ${drift.toFixed(2)} ms; ${missing} kills without an event; ${pinning}. ` +
        `Breakdown (medians, ms): kill→exit tracepoint ${median(breakdown.map((b) => b[0]!)).toFixed(2)}, ` +
        `tracepoint→data frame on NATS (guest frontend + virtio-serial + bridge) ${median(breakdown.map((b) => b[1]!)).toFixed(2)}, ` +
        `→event published by the listener ${median(breakdown.map((b) => b[2]!)).toFixed(2)}, ` +
        `→gRPC watcher (JetStream + gateway + gRPC) ${median(breakdown.map((b) => b[3]!)).toFixed(2)}${guestSplit}${floorNote}`,
    };
  } finally {
    if (hasFlag("--frontend-log")) console.log((await guest.exec("tail -60 /tmp/frontend.log").catch(() => ({ output: "" }))).output);
    await guest.stop();
    pin.restore();
  }
}

async function natsPart(runDir: string, client: VesperApiClient): Promise<PartResult> {
  const guest = `blatnats${process.pid}`;
  const fe: ChildProcess = spawn(
    process.execPath,
    [path.join(REPO_ROOT, "dist/guest-frontend.mjs"), "--guest-id", guest, "--transport", "nats", "--instance-prefix", "vesper_blat", "--no-oom-protect", "--nats", natsUrl],
    { stdio: ["ignore", "ignore", "ignore"] },
  );
  const sleepBin = path.join(runDir, "vlat_sleep");
  copyFileSync("/bin/sleep", sleepBin);
  const nc1 = await connect({ servers: natsUrl });
  const nc2 = await connect({ servers: natsUrl });
  try {
    await waitFor("host frontend online", async () => (await client.listGuests()).find((g) => g.id === guest && g.state === 1), { timeoutMs: 30_000 });
    await client.insmod({ guest, probe: "benchexit", options: {} });
    const ac = new AbortController();
    const w = watchExits(client, guest, "benchexit", ac.signal);
    const wl = watchExits(client, guest, "benchexit", ac.signal, true);
    await Promise.all([w.ready, wl.ready]);
    const rawSub = nc2.subscribe(`vbench.raw.${process.pid}`);
    const raw: number[] = [];
    let rawIdx = 0;
    void (async () => {
      for await (const m of rawSub) {
        const at = now();
        if (rawIdx++ >= WARMUP) raw.push(ms(at - BigInt(new TextDecoder().decode(m.data))));
      }
    })();
    await nc2.flush();
    // Breakdown on one clock: when the frontend's data frame and the listener's event were on NATS.
    const dataAt: bigint[] = [];
    const eventAt = new Map<number, bigint>();
    nc2.subscribe(subjects.ringUpData(guest), { callback: () => void dataAt.push(now()) });
    nc2.subscribe(subjects.events(guest, "benchexit"), {
      callback: (_e, m) => {
        const at = now();
        const r = api.WatchEventsResponse.decode(m.data);
        if (r.kind?.$case === "event" && !eventAt.has(r.kind.value.pid)) eventAt.set(r.kind.value.pid, at);
      },
    });
    await nc2.flush();
    const breakdown: number[][] = [];
    const vesper: number[] = [];
    const live: number[] = [];
    const pipeline: number[] = [];
    let missing = 0;
    for (let i = 0; i < WARMUP + KILLS; i++) {
      const c = spawn(sleepBin, ["1000"], { stdio: "ignore" });
      await new Promise((r) => c.once("spawn", r));
      await sleep(GAP_MS / 2);
      nc1.publish(`vbench.raw.${process.pid}`, String(now()));
      await sleep(GAP_MS / 2);
      const t = now();
      c.kill("SIGKILL");
      const e = await waitFor("exit event", () => w.exits.get(c.pid!), { timeoutMs: 5000, intervalMs: 1 }).catch(() => undefined);
      if (i < WARMUP) continue;
      const el = await waitFor("live exit event", () => wl.exits.get(c.pid!), { timeoutMs: 5000, intervalMs: 1 }).catch(() => undefined);
      if (el !== undefined) live.push(ms(el.at - t));
      if (e === undefined) missing++;
      else {
        vesper.push(ms(e.at - t));
        pipeline.push(ms(e.at - e.ts));
        const d = dataAt.find((x) => x > t);
        const ev = eventAt.get(c.pid!);
        if (d !== undefined && ev !== undefined) breakdown.push([ms(e.ts) - ms(t), ms(d) - ms(e.ts), ms(ev - d), ms(e.at - ev)]);
      }
    }
    ac.abort();
    await client.rmmod({ guest, probe: "benchexit", flags: 0 }).catch(() => undefined);
    return {
      name: "NATS transport (frontend on the host)",
      raw,
      vesper,
      live,
      pipeline,
      note:
        `one clock; ${missing} kills without an event. Breakdown (medians, ms): kill→exit tracepoint ${median(breakdown.map((b) => b[0]!)).toFixed(2)}, ` +
        `tracepoint→data frame on NATS (frontend) ${median(breakdown.map((b) => b[1]!)).toFixed(2)}, ` +
        `→event published by the listener ${median(breakdown.map((b) => b[2]!)).toFixed(2)}, ` +
        `→gRPC watcher (JetStream + gateway + gRPC) ${median(breakdown.map((b) => b[3]!)).toFixed(2)}`,
    };
  } finally {
    fe.kill("SIGTERM");
    await nc1.close();
    await nc2.close();
  }
}

async function main(): Promise<void> {
  const runDir = mkdtempSync("/tmp/vbl-");
  const probeDir = path.join(runDir, "probes");
  mkdirSync(probeDir);
  const probes = [
    // the NATS part's probe on this host's kernel
    { name: "benchexit", description: "bench: exits of vlat_sleep", tracepoints: [{ system: "sched", event: "sched_process_exit", filter: 'comm == "vlat_sleep"' }] },
    // --probe benchkill in the guest
    { name: "benchkill", description: "bench: do_exit of the guest driver's victims (what the floor's relay reads)", kprobes: [{ name: "exit", symbol: "do_exit", filter: 'comm == "sleep"' }] },
  ];
  for (const p of probes) writeFileSync(path.join(probeDir, `${p.name}.json`), JSON.stringify({ ...p, delivery: "urgent" }));
  const nats = await startNats(runDir);
  natsUrl = nats.url;
  // --split: each host service in its own process (the default is all in one, as a single host runs them).
  const split = hasFlag("--split");
  const host = await HostProcess.start({ runDir, probeDir, extraArgs: ["--nats", nats.url], ...(HOST_PROFILE !== "" ? { nodeArgs: ["--cpu-prof", "--cpu-prof-interval", "100", `--cpu-prof-dir=${HOST_PROFILE}`] } : {}), ...(split ? { services: ["loader", "gateway"] } : {}) });
  const others = split
    ? await Promise.all(["listener", "bridge"].map((s) => HostProcess.start({ runDir, probeDir, services: [s], extraArgs: ["--nats", nats.url] })))
    : [];
  const client = new VesperApiClient(host.address!, { timeoutMs: 60_000 });
  const parts: PartResult[] = [];
  try {
    if (!hasFlag("--no-qemu")) parts.push(await qemuPart(runDir, [host.pid, nats.pid, ...others.map((o) => o.pid)], client));
    if (!hasFlag("--no-nats")) parts.push(await natsPart(runDir, client));
  } finally {
    client.close();
    for (const o of others) await o.stop();
    await host.stop();
    await nats.stop();
  }
  const rows = parts.map((p) => {
    const r50 = median(p.raw);
    const v50 = median(p.vesper);
    return [
      p.name,
      p.vesper.length,
      r50.toFixed(2),
      percentile(p.raw, 99).toFixed(2),
      v50.toFixed(2),
      percentile(p.vesper, 99).toFixed(2),
      median(p.pipeline).toFixed(2),
      `**${(v50 / r50).toFixed(2)}×** (goal ≤ 2×)`,
      p.live.length,
      median(p.live).toFixed(2),
      percentile(p.live, 99).toFixed(2),
      `**${(median(p.live) / r50).toFixed(2)}×**`,
      p.floor === undefined || p.floorRaw === undefined ? "—" : `${median(p.floor).toFixed(2)} (${(median(p.floor) / median(p.floorRaw)).toFixed(2)}×)`,
    ];
  });
  const head = [
    "channel",
    "kills",
    "raw p50 ms",
    "raw p99 ms",
    "kill→watcher p50 ms",
    "kill→watcher p99 ms",
    "exit ts→watcher p50 ms",
    "ratio p50 Vesper/raw",
    "live: events",
    "live p50 ms",
    "live p99 ms",
    "ratio p50 live/raw",
    `floor: ${FLOOR === "c" ? "C" : "JS"} relay p50 ms (÷ raw of its phase)`,
  ];
  console.log(table(head, rows));
  for (const p of parts) console.log(`${p.name}: ${p.note}`);
  const cdf = (xs: number[]): Array<[number, number]> => [...xs].sort((a, b) => a - b).map((v, i, a) => [v, ((i + 1) / a.length) * 100]);
  const series: Series[] = parts.flatMap((p) => [
    { name: `${p.name.split(" ")[0]} raw`, points: cdf(p.raw) },
    { name: `${p.name.split(" ")[0]} Vesper`, points: cdf(p.vesper) },
    { name: `${p.name.split(" ")[0]} Vesper live`, points: cdf(p.live) },
    ...(p.floor === undefined ? [] : [{ name: `${p.name.split(" ")[0]} floor (${FLOOR === "c" ? "C" : "JS"} relay)`, points: cdf(p.floor) }]),
  ]);
  const md = [
    "# Detection latency (`bench/latency`)",
    "",
    "Command: `make bench-latency` (= `node --import tsx bench/latency/run.ts`)",
    "",
    machineLine(),
    `${KILLS} kills after ${WARMUP} warm-up kills, one every ~${GAP_MS * 1.5} ms; latencies in ms.`,
    "",
    table(head, rows),
    "",
    ...parts.map((p) => `- ${p.name}: ${p.note}`),
    "- raw virtio-serial = a guest process writing its CLOCK_MONOTONIC straight into a second port (org.vesper.bench) of the same",
    "  virtio-serial device, read on the host (one-way, guest clock put on the host clock). Vesper = kill() in the guest to the",
    "  `process` probe's exit event at a gRPC WatchEvents client (urgent mode). live = the same kills at a second client watching",
    "  with `live` (WatchEvents{live}: the listener's records before they are stored; both watchers run at once).",
    "- floor = the same kills again with Vesper's probe unloaded, read in the guest by bench/latency/page-relay.c (static C: a blocking",
    "  read of trace_pipe_raw, woken at the first event, and one write of the page into a third port), to the page at the host: the",
    "  least any tracefs reader can do on this path, on the event Vesper's watchers get first (a do_exit kprobe). Its ratio is against the raw",
    "  channel's p50 in the same phase (in the note). `--floor js` / `--floor js-poll`: the same relay in JavaScript (page-relay.mjs, the agent's",
    "  node flags) with a blocking read, or with the agent's own event-loop wait.",
    "- raw NATS = core NATS publish of a timestamp to a subscriber on another connection.",
  ].join("\n");
  writeResult("latency", md, lineChart({ title: "Detection latency CDF", xLabel: "ms (log)", yLabel: "% of samples", series, logX: true, markersOnly: false }));
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
