/**
 * Host scale: N guests on one set of host services over NATS. Each "guest" is a guest frontend
 * running as a host process (dist/guest-frontend.mjs --transport nats) probing this host's own
 * kernel, with its own probe on its own parked process vsc<i>, which --rate times a second gets
 * a signal (one syscall, no fork). One gRPC WatchEvents client watches every guest;
 * latency = arrival at the watcher - the event's kernel timestamp (same clock: exact).
 *
 * --source tracepoint (the default): vsc<i> is a copy of sleep, the probe signal:signal_generate
 * filtered on comm vsc<i>. In this one kernel every signal then runs all N instances' filters (N²
 * work at N guests, which real guests, each with its own kernel, never do).
 * --source uprobe: vsc<i> is a copy of
 * bench/load/tick.c whose SIGUSR1 handler calls vesper_tick(); guest i's probe is a uprobe on
 * vesper_tick in its own copy, so a hit fires that guest's probe alone, as in separate kernels.
 *
 *   node --import tsx bench/scale/run.ts [--sizes 1,10,100] [--rate 2] [--seconds 20] [--min-events 200] [--source uprobe|tracepoint] [--profile DIR] [--result-name scale]
 *
 * Reported per size: host CPU (host services = vesper-host + nats-server; frontends apart, since
 * in production they run inside the guests), host services' memory and its growth per guest,
 * frontend RSS, p50/p99 latency.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { appendFileSync, copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { buildTick, startStack } from "../lib/stack.js";
import { waitFor } from "../../test/harness/wait.js";
import { argOf, lineChart, machineLine, median, percentile, REPO_ROOT, table, writeResult } from "../lib/report.js";

const SIZES = (argOf("--sizes", "1,10,100,1000") ?? "1").split(",").map(Number);
/** Guest frontends per host process (several per process: 1,000 node processes would not fit). */
const PER_PROCESS = Number(argOf("--per-process", "50"));
const IDLE_HOLD_MS = Number(argOf("--idle-hold-ms", "10000"));
const RATE = Number(argOf("--rate", "2"));
const SECONDS = Number(argOf("--seconds", "20"));
/**
 * --min-events N: a size is measured at least until N events are due (one guest at 0.5 events/s
 * would give 10 in 20 s, and the "p99" of 10 is their maximum). Default 200.
 */
const MIN_EVENTS = Number(argOf("--min-events", "200"));
const windowSeconds = (n: number): number => Math.max(SECONDS, Math.ceil(MIN_EVENTS / (n * RATE)));
const TICK = Number(process.env.SC_CLK_TCK ?? 100);
/** --profile DIR: V8 CPU profiles of vesper-host and of the first frontends process, written on exit. */
const PROFILE_DIR = argOf("--profile", "");
/** --result-name NAME: write bench/results/NAME.md and .svg (default scale), e.g. for a run at another rate. */
const RESULT_NAME = argOf("--result-name", "scale") ?? "scale";
const SOURCE = argOf("--source", "tracepoint");
if (SOURCE !== "uprobe" && SOURCE !== "tracepoint") throw new Error(`--source ${SOURCE}: expected uprobe or tracepoint`);
/** What each guest's probe produces, and the signal that makes its process produce it. */
const EVENT = SOURCE === "uprobe" ? { matches: (name: string) => name.endsWith("/tick"), signal: "SIGUSR1" as const } : { matches: (name: string) => name === "signal/signal_generate", signal: "SIGCONT" as const };
const ARGS = process.argv.slice(2).join(" ");
const profileArgs = (name: string): string[] => (PROFILE_DIR ? ["--cpu-prof", `--cpu-prof-dir=${path.join(PROFILE_DIR, name)}`] : []);

