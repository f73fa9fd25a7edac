/**
 * Bench plumbing: a private NATS, the real host services (dist/vesper-host.mjs), optionally a
 * QEMU guest, probe files, and pushing small files (the load generator) into the guest.
 */
import { execFileSync } from "node:child_process";
import { availableParallelism } from "node:os";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { VesperApiClient } from "@vesper/cli";
import { HostProcess } from "../../test/harness/host-process.js";
import { QemuGuest, type QemuGuestOptions } from "../../test/harness/qemu-guest.js";
import { waitFor } from "../../test/harness/wait.js";
import { startNats, type PrivateNats } from "./nats-server.js";
import { REPO_ROOT } from "./report.js";

export interface Stack {
  runDir: string;
  nats: PrivateNats;
  host: HostProcess;
  client: VesperApiClient;
  stop(): Promise<void>;
}

export async function startStack(o: { prefix: string; probes?: Record<string, object>; hostArgs?: string[]; hostNodeArgs?: string[] }): Promise<Stack> {
  const runDir = mkdtempSync(`/tmp/${o.prefix}-`);
  const probeDir = path.join(runDir, "probes");
  mkdirSync(probeDir);
  for (const [name, spec] of Object.entries(o.probes ?? {})) writeFileSync(path.join(probeDir, `${name}.json`), JSON.stringify({ name, ...spec }));
  const nats = await startNats(runDir);
  const host = await HostProcess.start({ runDir, probeDir, extraArgs: ["--nats", nats.url, ...(o.hostArgs ?? [])], nodeArgs: o.hostNodeArgs });
  const client = new VesperApiClient(host.address!, { timeoutMs: 120_000 });
  return {
    runDir,
    nats,
    host,
    client,
    stop: async () => {
      client.close();
      await host.stop();
      await nats.stop();
    },
  };
}

export async function bootGuest(stack: Stack, name: string, extra: Partial<QemuGuestOptions> = {}): Promise<QemuGuest> {
  const guest = await QemuGuest.start({ name, runDir: stack.runDir, ...extra });
  if (extra.frontend !== false) {
    await waitFor(`guest ${name} online`, async () => (await stack.client.listGuests()).find((g) => g.id === name && g.state === 1), {
      timeoutMs: 120_000,
      intervalMs: 200,
    });
  }
  return guest;
}

/**
 * Gives the guest's vCPU thread (QEMU's "CPU 0/TCG") the last host CPU and moves QEMU's
 * other threads (its main loop serves the virtio-serial chardevs), the host services, NATS
 * and this process to the others, as `virsh vcpupin` would: what the host does with the
 * events then does not take the vCPU's core, and the guest measures its own costs, as on a
 * host with cores to spare. Says what it did, for the report (nothing on a one-CPU host);
 * restore() gives every moved process all CPUs again.
 */
export function pinGuestApart(guest: QemuGuest, others: ReadonlyArray<number | undefined>): { note: string; restore(): void } {
  const cpus = availableParallelism();
  const qemu = guest.pid;
  if (cpus < 2 || qemu === undefined) return { note: "guest not pinned (one host CPU)", restore: () => undefined };
  const tasks = readdirSync(`/proc/${qemu}/task`);
  const vcpus = tasks.filter((t) => /^CPU \d+\/TCG/.test(readFileSync(`/proc/${qemu}/task/${t}/comm`, "utf8")));
  if (vcpus.length !== 1) return { note: `guest not pinned (${vcpus.length} vCPU threads found)`, restore: () => undefined };
  const last = String(cpus - 1);
  const rest = cpus === 2 ? "0" : `0-${cpus - 2}`;
  const all = `0-${cpus - 1}`;
  const set = (list: string, pid: number | string, allThreads: boolean): void =>
    void execFileSync("taskset", [...(allThreads ? ["-a"] : []), "-p", "-c", list, String(pid)], { stdio: "ignore" });
  const moved = [...others, process.pid].filter((p): p is number => p !== undefined);
  for (const pid of moved) set(rest, pid, true);
  set(rest, qemu, true);
  set(last, vcpus[0]!, false);
  return {
    note: `the guest's vCPU thread pinned to host CPU ${last}; QEMU's other threads, host services, NATS and the bench to ${rest}`,
    restore: () => {
      for (const pid of moved) {
        try {
          set(all, pid, true);
        } catch {
          /* gone already */
        }
      }
    },
  };
}

/** Compiles bench/load/load.c (static, no libc) with the host's gcc. */
export function buildLoad(runDir: string): string {
  const out = path.join(runDir, "vload");
  execFileSync("gcc", ["-static", "-nostdlib", "-O2", "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none", "-s", "-o", out, path.join(REPO_ROOT, "bench/load/load.c")]);
  return out;
}

/** Compiles bench/load/tick.c (bench/scale's simulated service, whose function each guest's uprobe probes). */
export function buildTick(runDir: string): string {
  const out = path.join(runDir, "vtick");
  execFileSync("gcc", ["-O1", "-o", out, path.join(REPO_ROOT, "bench/load/tick.c")]);
  return out;
}

/** Copies a small host file into the guest through the console (base64 in chunks). */
export async function pushFile(guest: QemuGuest, local: string, remote: string, mode = "755"): Promise<void> {
  const b64 = readFileSync(local).toString("base64");
  await guest.exec(`rm -f ${remote}.b64`);
  for (let i = 0; i < b64.length; i += 900) await guest.exec(`echo -n '${b64.slice(i, i + 900)}' >> ${remote}.b64`);
  const r = await guest.exec(`base64 -d ${remote}.b64 > ${remote} && chmod ${mode} ${remote} && rm ${remote}.b64 && echo ok`);
  if (!r.output.includes("ok")) throw new Error(`pushing ${local} into the guest failed: ${r.output}`);
}

/** Runs `vload <mode> <n>` in the guest; returns ns per operation. */
export async function runLoad(guest: QemuGuest, mode: "syscall" | "fork", n: number): Promise<number> {
  const r = await guest.exec(`/tmp/vload ${mode} ${n}`, { timeoutMs: 600_000 });
  const m = /ns=(\d+) n=(\d+)/.exec(r.output);
  if (!m) throw new Error(`load failed: ${r.output}`);
  return Number(m[1]) / Number(m[2]);
}
