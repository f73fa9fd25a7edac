/**
 * A guest frontend that is stopped (SIGTERM, as at a guest's shutdown) unloads its
 * probes, never says Hello again on the way out, and says Goodbye: the host reports
 * agent/left, not agent/lost, refuses new probes for the guest with a clear error,
 * and when the frontend starts again gives it back the probes the store says it wants.
 * Real host services, real NATS, a real frontend on this host's kernel.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { ApiError, formatGuests, VesperApiClient } from "@vesper/cli";
import { api, ErrorCode } from "@vesper/protocol";
import { HostProcess } from "../harness/host-process.js";
import { waitFor } from "../harness/wait.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const tag = `fs${process.pid}`;
const guest = `stop-${tag}`;
const prefix = `vesper_${tag}`;
const IDLE_HOLD_MS = 500;
const AGENT_LOST_MS = 2_500;

let host: HostProcess;
let client: VesperApiClient;
let frontend: ChildProcess | undefined;
let stderr = "";

function startFrontend(): ChildProcess {
  const fe = spawn(
    process.execPath,
    [path.join(REPO_ROOT, "dist", "guest-frontend.mjs"), "--guest-id", guest, "--transport", "nats", "--instance-prefix", prefix, "--no-oom-protect"],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, VESPER_LOG_LEVEL: "info" } },
  );
  fe.stderr!.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  return fe;
}

const ours = (): string[] => readdirSync("/sys/kernel/tracing/instances").filter((d) => d.startsWith(prefix));

before(async () => {
  const runDir = mkdtempSync("/tmp/vesper-fs-");
  const probeDir = path.join(runDir, "probes");
  mkdirSync(probeDir);
  writeFileSync(
    path.join(probeDir, "sleeps.json"),
    JSON.stringify({ name: "sleeps", tracepoints: [{ system: "sched", event: "sched_process_exit", filter: 'comm == "sleep"' }], delivery: "urgent" }),
  );
  host = await HostProcess.start({
    runDir,
    probeDir,
    services: ["loader", "listener", "gateway"],
    extraArgs: ["--idle-hold-ms", String(IDLE_HOLD_MS), "--agent-lost-ms", String(AGENT_LOST_MS)],
  });
  client = new VesperApiClient(host.address!, { timeoutMs: 30_000 });
});

after(async () => {
  if (frontend !== undefined && frontend.exitCode === null && frontend.signalCode === null) {
    frontend.kill("SIGTERM");
    await new Promise((r) => frontend!.once("exit", r));
  }
  client?.close();
  await host?.stop();
});

const online = async (): Promise<boolean> => (await client.listGuests()).some((g) => g.id === guest && g.state === 1);

/**
 * Waits for a sleep's exit from `guest` at a watcher: the probe is loaded and read. A new
 * sleep every half second until one is seen: a probe being reloaded may not have its
 * event enabled yet when the first one exits.
 */
async function seesASleepExit(): Promise<void> {
  const abort = new AbortController();
  const stream = client.watch({ guest, probe: "sleeps" }, { signal: abort.signal });
  await stream.ready;
  const pids = new Set<number>();
  const spawnOne = (): void => {
    const child = spawn("sleep", ["0.01"], { stdio: "ignore" });
    if (child.pid !== undefined) pids.add(child.pid);
  };
  spawnOne();
  const again = setInterval(spawnOne, 500);
  const timer = setTimeout(() => abort.abort(), 60_000);
  try {
    for await (const res of stream) {
      if (res.kind?.$case === "event" && pids.has(res.kind.value.pid)) return;
    }
  } finally {
    clearInterval(again);
    clearTimeout(timer);
    stream.cancel();
  }
  assert.fail(`no exit of ${pids.size} sleeps within 60 s`);
}

test("a stopped frontend says goodbye: agent/left, no agent/lost, a clear refusal, its probes back when it returns", { timeout: 180_000 }, async () => {
  frontend = startFrontend();
  await waitFor(`frontend ${guest} online`, online, { timeoutMs: 30_000 });
  await client.insmod({ guest, probe: "sleeps", options: {} });
  await seesASleepExit();
  assert.equal(ours().length, 1);

  // The agent's liveness events, as a cluster manager would watch them.
  const agentEvents: api.Event[] = [];
  const abort = new AbortController();
  const watch = client.watch({ guest, probe: "agent" }, { signal: abort.signal });
  await watch.ready;
  void (async () => {
    try {
      for await (const res of watch) if (res.kind?.$case === "event") agentEvents.push(res.kind.value);
    } catch {
      /* cancelled */
    }
  })();

  const fe = frontend;
  const stopAt = Date.now();
  fe.kill("SIGTERM");
  await new Promise((r) => fe.once("exit", r));
  assert.deepEqual(ours(), [], "the frontend unloaded its probe");

  const left = await waitFor("agent/left", () => agentEvents.find((e) => e.event === "agent/left"), { timeoutMs: 30_000 });
  assert.equal(left.fields.reason?.kind?.$case === "str" && left.fields.reason.kind.value, "SIGTERM");
  assert.equal(left.fields.probes_kept?.kind?.$case === "int" && left.fields.probes_kept.kind.value, 0n);
  const listed = (await client.listGuests()).find((g) => g.id === guest)!;
  assert.equal(listed.state, api.GuestState.GUEST_STATE_STOPPED, "stopped at once, not offline after the offline timeout");
  assert.equal(listed.stoppedReason, "SIGTERM");
  assert.deepEqual(listed.loadedProbes, [], "it unloaded them");
  assert.match(formatGuests([listed]), new RegExp(`${guest}\\s+stopped \\(SIGTERM\\)`), "`vesper guests` says so");

  const refused = await client.insmod({ guest, probe: "sleeps", options: {} }).then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(refused instanceof ApiError && refused.code === ErrorCode.GuestOffline, `insmod refused as offline, got ${String(refused)}`);
  assert.match(refused.message, /frontend stopped .*SIGTERM/);

  // Silence after a goodbye is no loss: past the loss limit (plus the loader's check period), nothing.
  await waitFor("the agent-lost limit to pass twice", () => Date.now() - stopAt > 2 * AGENT_LOST_MS + 2 * IDLE_HOLD_MS, { timeoutMs: 30_000, intervalMs: 100 });
  assert.deepEqual(
    agentEvents.map((e) => e.event),
    ["agent/left"],
    "only agent/left: no agent/lost after a goodbye",
  );
  // On its way out the frontend never started over (a Hello then would have had the host load its probes again).
  assert.doesNotMatch(stderr, /saying hello again/);

  // Back: the loader gives it the probe the store still wants, and it is read again.
  frontend = startFrontend();
  await waitFor(`frontend ${guest} online again`, online, { timeoutMs: 30_000 });
  await waitFor("the probe reloaded", async () => ours().length === 1 && (await client.listGuests()).find((g) => g.id === guest)?.loadedProbes.includes("sleeps"), { timeoutMs: 30_000 });
  await seesASleepExit();
  assert.deepEqual(agentEvents.map((e) => e.event), ["agent/left"], "a return after a goodbye is no agent/back");
  abort.abort();
  await client.rmmod({ guest, probe: "sleeps", flags: 0 });
  assert.deepEqual(ours(), []);
});