function cpuTicks(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8");
    const rest = f.slice(f.lastIndexOf(")") + 2).split(" ");
    return Number(rest[11]) + Number(rest[12]); // utime + stime
  } catch {
    return 0;
  }
}
/** Whole-machine CPU jiffies (busy, total) from /proc/stat, to show when the 2 cores are saturated. */
function machineTicks(): { busy: number; total: number } {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = cpu.reduce((a, b) => a + b, 0);
  const idle = (cpu[3] ?? 0) + (cpu[4] ?? 0); // idle + iowait
  return { busy: total - idle, total };
}
function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

interface SizeResult {
  n: number;
  events: number;
  evPerS: number;
  hostCpuPct: number;
  /** The part of hostCpuPct that is nats-server (JetStream included). */
  natsCpuPct: number;
  feCpuPct: number;
  /** The bench process itself: the signals it sends and, in the kernel, every instance's filter on each. */
  loadCpuPct: number;
  /** All CPUs busy, % of one CPU (200 = both cores). */
  machineBusyPct: number;
  hostRssMb: number;
  hostRssBaseMb: number;
  feRssMb: number;
  p50: number;
  p99: number;
  missing: number;
}

/**
 * Removes what an earlier, interrupted run of this bench left in tracefs (its frontends were
 * killed before they unloaded): instances vesper_s<i>-s<i> and their uprobes. Left there, every
 * signal would still run their filters and every tracefs open walk them, skewing this run.
 */
function sweepEarlierRuns(what = "an interrupted earlier run left"): void {
  const root = "/sys/kernel/tracing";
  if (!existsSync(path.join(root, "instances"))) return;
  const mine = /^vesper_s\d+-s\d+$/;
  let removed = 0;
  for (const name of readdirSync(path.join(root, "instances")).filter((d) => mine.test(d))) {
    const dir = path.join(root, "instances", name);
    try {
      writeFileSync(path.join(dir, "tracing_on"), "0");
      writeFileSync(path.join(dir, "set_event"), ""); // disables every event of the instance
      rmdirSync(dir);
      removed++;
    } catch (err) {
      // ENOENT: a still-exiting frontend of that run removed it meanwhile.
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") console.warn(`  cannot remove ${dir}: ${(err as Error).message}`);
    }
  }
  const uprobes = path.join(root, "uprobe_events");
  if (existsSync(uprobes)) {
    for (const line of readFileSync(uprobes, "utf8").split("\n")) {
      const ev = /^[pr]:(vesper_s\d+_s\d+\/\S+)/.exec(line)?.[1];
      if (ev === undefined) continue;
      try {
        appendFileSync(uprobes, `-:${ev}\n`);
        removed++;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") console.warn(`  cannot remove uprobe ${ev}: ${(err as Error).message}`);
      }
    }
  }
  if (removed > 0) console.log(`  removed ${removed} tracefs instances and uprobes ${what}`);
}

