/**
 * End to end in a real QEMU guest: the probe groups load into the Debian 6.1
 * guest kernel (their tracepoints and kprobe symbols exist), `network` sees
 * httpd's listening socket on port 80 close when httpd is killed, `kernel` sees
 * a lockup report, a group needing what the kernel lacks fails with a message
 * naming it at the CLI, and host-side signals need no guest: a guest panic
 * (`echo c > /proc/sysrq-trigger`, pvpanic) reaches a WatchEvents client as
 * qmp/GUEST_PANICKED (probe vmm), followed by agent/lost (probe agent).
 *
 * QEMU serves one QMP client per monitor and the harness holds
 * <run>/qmp/<guest>.qmp, so the guest gets a second monitor for Vesper at
 * <run>/vmm/<guest>.qmp, the bridge's default QMP directory (<socket dir>/../vmm).
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { main, VesperApiClient } from "@vesper/cli";
import type { api } from "@vesper/protocol";
import { HostProcess } from "../harness/host-process.js";
import { QemuGuest } from "../harness/qemu-guest.js";
import { waitFor } from "../harness/wait.js";

const say = (s: string): void => void process.stderr.write(`# ${s.replaceAll("\n", "\n# ")}\n`);

function intField(ev: api.Event, name: string): bigint | undefined {
  const k = ev.fields[name]?.kind;
  return k?.$case === "int" || k?.$case === "uint" ? k.value : undefined;
}

function strField(ev: api.Event, name: string): string | undefined {
  const k = ev.fields[name]?.kind;
  return k?.$case === "str" ? k.value : undefined;
}

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await main(args, {
    stdout: { write: (s: string) => ((out += s), true) },
    stderr: { write: (s: string) => ((err += s), true) },
    env: {},
  });
  return { code, out, err };
}

test("probe groups in a QEMU guest, and VMM/agent events when the guest panics", { timeout: 600_000 }, async () => {
  const runDir = mkdtempSync("/tmp/vesper-vmm-");
  const name = `vmm${process.pid}`;
  const vmmDir = path.join(runDir, "vmm");
  mkdirSync(vmmDir, { recursive: true });
  const probeDir = path.join(runDir, "probes");
  mkdirSync(probeDir);
  writeFileSync(
    path.join(probeDir, "needsmissing.json"),
    JSON.stringify({ name: "needsmissing", description: "needs a tracepoint no kernel has", tracepoints: [{ system: "nosuch", event: "event" }], delivery: "urgent" }),
  );
  const host = await HostProcess.start({
    runDir,
    probeDir,
    extraArgs: ["--idle-hold-ms", "1000", "--agent-lost-ms", "6000"],
  });
  const addr = host.address!;
  const client = new VesperApiClient(addr, { timeoutMs: 60_000 });
  let guest: QemuGuest | undefined;
  const abort = new AbortController();
  try {
    guest = await QemuGuest.start({
      name,
      runDir,
      services: ["httpd"],
      extraArgs: ["-qmp", `unix:${path.join(vmmDir, `${name}.qmp`)},server=on,wait=off`],
    });
    await waitFor(`guest ${name} online`, async () => (await client.listGuests()).find((g) => g.id === name && g.state === 1), {
      timeoutMs: 120_000,
      intervalMs: 250,
    });

    // Every event of this guest, from here on.
    const events: api.Event[] = [];
    const stream = client.watch({ guest: name }, { signal: abort.signal });
    await stream.ready;
    void (async () => {
      try {
        for await (const r of stream) if (r.kind?.$case === "event") events.push(r.kind.value);
      } catch {
        /* cancelled at the end */
      }
    })();
    const find = (pred: (e: api.Event) => boolean) => () => events.find(pred);

    // --describe documents the events and their fields.
    const d = await cli(["--addr", addr, "probes", "--describe", "memory"]);
    assert.equal(d.code, 0, d.err);
    assert.match(d.out, /oom\/mark_victim/);
    assert.match(d.out, /anon_rss: /);
    assert.match(d.out, /kprobe on oom_kill_process/);

    // A group needing a tracepoint the kernel lacks: a clear message naming it, at the CLI.
    const bad = await cli(["--addr", addr, "insmod", name, "needsmissing"]);
    assert.equal(bad.code, 1);
    assert.match(bad.err, /cannot load probe needsmissing: its kernel lacks tracepoint nosuch:event \(UNSUPPORTED\)/);
    say(`insmod needsmissing -> ${bad.err.trim()}`);

    // Every group loads in the guest kernel (tracepoints exist, kprobe symbols resolve, filters parse).
    for (const probe of ["memory", "storage", "kernel", "network"]) {
      const r = await cli(["--addr", addr, "insmod", name, probe]);
      assert.equal(r.code, 0, `insmod ${probe}: ${r.err}`);
      say(r.out.trim());
    }

    // kernel: a lockup report on the console.
    await guest.exec(`echo "watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [fake:1]" > /dev/kmsg`);
    const lockup = await waitFor("the soft lockup report", find((e) => e.event === "printk/console" && e.probe === "kernel"), { timeoutMs: 60_000 });
    assert.match(strField(lockup, "msg") ?? "", /soft lockup/);

    // network: httpd killed -> its listening socket on port 80 closes.
    const pid = Number((await guest.exec("pidof httpd")).output.trim().split(/\s+/)[0]);
    assert.ok(pid > 0, "httpd runs in the guest");
    await guest.exec(`kill -9 ${pid}`);
    const closed = await waitFor(
      "inet_sock_set_state of port 80",
      find((e) => e.probe === "network" && e.event === "sock/inet_sock_set_state" && intField(e, "sport") === 80n),
      { timeoutMs: 60_000 },
    );
    assert.equal(intField(closed, "oldstate"), 10n, "it was listening");
    const stop = await waitFor(
      "listen_close of port 80",
      find((e) => e.event === "vesper_network/listen_close" && intField(e, "port") === 80n),
      { timeoutMs: 60_000 },
    );
    assert.equal(stop.pid, pid, "closed by httpd itself, as it died");
    assert.equal(stop.comm, "httpd");
    say(`listening socket closed: port=80 pid=${stop.pid} comm=${stop.comm}`);
    // network: an interface set down.
    await guest.exec("ip link set lo down");
    const down = await waitFor("iface_down of lo", find((e) => e.event === "vesper_network/iface_down"), { timeoutMs: 60_000 });
    assert.equal(strField(down, "dev"), "lo");

    for (const probe of ["memory", "storage", "kernel", "network"]) {
      const r = await cli(["--addr", addr, "rmmod", name, probe]);
      assert.equal(r.code, 0, `rmmod ${probe}: ${r.err}`);
    }

    // The guest panics: QEMU (pvpanic) says so over QMP; then the frontend falls silent.
    await waitFor("the bridge's QMP connection", () => readFileSync(host.logFile, "utf8").includes("QMP connected"), { timeoutMs: 30_000 });
    const panicAt = Date.now();
    guest.exec("echo c > /proc/sysrq-trigger", { timeoutMs: 3_000 }).catch(() => undefined);
    const panicked = await waitFor("qmp/GUEST_PANICKED", find((e) => e.probe === "vmm" && e.event === "qmp/GUEST_PANICKED"), {
      timeoutMs: 60_000,
    });
    say(`vmm event ${panicked.event} action=${strField(panicked, "action")} after ${Date.now() - panicAt} ms`);
    assert.equal(panicked.guest, name);
    assert.ok(panicked.ts > 0n && panicked.receivedUnixNs > 0n);
    const lost = await waitFor("agent/lost", find((e) => e.probe === "agent" && e.event === "agent/lost" && e.receivedUnixNs > BigInt(panicAt) * 1_000_000n), {
      timeoutMs: 60_000,
    });
    assert.ok((intField(lost, "silent_ms") ?? 0n) >= 6_000n);
    say(`agent/lost after ${Date.now() - panicAt} ms (silent_ms=${intField(lost, "silent_ms")})`);
    assert.ok(events.indexOf(panicked) < events.indexOf(lost), "the panic is reported before the agent loss");
    // With panic=1 and -no-reboot QEMU then exits; the bridge sees its monitor close.
    await waitFor("qmp/QEMU_EXITED", find((e) => e.event === "qmp/QEMU_EXITED"), { timeoutMs: 60_000 });
  } finally {
    abort.abort();
    client.close();
    await guest?.stop();
    await host.stop();
  }
});
