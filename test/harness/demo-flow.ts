/**
 * The main job, shared by `make demo` and the end-to-end test: boot a real QEMU
 * guest running busybox httpd, load the `process` probe from the host through the
 * `vesper` CLI, kill httpd inside the guest, and catch its exit at a gRPC
 * WatchEvents client; then unload and check that nothing of Vesper is left in the
 * guest's tracefs.
 */
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { VesperApiClient, eventToJson } from "@vesper/cli";
import type { api } from "@vesper/protocol";
import { HostProcess } from "./host-process.js";
import { QemuGuest } from "./qemu-guest.js";
import { waitFor } from "./wait.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const CLI = path.join(REPO_ROOT, "dist", "vesper.mjs");
const run = promisify(execFile);

export interface DemoOptions {
  guest: string;
  runDir: string;
  say?: (line: string) => void;
}

export interface DemoResult {
  httpdPid: number;
  /** The kprobe event with exit code and signal. */
  exitEvent: api.Event;
  /** The sched_process_exit tracepoint event of the same task. */
  schedExit: api.Event | undefined;
  /** From the kill in the guest to the event at the watcher: guest timestamp put on the host clock (± rtt/2). */
  killToWatcherMs: number | undefined;
  clockUncertaintyMs: number | undefined;
  /** From writing the kill command to the guest console to the event at the watcher (upper bound). */
  commandToWatcherMs: number;
  /** tracefs state after rmmod. */
  instancesAfter: string;
  kprobesAfter: string;
  cliOutput: string[];
}

export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const say = o.say ?? (() => {});
  const cliOutput: string[] = [];
  say(`starting host services (logs in ${o.runDir})`);
  const host = await HostProcess.start({ runDir: o.runDir });
  let guest: QemuGuest | undefined;
  const client = new VesperApiClient(host.address!, { timeoutMs: 60_000 });
  const cli = async (...args: string[]): Promise<string> => {
    const { stdout } = await run(process.execPath, [CLI, "--addr", host.address!, ...args], { timeout: 90_000 });
    cliOutput.push(`$ vesper ${args.join(" ")}\n${stdout}`);
    say(`$ vesper ${args.join(" ")}\n${stdout.trimEnd()}`);
    return stdout;
  };
  try {
    say(`booting guest ${o.guest} under QEMU (TCG) with busybox httpd`);
    const t0 = Date.now();
    guest = await QemuGuest.start({ name: o.guest, runDir: o.runDir, services: ["httpd"] });
    say(`guest console answered after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const g = await waitFor(
      `guest ${o.guest} to say hello to the host`,
      async () => (await client.listGuests()).find((x) => x.id === o.guest && x.state === 1),
      { timeoutMs: 120_000, intervalMs: 250 },
    );
    say(`guest ${o.guest} online: kernel ${g.kernelRelease}, kprobes=${g.capabilities?.kprobes}`);
    await cli("guests");
    // A probe left by an earlier, interrupted run is reloaded by the host when the guest says hello;
    // start from a clean slate.
    await client.rmmod({ guest: o.guest, probe: "process", flags: 1 }).catch((err: unknown) => {
      if ((err as { code?: string }).code !== "PROBE_NOT_LOADED") throw err;
    });
    await cli("insmod", o.guest, "process");

    const abort = new AbortController();
    const stream = client.watch({ guest: o.guest, probe: "process" }, { signal: abort.signal });
    await stream.ready;
    const pidOut = await guest.exec("pidof httpd");
    const httpdPid = Number(pidOut.output.trim().split(/\s+/)[0]);
    if (!Number.isInteger(httpdPid) || httpdPid <= 0) throw new Error(`httpd is not running in the guest: ${pidOut.output}`);
    // Clock offset from the loader's heartbeat, to put the guest's event timestamp on our clock.
    const withClock = await waitFor(
      "a heartbeat clock estimate",
      async () => (await client.listGuests()).find((x) => x.id === o.guest && x.pingRttUs > 0),
      { timeoutMs: 30_000, intervalMs: 250 },
    );
    say(`killing httpd (pid ${httpdPid}) inside the guest with SIGKILL`);
    const killSentAt = Date.now();
    const killing = guest.exec(`kill -9 ${httpdPid}`);
    let exitEvent: api.Event | undefined;
    let schedExit: api.Event | undefined;
    let exitSeenAt = 0;
    const timer = setTimeout(() => abort.abort(), 60_000);
    try {
      for await (const res of stream) {
        if (res.kind?.$case !== "event") continue;
        const ev = res.kind.value;
        if (ev.pid !== httpdPid) continue;
        if (ev.event.endsWith("/exit") && exitEvent === undefined) {
          exitEvent = ev;
          exitSeenAt = Date.now();
          say(`event at the watcher:\n${JSON.stringify(eventToJson(res))}`);
        } else if (ev.event === "sched/sched_process_exit" && schedExit === undefined) {
          schedExit = ev;
          say(`event at the watcher:\n${JSON.stringify(eventToJson(res))}`);
        }
        if (exitEvent !== undefined && schedExit !== undefined) break;
      }
    } finally {
      clearTimeout(timer);
      stream.cancel();
    }
    await killing;
    if (exitEvent === undefined) throw new Error(`no exit event for httpd (pid ${httpdPid}) reached the watcher within 60 s`);
    let killToWatcherMs: number | undefined;
    let clockUncertaintyMs: number | undefined;
    if (withClock.clockOffsetNs !== 0n) {
      const eventOnHostNs = exitEvent.ts - withClock.clockOffsetNs;
      killToWatcherMs = (exitSeenAt * 1e6 - Number(eventOnHostNs)) / 1e6;
      clockUncertaintyMs = withClock.pingRttUs / 2000;
    }
    const commandToWatcherMs = exitSeenAt - killSentAt;
    say(
      `kill -> event at the gRPC watcher: ${killToWatcherMs === undefined ? "n/a" : `${killToWatcherMs.toFixed(1)} ms (guest clock, ±${clockUncertaintyMs!.toFixed(1)} ms)`}; ` +
        `console command -> watcher: ${commandToWatcherMs} ms (includes the serial console)`,
    );

    await cli("rmmod", o.guest, "process");
    const instancesAfter = (await guest.exec("ls /sys/kernel/tracing/instances")).output.trim();
    const kprobesAfter = (await guest.exec("cat /sys/kernel/tracing/kprobe_events")).output.trim();
    say(`guest tracefs after rmmod: instances=[${instancesAfter}] kprobe_events=[${kprobesAfter}]`);
    return {
      httpdPid,
      exitEvent,
      schedExit,
      killToWatcherMs,
      clockUncertaintyMs,
      commandToWatcherMs,
      instancesAfter,
      kprobesAfter,
      cliOutput,
    };
  } finally {
    client.close();
    await guest?.stop();
    await host.stop();
  }
}