async function runSize(n: number): Promise<SizeResult> {
  sweepEarlierRuns();
  // The parked processes' binaries: one copy per guest (own comm; for uprobes, own inode).
  const binDir = mkdtempSync("/tmp/vesper-scale-bin-");
  const source = SOURCE === "uprobe" ? buildTick(binDir) : "/bin/sleep";
  const bins: string[] = [];
  const probes: Record<string, object> = {};
  for (let i = 0; i < n; i++) {
    const bin = path.join(binDir, `vsc${i}`);
    copyFileSync(source, bin);
    bins.push(bin);
    probes[`s${i}`] =
      SOURCE === "uprobe"
        ? { description: "bench: this guest's service ticking", uprobes: [{ name: "tick", path: bin, symbol: "vesper_tick" }], delivery: "urgent", bufferKbPerCpu: 64 }
        : {
            description: "bench: signals to this guest's parked process",
            tracepoints: [{ system: "signal", event: "signal_generate", filter: `comm == "vsc${i}"` }],
            delivery: "urgent",
            bufferKbPerCpu: 64,
          };
  }
  // A heartbeat every 10 s at every size: at 2 s (the default) 1,000 guests are 500 heartbeat
  // exchanges a second, which here would also cost the simulated guests' share of the 2 cores.
  const stack = await startStack({ prefix: "vbs", probes, hostArgs: ["--idle-hold-ms", String(IDLE_HOLD_MS)], hostNodeArgs: profileArgs(`host-${n}`) });
  const { client } = stack;
  const natsPid = stack.nats.pid;
  const hostPid = stack.host.pid!;
  const fes: ChildProcess[] = [];
  const targets: ChildProcess[] = [];
  try {
    await sleep(1000);
    const hostRssBaseMb = rssMb(hostPid) + rssMb(natsPid);
    for (const bin of bins) {
      const t = spawn(bin, ["100000"], { stdio: ["ignore", "pipe", "ignore"] });
      targets.push(t);
      // A tick process must have its handler in place before the first SIGUSR1 (else it dies).
      if (SOURCE === "uprobe") {
        await new Promise<void>((resolve, reject) => {
          t.stdout!.once("data", () => {
            t.stdout!.destroy(); // it writes nothing more; 1,000 open pipes would crowd the fd limit
            resolve();
          });
          t.once("exit", (code) => reject(new Error(`${bin} exited with ${code}`)));
        });
      }
    }
    // The frontends, PER_PROCESS to a process (each urgent reader holds a pool thread per CPU).
    for (let first = 0; first < n; first += PER_PROCESS) {
      const count = Math.min(PER_PROCESS, n - first);
      const fe = spawn(process.execPath, [...(first === 0 ? profileArgs(`frontends-${n}`) : []), "--import", "tsx", path.join(REPO_ROOT, "bench/scale/frontends.ts"), stack.nats.url, String(first), String(count)], {
        stdio: ["ignore", "pipe", "inherit"],
        cwd: REPO_ROOT,
        env: { ...process.env, UV_THREADPOOL_SIZE: String(Math.min(1024, count * 2 * os.cpus().length + 16)) },
      });
      fes.push(fe);
      await new Promise<void>((resolve, reject) => {
        fe.stdout!.on("data", (d: Buffer) => d.toString().includes("ready") && resolve());
        fe.once("exit", (code) => reject(new Error(`frontends ${first}..${first + count - 1} exited with ${code}`)));
      });
    }
    // Not ListGuests: with ~60+ host-kernel "guests" its reply (every guest's full tracepoint
    // list) exceeds NATS max_payload. Retry each insmod until its guest has said hello.
    for (let i = 0; i < n; i++) {
      await waitFor(`guest sg${i} online`, async () => {
        try {
          await client.insmod({ guest: `sg${i}`, probe: `s${i}`, options: {} });
          return true;
        } catch (err) {
          if ((err as { code?: string }).code === "UNKNOWN_GUEST") return false;
          throw err;
        }
      }, { timeoutMs: 120_000, intervalMs: 300 });
    }
    console.log(`  ${n} guests online with their probe loaded`);

    const ac = new AbortController();
    const lat: number[] = [];
    let measuring = false;
    let got = 0;
    const stream = client.watch({}, { signal: ac.signal });
    await stream.ready;
    void (async () => {
      try {
        for await (const res of stream) {
          const at = process.hrtime.bigint();
          if (res.kind?.$case !== "event" || !EVENT.matches(res.kind.value.event)) continue;
          if (!measuring) continue;
          got++;
          lat.push(Number(at - res.kind.value.ts) / 1e6);
        }
      } catch {
        /* cancelled */
      }
    })();
    // fire: n*RATE signals per second, round robin
    const interval = 1000 / (n * RATE);
    let next = 0;
    let fired = 0;
    let firing = true;
    const fire = (async () => {
      const t0 = performance.now();
      let k = 0;
      while (firing) {
        const due = t0 + k * interval;
        const wait = due - performance.now();
        if (wait > 1) await sleep(wait);
        targets[next]!.kill(EVENT.signal);
        if (measuring) fired++;
        next = (next + 1) % n;
        k++;
        if (k % 50 === 0) await sleep(0);
      }
    })();
    await sleep(3000); // warm-up
    measuring = true;
    const pids = fes.map((f) => f.pid!);
    const sample = () => ({
      host: cpuTicks(hostPid) + cpuTicks(natsPid),
      nats: cpuTicks(natsPid),
      fe: pids.reduce((s, p) => s + cpuTicks(p), 0),
      load: cpuTicks(process.pid),
      machine: machineTicks(),
      t: performance.now(),
    });
    const c0 = sample();
    await sleep(windowSeconds(n) * 1000);
    const c1 = sample();
    const hostRssMb = rssMb(hostPid) + rssMb(natsPid);
    const feRssMb = pids.reduce((m, p) => m + rssMb(p), 0) / n; // per guest
    firing = false;
    await fire;
    await sleep(1000);
    measuring = false;
    ac.abort();
    const secs = (c1.t - c0.t) / 1000;
    return {
      n,
      events: got,
      evPerS: got / secs,
      hostCpuPct: ((c1.host - c0.host) / TICK / secs) * 100,
      natsCpuPct: ((c1.nats - c0.nats) / TICK / secs) * 100,
      feCpuPct: ((c1.fe - c0.fe) / TICK / secs) * 100,
      loadCpuPct: ((c1.load - c0.load) / TICK / secs) * 100,
      machineBusyPct: ((c1.machine.busy - c0.machine.busy) / (c1.machine.total - c0.machine.total)) * os.cpus().length * 100,
      hostRssMb,
      hostRssBaseMb,
      feRssMb,
      p50: median(lat),
      p99: percentile(lat, 99),
      missing: Math.max(0, fired - got),
    };
  } finally {
    await Promise.all(
      fes.map(
        (f) =>
          new Promise<void>((r) => {
            if (f.exitCode !== null) return r();
            // Unloading 50 probes takes a while on a busy machine; a SIGKILL would leave them in tracefs.
            const t = setTimeout(() => (f.kill("SIGKILL"), r()), 60_000);
            f.once("exit", () => (clearTimeout(t), r()));
            f.kill("SIGTERM");
          }),
      ),
    );
    for (const t of targets) t.kill("SIGKILL");
    // At 1,000 instances in one kernel each removal walks all of them (trace_remove_event_call):
    // frontends still unloading after 60 s were killed. Their leftovers must not load the next size.
    sweepEarlierRuns("the killed frontends had not unloaded");
    await stack.stop();
    rmSync(binDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const results: SizeResult[] = [];
  for (const n of SIZES) {
    console.log(`size ${n}`);
    const r = await runSize(n);
    results.push(r);
    console.log(`  ${r.events} events (${r.evPerS.toFixed(0)}/s), p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms, host services CPU ${r.hostCpuPct.toFixed(1)} % (nats-server ${r.natsCpuPct.toFixed(1)}), frontends ${r.feCpuPct.toFixed(0)} %, load generator ${r.loadCpuPct.toFixed(0)} %, machine ${r.machineBusyPct.toFixed(0)} % of ${os.cpus().length * 100}, RSS ${r.hostRssMb.toFixed(0)} MB`);
  }
  const base = results[0]!;
  const last = results.at(-1)!;
  const head = ["guests", "events/s", "host services CPU %", "of which nats-server %", "CPU % per guest", "host services RSS MB", "RSS growth per guest MB", "frontends CPU % (simulated guests)", "frontend RSS MB per guest", "load generator CPU %", "machine busy % (of 200)", "p50 ms", "p99 ms", "p99 vs 1 guest"];
  const rows = results.map((r) => [
    r.n,
    r.evPerS.toFixed(0),
    r.hostCpuPct.toFixed(1),
    r.natsCpuPct.toFixed(1),
    (r.hostCpuPct / r.n).toFixed(2),
    r.hostRssMb.toFixed(0),
    ((r.hostRssMb - r.hostRssBaseMb) / r.n).toFixed(2),
    r.feCpuPct.toFixed(0),
    r.feRssMb.toFixed(1),
    r.loadCpuPct.toFixed(0),
    r.machineBusyPct.toFixed(0),
    r.p50.toFixed(2),
    r.p99.toFixed(2),
    `${(r.p99 / base.p99).toFixed(2)}× (goal ≤ 2×)`,
  ]);
  console.log(table(head, rows));
  const fitsNote =
    `the frontends run ${PER_PROCESS} to a host process (bench/scale/frontends.ts: the same code as dist/guest-frontend.mjs, one NATS connection, ` +
    "instance prefix and tracefs instance per guest); in production they live inside the guests, so their CPU and memory are not the host services'.";
  const md = [
    "# Host scale (`bench/scale`)",
    "",
    ARGS === "" || ARGS === "--sizes 1,10,100,1000"
      ? "Command: `make bench-scale` (= `node --import tsx bench/scale/run.ts --sizes 1,10,100,1000`)"
      : ARGS === "--sizes 1,10,100,1000 --rate 0.5 --source uprobe --result-name scale-uprobe-rate0.5"
        ? `Command: \`make bench-scale-uprobe\` (= \`node --import tsx bench/scale/run.ts ${ARGS}\`)`
        : `Command: \`node --import tsx bench/scale/run.ts ${ARGS}\``,
    "",
    machineLine(),
    `Each guest = a guest frontend on the host over NATS with its own probe (${SOURCE === "uprobe" ? "a uprobe on vesper_tick in its own copy of bench/load/tick.c, hit by each SIGUSR1 to that process" : "signal_generate filtered on its own parked process"}), firing ${RATE} events/s; ` +
      `${SECONDS} s measured after a 3 s warm-up (longer where fewer than ${MIN_EVENTS} events would be due: ${SIZES.map((n) => `${windowSeconds(n)} s at ${n}`).join(", ")}); one gRPC watcher on all guests; heartbeat (idle hold) every ${IDLE_HOLD_MS / 1000} s. Host services = vesper-host (loader, listener, gateway, bridge in one process) + nats-server (JetStream). ` +
      "The frontends share the same 2 cores (in production they run in the guests), so the latency at 100 includes their CPU contention.",
    "",
    table(head, rows),
    "",
    `- missing events (fired during the window but not seen): ${results.map((r) => `${r.n}: ${r.missing}`).join(", ")}`,
    `- where the ${os.cpus().length * 100} % of this machine went at ${last.n} guests: host services ${last.hostCpuPct.toFixed(0)} % (nats-server ${last.natsCpuPct.toFixed(0)} of it), ` +
      `simulated guests ${last.feCpuPct.toFixed(0)} %, load generator ${last.loadCpuPct.toFixed(0)} % (${SOURCE === "uprobe" ? "its kill()s; the uprobe hits run in the tick processes, counted only in the machine's total" : "its kill() runs every instance's signal_generate filter in this one kernel"}), ` +
      `all busy ${last.machineBusyPct.toFixed(0)} %.`,
    `- ${fitsNote}`,
  ].join("\n");
  writeResult(
    RESULT_NAME,
    md,
    lineChart({
      title: "Host scale over NATS",
      xLabel: "guests (log)",
      yLabel: "ms / % CPU / MB",
      logX: true,
      series: [
        { name: "p99 latency ms", points: results.map((r) => [r.n, r.p99]) },
        { name: "p50 latency ms", points: results.map((r) => [r.n, r.p50]) },
        { name: "host CPU %", points: results.map((r) => [r.n, r.hostCpuPct]) },
        { name: "host RSS MB / 10", points: results.map((r) => [r.n, r.hostRssMb / 10]) },
      ],
    }),
  );
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
