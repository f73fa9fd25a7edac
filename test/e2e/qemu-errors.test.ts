/**
 * What a user sees when a load goes wrong in a real guest kernel (Debian 6.1,
 * kprobes available): a symbol or a filter the kernel refuses comes back with the
 * kernel's own error_log lines, nothing is left behind, a second load of the same
 * probe is refused, a frontend stopped with SIGTERM exits and is replaced, and a guest
 * that went away is reported offline. Also uprobes in
 * that kernel: one on a function of the guest's own (stripped) node binary fires, and
 * a stripped file or a missing one is refused by name.
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
  // node in the guest is stripped: uv_version_string is found in its .dynsym. Every node process
  // calls it once at start (process.versions.uv).
  writeFileSync(
    path.join(probeDir, "nodestart.json"),
    JSON.stringify({ name: "nodestart", uprobes: [{ name: "start", path: "/usr/bin/node", symbol: "uv_version_string", fetchArgs: ["comm=$comm"] }] }),
  );
  writeFileSync(path.join(probeDir, "stripped.json"), JSON.stringify({ name: "stripped", uprobes: [{ name: "main", path: "/bin/busybox", symbol: "main" }] }));
  writeFileSync(path.join(probeDir, "nofile.json"), JSON.stringify({ name: "nofile", uprobes: [{ name: "x", path: "/usr/sbin/no-such-daemon", symbol: "main" }] }));
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
  assert.equal((await guest.exec("cat /sys/kernel/tracing/uprobe_events")).output.trim(), "");
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

test("a uprobe on a function of the guest's stripped node binary fires when a node process starts; rmmod leaves nothing", { timeout: 180_000 }, async () => {
  const loaded = await client.insmod({ guest: guestId, probe: "nodestart", options: {} });
  assert.deepEqual(loaded.events, ["vesper_nodestart/start"]);
  assert.match((await guest.exec("cat /sys/kernel/tracing/uprobe_events")).output, /^p:vesper_nodestart\/start \/usr\/bin\/node:0x[0-9a-f]+ comm=\$comm/m);
  const abort = new AbortController();
  const stream = client.watch({ guest: guestId, probe: "nodestart" }, { signal: abort.signal });
  await stream.ready;
  // Started under another name (comm "vnode"), so its event cannot be the agent's own.
  const run = guest.exec("ln -sf /usr/bin/node /tmp/vnode && /tmp/vnode -e 0; echo status=$?", { timeoutMs: 60_000 });
  let comm: string | undefined;
  const timer = setTimeout(() => abort.abort(), 120_000);
  try {
    for await (const res of stream) {
      if (res.kind?.$case !== "event") continue;
      const f = res.kind.value.fields.comm?.kind;
      if (f?.$case === "str" && f.value === "vnode") {
        comm = f.value;
        break;
      }
    }
  } finally {
    clearTimeout(timer);
    stream.cancel();
  }
  assert.match((await run).output, /status=0/);
  assert.equal(comm, "vnode", "the uprobe fired in the node process started in the guest");
  await client.rmmod({ guest: guestId, probe: "nodestart", flags: 0 });
  await tracefsClean();
});

test("a uprobe on a stripped file without the symbol, or on a missing file, is refused by name and leaves nothing", { timeout: 120_000 }, async () => {
  await assert.rejects(client.insmod({ guest: guestId, probe: "stripped", options: {} }), refused(ErrorCode.KernelRefused, /\/bin\/busybox has no function main .*file offset/));
  await assert.rejects(client.insmod({ guest: guestId, probe: "nofile", options: {} }), refused(ErrorCode.KernelRefused, /no-such-daemon: ENOENT/));
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

test("a frontend stopped with SIGTERM exits although its port read is still in the kernel; the next one is welcomed", { timeout: 180_000 }, async () => {
  const pid = (await guest.exec("cat /run/frontend.pid")).output.trim();
  assert.match(pid, /^\d+$/);
  await guest.exec(`kill -TERM ${pid}`);
  // init.sh logs each exit of the frontend it respawns: 143 = it died of the SIGTERM once it had cleaned up. Before the fix
  // it never exited: its read loop waited for a port read that only the host's next bytes end.
  await waitFor(
    `frontend ${pid} to exit`,
    async () => (await guest.exec(`grep -c 'frontend pid ${pid} exited with status 143' /tmp/frontend.log`)).output.trim() === "1",
    { timeoutMs: 60_000, intervalMs: 500 },
  );
  await waitFor(
    "a new frontend to be welcomed",
    async () => {
      const now = (await guest.exec("cat /run/frontend.pid")).output.trim();
      const g = (await client.listGuests()).find((x) => x.id === guestId);
      return now !== pid && g?.state === 1 ? g : undefined;
    },
    { timeoutMs: 120_000, intervalMs: 500 },
  );
});

test("a guest that is gone is reported offline, and loads into it fail clearly", { timeout: 120_000 }, async () => {
  await guest.stop();
  await waitFor("the guest to be seen offline", async () => (await client.listGuests()).find((g) => g.id === guestId && g.state === 2), { timeoutMs: 60_000, intervalMs: 500 });
  await assert.rejects(client.insmod({ guest: guestId, probe: "process", options: {} }), refused(ErrorCode.GuestOffline, /offline/));
});
