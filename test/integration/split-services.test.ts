/**
 * The host services as separate processes, connected only by NATS: loader,
 * listener and gateway each in their own vesper-host, a guest frontend on this
 * host's kernel, and an event all the way to a gRPC watcher.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { ApiError, VesperApiClient } from "@vesper/cli";
import { ErrorCode } from "@vesper/protocol";
import { HostProcess } from "../harness/host-process.js";
import { waitFor } from "../harness/wait.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const tag = `sp${process.pid}`;
const guest = `split-${tag}`;
const hosts: HostProcess[] = [];
let frontend: ChildProcess | undefined;
let client: VesperApiClient | undefined;

after(async () => {
  frontend?.kill("SIGTERM");
  if (frontend !== undefined && frontend.exitCode === null && frontend.signalCode === null) await new Promise((r) => frontend!.once("exit", r));
  client?.close();
  for (const h of hosts) await h.stop();
});

test("loader, listener and gateway in separate processes serve insmod, events and rmmod", { timeout: 120_000 }, async () => {
  const runDir = mkdtempSync("/tmp/vesper-split-");
  const probeDir = path.join(runDir, "probes");
  mkdirSync(probeDir);
  writeFileSync(path.join(probeDir, "exits.json"), JSON.stringify({ name: "exits", tracepoints: [{ system: "sched", event: "sched_process_exit", filter: 'comm == "sleep"' }] }));
  for (const services of [["listener"], ["loader"], ["gateway"]]) hosts.push(await HostProcess.start({ runDir, probeDir, services }));
  const gateway = hosts[2]!;
  client = new VesperApiClient(gateway.address!, { timeoutMs: 30_000 });
  frontend = spawn(
    process.execPath,
    [path.join(REPO_ROOT, "dist", "guest-frontend.mjs"), "--guest-id", guest, "--transport", "nats", "--instance-prefix", `vesper_${tag}`, "--no-oom-protect"],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
  await waitFor(`${guest} online`, async () => (await client!.listGuests()).find((g) => g.id === guest && g.state === 1), { timeoutMs: 30_000 });
  await client.insmod({ guest, probe: "exits", options: {} });
  const abort = new AbortController();
  const stream = client.watch({ guest, probe: "exits" }, { signal: abort.signal });
  await stream.ready;
  const child = spawn("sleep", ["300"], { stdio: "ignore" });
  await new Promise((r) => child.once("spawn", r));
  child.kill("SIGKILL");
  const timer = setTimeout(() => abort.abort(), 60_000);
  let pid: number | undefined;
  try {
    for await (const r of stream) {
      if (r.kind?.$case === "event" && r.kind.value.pid === child.pid) {
        pid = r.kind.value.pid;
        assert.equal(r.kind.value.comm, "sleep");
        break;
      }
    }
  } finally {
    clearTimeout(timer);
    stream.cancel();
  }
  assert.equal(pid, child.pid);
  // A live watch needs the listener in the gateway's process: this one says so.
  await assert.rejects(
    client.watch({ guest, probe: "exits", live: true }).ready,
    (e: unknown) => e instanceof ApiError && e.code === ErrorCode.Unsupported && /probe-listener in the gateway's process/.test(e.message),
  );
  assert.equal((await client.rmmod({ guest, probe: "exits", flags: 0 })).guestClean, true);
});
