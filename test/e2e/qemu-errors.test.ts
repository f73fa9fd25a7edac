/**
 * What a user sees when a load goes wrong in a real guest kernel (Debian 6.1,
 * kprobes available): a symbol or a filter the kernel refuses comes back with the
 * kernel's own error_log lines, nothing is left behind, a second load of the same
 * probe is refused, and a guest that went away is reported offline.
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { ApiError, VesperApiClient } from "@vesper/cli";
import { ErrorCode } from "@vesper/protocol";
import { HostProcess } from "../harness/host-process.js";
import { QemuGuest } from "../harness/qemu-guest.js";
import { waitFor } from "../harness/wait.js";

const guestId = `err${process.pid}`;
let host: HostProcess;
let guest: QemuGuest;
let client: VesperApiClient;

before(async () => {
  const runDir = mkdtempSync("/tmp/vesper-e2e-");
  const probeDir = path.join(runDir, "probes");
  mkdirSync(probeDir);
  writeFileSync(path.join(probeDir, "badsym.json"), JSON.stringify({ name: "badsym", kprobes: [{ name: "x", symbol: "no_such_kernel_function", fetchArgs: ["a=%di:u64"] }] }));
  writeFileSync(path.join(probeDir, "badfilter.json"), JSON.stringify({ name: "badfilter", tracepoints: [{ system: "sched", event: "sched_process_exit", filter: "no_such_field == 1" }] }));
  writeFileSync(path.join(probeDir, "notp.json"), JSON.stringify({ name: "notp", tracepoints: [{ system: "sched", event: "no_such_event" }] }));
  host = await HostProcess.start({ runDir, probeDir });
  client = new VesperApiClient(host.address!, { timeoutMs: 60_000 });
  guest = await QemuGuest.start({ name: guestId, runDir });
  await waitFor(`guest ${guestId} online`, async () => (await client.listGuests()).find((g) => g.id === guestId && g.state === 1), { timeoutMs: 120_000, intervalMs: 250 });
});

after(async () => {
  client?.close();
  await guest?.stop();
  await host?.stop();
});

async function tracefsClean(): Promise<void> {
  assert.equal((await guest.exec("ls /sys/kernel/tracing/instances")).output.trim(), "");
  assert.equal((await guest.exec("cat /sys/kernel/tracing/kprobe_events")).output.trim(), "");
}

const refused = (code: ErrorCode, re: RegExp) => (err: unknown) => {
  assert.ok(err instanceof ApiError, String(err));
  assert.equal(err.code, code, err.message);
  assert.match([err.message, ...err.details].join("\n"), re);
  return true;
};

test("an unknown kernel symbol is refused by the guest kernel, with its error_log", { timeout: 120_000 }, async () => {
  await assert.rejects(client.insmod({ guest: guestId, probe: "badsym", options: {} }), refused(ErrorCode.KernelRefused, /no_such_kernel_function/));
  await tracefsClean();
});

test("a filter on a field the event lacks is refused, with the kernel's reason", { timeout: 120_000 }, async () => {
  await assert.rejects(client.insmod({ guest: guestId, probe: "badfilter", options: {} }), refused(ErrorCode.KernelRefused, /Field not found|no_such_field/i));
  await tracefsClean();
});

test("a tracepoint the kernel lacks is named", { timeout: 120_000 }, async () => {
  await assert.rejects(client.insmod({ guest: guestId, probe: "notp", options: {} }), refused(ErrorCode.Unsupported, /no_such_event/));
  await tracefsClean();
});

test("loading a probe twice is refused; rmmod then leaves nothing", { timeout: 120_000 }, async () => {
  await client.insmod({ guest: guestId, probe: "process", options: { delivery: "bulk" } });
  await assert.rejects(client.insmod({ guest: guestId, probe: "process", options: {} }), refused(ErrorCode.ProbeAlreadyLoaded, /already loaded/));
  const g = (await client.listGuests()).find((x) => x.id === guestId)!;
  assert.ok(g.loadedProbes.includes("process"));
  assert.match((await guest.exec("cat /sys/kernel/tracing/kprobe_events")).output, /vesper_process\/exit do_exit/);
  await client.rmmod({ guest: guestId, probe: "process", flags: 0 });
  await tracefsClean();
});

test("a guest that is gone is reported offline, and loads into it fail clearly", { timeout: 120_000 }, async () => {
  await guest.stop();
  await waitFor("the guest to be seen offline", async () => (await client.listGuests()).find((g) => g.id === guestId && g.state === 2), { timeoutMs: 60_000, intervalMs: 500 });
  await assert.rejects(client.insmod({ guest: guestId, probe: "process", options: {} }), refused(ErrorCode.GuestOffline, /offline/));
});
