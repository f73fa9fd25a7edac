/**
 * Nothing lost when the Communication layer or the guest frontend dies, in a real
 * QEMU guest over virtio-serial. The guest runs a fixed number of short-lived
 * children (/bin/true) while the QEMU bridge (its own vesper-host process) is
 * killed with SIGKILL and started again, and then the guest frontend itself is
 * killed with SIGKILL inside the guest (its init respawns it; the new one adopts
 * the probe from its spool). Every child's exit must reach the gRPC watcher
 * exactly once, or be counted by a loss record: the kernel's own, or read_lost for a
 * page the killed frontend had read and not spooled.
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { VesperApiClient } from "@vesper/cli";
import type { api } from "@vesper/protocol";
import { HostProcess } from "../harness/host-process.js";
import { QemuGuest } from "../harness/qemu-guest.js";
import { waitFor } from "../harness/wait.js";

const say = (s: string): void => void process.stderr.write(`# ${s}\n`);
const CHILDREN = 300;

test("a killed QEMU bridge and a killed guest frontend lose no event", { timeout: 600_000 }, async () => {
  const runDir = mkdtempSync("/tmp/vesper-bridge-restart-");
  const name = `br${process.pid}`;
  const probeDir = path.join(runDir, "probes");
  mkdirSync(probeDir);
  writeFileSync(
    path.join(probeDir, "trueexits.json"),
    JSON.stringify({
      name: "trueexits",
      description: "exits of /bin/true",
      tracepoints: [{ system: "sched", event: "sched_process_exit", filter: 'comm == "true"' }],
      delivery: "urgent",
    }),
  );
  const common = ["--idle-hold-ms", "1000"];
  const core = await HostProcess.start({ runDir, probeDir, services: ["loader", "listener", "gateway"], extraArgs: common });
  let bridge = await HostProcess.start({ runDir, services: ["bridge"], extraArgs: common });
  const client = new VesperApiClient(core.address!, { timeoutMs: 60_000 });
  const abort = new AbortController();
  let guest: QemuGuest | undefined;
  try {
    guest = await QemuGuest.start({ name, runDir });
    await waitFor(`guest ${name} online`, async () => (await client.listGuests()).find((g) => g.id === name && g.state === 1), {
      timeoutMs: 120_000,
      intervalMs: 250,
    });
    const exits = new Map<number, number>(); // pid -> times seen
    const exitTs: number[] = []; // guest trace clock, ns
    const losses: api.Loss[] = [];
    const stream = client.watch({ guest: name, probe: "trueexits" }, { signal: abort.signal });
    await stream.ready;
    void (async () => {
      try {
        for await (const r of stream) {
          if (r.kind?.$case === "event" && r.kind.value.comm === "true") {
            exits.set(r.kind.value.pid, (exits.get(r.kind.value.pid) ?? 0) + 1);
            exitTs.push(Number(r.kind.value.ts));
          }
          else if (r.kind?.$case === "loss") losses.push(r.kind.value);
        }
      } catch {
        /* cancelled at the end */
      }
    })();
    await client.insmod({ guest: name, probe: "trueexits", options: {} });

    // The load: CHILDREN runs of /bin/true, about 20 a second, counted in the guest.
    await guest.exec(
      `( i=0; while [ $i -lt ${CHILDREN} ]; do /bin/true; i=$((i+1)); echo $i > /run/load.count; usleep 50000; done; echo done > /run/load.done ) </dev/null >/dev/null 2>&1 &`,
    );
    const count = async (): Promise<number> => Number((await guest!.exec("cat /run/load.count 2>/dev/null || echo 0")).output.trim()) || 0;
    await waitFor("the first exits", () => exits.size >= 20, { timeoutMs: 60_000 });

    // The bridge: every frame in flight in its socket or its memory is gone.
    await bridge.stop("SIGKILL");
    const atKill = await count();
    await new Promise((r) => setTimeout(r, 1_500));
    bridge = await HostProcess.start({ runDir, services: ["bridge"], extraArgs: common });
    const seenAtRestart = exits.size;
    await waitFor("exits after the bridge restart", () => exits.size >= seenAtRestart + 20, { timeoutMs: 120_000 });
    say(`bridge killed after ${atKill} children; ${exits.size} exits seen after its restart`);

    // The frontend inside the guest: pages it had read and not had acknowledged are in its spool.
    const before = exits.size;
    // The guest's clock at the kill (/proc/uptime: CLOCK_BOOTTIME, the trace clock's without a suspend).
    const killed = await guest.exec("cut -d' ' -f1 /proc/uptime; kill -9 $(cat /run/frontend.pid) && echo killed");
    assert.match(killed.output, /killed/);
    const killAtNs = Number(killed.output.trim().split("\n")[0]) * 1e9;
    await waitFor("exits from the respawned frontend", () => exits.size >= before + 20, { timeoutMs: 120_000 });
    const log = (await guest.exec("grep -c 'resumed a probe from its spool' /tmp/frontend.log || true")).output.trim();
    assert.equal(log, "1", "the respawned frontend resumed the probe from its spool");

    await waitFor("the load to finish", async () => (await guest!.exec("cat /run/load.done 2>/dev/null || true")).output.includes("done"), {
      timeoutMs: 240_000,
      intervalMs: 1_000,
    });
    const kernelLost = (): number => losses.reduce((n, l) => n + Number(l.kernelLost), 0);
    const readLost = (): number => losses.reduce((n, l) => n + Number(l.readLost), 0);
    await waitFor(`all ${CHILDREN} exits`, () => exits.size + kernelLost() + readLost() >= CHILDREN, { timeoutMs: 60_000 }).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 1_000));
    const dups = [...exits].filter(([, n]) => n > 1);
    const pagesLost = losses.reduce((n, l) => n + Number(l.pagesLost), 0);
    say(`${CHILDREN} children, ${exits.size} exits seen, ${dups.length} twice, kernel-reported lost ${kernelLost()}, pages lost ${pagesLost}, read and never delivered ${readLost()}`);
    assert.deepEqual(dups, [], "no exit arrives twice");
    assert.equal(pagesLost, 0, "no page went missing between guest and host");
    const missing = CHILDREN - exits.size - kernelLost();
    if (missing > 0) {
      // A page the frontend read just before its SIGKILL and never spooled: the listener's read
      // check says so (read_lost). Where it fell: the exits seen leave a hole at the kill.
      const ts = exitTs.sort((a, b) => a - b);
      const hole = ts.findIndex((t, i) => i > 0 && ts[i - 1]! <= killAtNs && t > killAtNs);
      const from = hole > 0 ? ts[hole - 1]! : -Infinity;
      say(`${missing} exit(s) missing; the seen exits around the frontend's kill leave a hole from ${((from - killAtNs) / 1e6).toFixed(0)} ms before it`);
    }
    assert.equal(missing, readLost(), "every exit arrived, or a loss record counts it");
    const info = (await client.listGuests()).find((g) => g.id === name)!;
    assert.ok(info.loadedProbes.includes("trueexits"), "the probe stayed loaded");
    assert.ok((info.drops?.readChecks ?? 0n) > 0n, "the listener compared the guest's read checks with what arrived");
  } finally {
    abort.abort();
    client.close();
    await guest?.stop();
    await bridge.stop();
    await core.stop();
  }
});
