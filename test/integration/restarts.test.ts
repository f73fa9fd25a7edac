/**
 * Nothing lost across restarts. A real guest frontend on this host's kernel (NATS
 * transport, tracepoint probe) reports a steady stream of child exits while each
 * part is killed outright (SIGKILL) and started again, one at a time: the
 * probe-loader, the gateway, the probe-listener, the NATS server itself and the
 * guest frontend (the bridge's turn is in test/e2e/bridge-restart.test.ts: it
 * needs a QEMU guest). Each host service runs in its own process (`--services X`)
 * on a private nats-server. A durable JetStream consumer must see every child's
 * exit exactly once, and the probe must stay loaded throughout. An exit may be
 * missing only if a loss record counts it: a frontend SIGKILLed between a page's
 * read() and its spool write takes that page with it, and the listener reports its
 * events as read_lost (README, "Nothing lost"; test/integration/read-loss.test.ts
 * makes that happen on purpose).
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, it } from "node:test";
import { fileURLToPath } from "node:url";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, nanos, type NatsConnection } from "@nats-io/transport-node";
import { VesperApiClient } from "@vesper/cli";
import { ensureEventsStream } from "@vesper/host-common";
import { api, createLogger, EVENTS_STREAM, subjects } from "@vesper/protocol";
import { HostProcess } from "../harness/host-process.js";
import { PrivateNats } from "../harness/private-nats.js";
import { waitFor } from "../harness/wait.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const tag = `rs${process.pid}`;
const GUEST = `restart-${tag}`;

let nats: PrivateNats;
let nc: NatsConnection;
let runDir: string;
let probeDir: string;
const hosts = new Map<string, HostProcess>();
let frontend: ChildProcess;
let spoolDir: string;
let generator: NodeJS.Timeout | undefined;
const spawned = new Set<number>();
/** When each child was spawned, and when each restart began: a missing exit says where it fell. */
const spawnedAt = new Map<number, number>();
const phases: Array<{ what: string; at: number }> = [];
// pid -> stream sequences its exit was stored at. A consumer may be handed the same
// message twice (its ack lost in a NATS restart: at-least-once delivery); a watcher
// tells those apart by stream sequence. Two sequences for one exit would be a duplicate.
const seen = new Map<number, Set<number>>();
const losses: api.Loss[] = [];
let stopConsumer: (() => Promise<void>) | undefined;

async function startService(name: string): Promise<HostProcess> {
  const h = await HostProcess.start({
    runDir,
    probeDir,
    services: [name],
    extraArgs: ["--nats", nats.hostPort, "--idle-hold-ms", "500"],
  });
  hosts.set(name, h);
  return h;
}

function startFrontend(): ChildProcess {
  return spawn(
    process.execPath,
    [
      path.join(REPO_ROOT, "dist", "guest-frontend.mjs"),
      ...["--guest-id", GUEST, "--transport", "nats", "--nats", nats.hostPort, "--instance-prefix", `vesper_${tag}`, "--no-oom-protect"],
      ...["--spool-dir", spoolDir, "--ack-timeout-ms", "1000"],
    ],
    { stdio: ["ignore", "ignore", process.env.VESPER_TEST_DEBUG ? "inherit" : "ignore"] },
  );
}

async function killFrontend(signal: NodeJS.Signals): Promise<void> {
  if (frontend.exitCode !== null || frontend.signalCode !== null) return;
  const exited = new Promise((r) => frontend.once("exit", r));
  frontend.kill(signal);
  const t = setTimeout(() => frontend.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(t);
}

/** Which of `pids` have an exit event in the events stream (read from its start). */
async function pidsInStream(pids: Set<number>): Promise<Set<number>> {
  const found = new Set<number>();
  const c = await jetstream(nc).consumers.get(EVENTS_STREAM, { filter_subjects: subjects.events(GUEST, "exits") });
  const info = await c.info();
  let left = info.num_pending;
  if (left === 0) return found;
  const msgs = await c.consume();
  const timer = setTimeout(() => void msgs.stop(), 20_000);
  for await (const m of msgs) {
    const r = api.WatchEventsResponse.decode(m.data);
    if (r.kind?.$case === "event" && pids.has(r.kind.value.pid)) found.add(r.kind.value.pid);
    if (--left <= 0) break;
  }
  clearTimeout(timer);
  await msgs.close();
  return found;
}

function grpc(): VesperApiClient {
  return new VesperApiClient(hosts.get("gateway")!.address!, { timeoutMs: 20_000 });
}

before(async () => {
  nats = await PrivateNats.start("# restarts test\n");
  nc = await connect({ servers: nats.hostPort, name: "restart-test" });
  runDir = mkdtempSync("/tmp/vesper-it-restarts-");
  probeDir = path.join(runDir, "probes");
  mkdirSync(probeDir);
  writeFileSync(
    path.join(probeDir, "exits.json"),
    JSON.stringify({ name: "exits", tracepoints: [{ system: "sched", event: "sched_process_exit" }], delivery: "urgent" }),
  );
  for (const s of ["listener", "loader", "gateway"]) await startService(s);
  spoolDir = path.join(runDir, "spool");
  frontend = startFrontend();
  const c = grpc();
  try {
    await waitFor(`${GUEST} online`, async () => (await c.listGuests()).find((g) => g.id === GUEST && g.state === 1), { timeoutMs: 60_000 });
    // The durable watcher exists before the probe: it sees everything from the first event.
    const jsm = await jetstreamManager(nc);
    await ensureEventsStream(jsm, createLogger("test", "silent"));
    await jsm.consumers.add(EVENTS_STREAM, {
      durable_name: `watcher-${tag}`,
      filter_subject: subjects.events(GUEST, "exits"),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      // A message the server handed out as its connection went down comes again after
      // ack_wait (default 30 s: longer than this test waits at the end).
      ack_wait: nanos(5_000),
    });
    await c.insmod({ guest: GUEST, probe: "exits", options: {} });
  } finally {
    c.close();
  }
  const consumer = await jetstream(nc).consumers.get(EVENTS_STREAM, `watcher-${tag}`);
  const messages = await consumer.consume();
  stopConsumer = async () => void (await messages.close());
  void (async () => {
    for await (const m of messages) {
      const r = api.WatchEventsResponse.decode(m.data);
      if (r.kind?.$case === "loss") losses.push(r.kind.value);
      else if (r.kind?.$case === "event" && spawned.has(r.kind.value.pid)) {
        const at = seen.get(r.kind.value.pid) ?? new Set<number>();
        at.add(m.seq);
        seen.set(r.kind.value.pid, at);
      }
      m.ack();
    }
  })();
  generator = setInterval(() => {
    const ch = spawn("true", { stdio: "ignore" });
    if (ch.pid !== undefined) {
      spawned.add(ch.pid);
      spawnedAt.set(ch.pid, Date.now());
    }
  }, 50);
});

after(async () => {
  clearInterval(generator);
  await stopConsumer?.();
  if (frontend !== undefined) await killFrontend("SIGTERM");
  for (const h of hosts.values()) await h.stop();
  await nc?.close();
  await nats?.stop();
});

it("events flow and nothing is lost or duplicated while the loader, gateway, listener, NATS and the frontend are killed one at a time", { timeout: 300_000 }, async () => {
  await waitFor("first events", () => seen.size >= 10, { timeoutMs: 30_000 });
  const steady = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const stillLoaded = async (after: string): Promise<void> => {
    const c = grpc();
    try {
      await waitFor(`the probe is still loaded after the ${after} restart`, async () =>
        (await c.listGuests()).find((g) => g.id === GUEST && g.state === 1 && g.loadedProbes.includes("exits")), { timeoutMs: 30_000 });
    } finally {
      c.close();
    }
  };
  const progressed = async (what: string): Promise<void> => {
    const before = seen.size;
    await waitFor(`events after the ${what} restart`, () => seen.size >= before + 10, { timeoutMs: 60_000 });
  };

  // The loader is not on the data path; the guest says Hello again when its idle
  // request goes unanswered, and the new loader reconciles from the store.
  await steady(1_500);
  phases.push({ what: "loader kill", at: Date.now() });
  await hosts.get("loader")!.stop("SIGKILL");
  await steady(1_000);
  await startService("loader");
  await stillLoaded("loader");

  await steady(1_500);
  phases.push({ what: "gateway kill", at: Date.now() });
  await hosts.get("gateway")!.stop("SIGKILL");
  await steady(500);
  await startService("gateway");
  await progressed("gateway");

  // The listener: pages it had taken but not stored, and every page sent while it is
  // down, are not acknowledged; the guest keeps them and sends them again.
  await steady(1_500);
  phases.push({ what: "listener kill", at: Date.now() });
  await hosts.get("listener")!.stop("SIGKILL");
  await steady(1_500);
  await startService("listener");
  await progressed("listener");

  // NATS itself: JetStream keeps the stream and the durable consumer on disk.
  await steady(1_500);
  phases.push({ what: "NATS kill", at: Date.now() });
  await nats.restart("SIGKILL");
  await progressed("NATS server");
  await stillLoaded("NATS server");

  // The guest frontend: the probe stays in the kernel, recording; the next frontend
  // adopts it from the spool and sends again what the host had not acknowledged.
  await steady(1_500);
  phases.push({ what: "frontend kill", at: Date.now() });
  await killFrontend("SIGKILL");
  await steady(1_500);
  frontend = startFrontend();
  await progressed("frontend");
  await stillLoaded("frontend");

  clearInterval(generator);
  const all = [...spawned];
  await waitFor("every exit or a reported loss", () => all.every((p) => seen.has(p)), { timeoutMs: 30_000 }).catch(() => undefined);
  await steady(2_000);

  const missing = all.filter((p) => !seen.has(p));
  const dups = [...seen].filter(([, at]) => at.size > 1).map(([pid, at]) => [pid, [...at]]);
  const kernelLost = losses.reduce((n, l) => n + Number(l.kernelLost), 0);
  const pagesLost = losses.reduce((n, l) => n + Number(l.pagesLost), 0);
  const readLost = losses.reduce((n, l) => n + Number(l.readLost), 0);
  process.stderr.write(
    `# restarts: ${all.length} children, ${seen.size} exits seen, ${missing.length} missing, ${dups.length} duplicated, loss records ${losses.length} (kernel ${kernelLost}, pages ${pagesLost}, read ${readLost})\n`,
  );
  assert.deepEqual(dups, [], "no event arrives twice");
  assert.equal(pagesLost, 0, "no page went missing between guest and host");
  // Only the kernel may lose events (its ring overflowing), and then it says how many.
  const where = missing.map((p) => {
    const t = spawnedAt.get(p)!;
    const last = phases.filter((ph) => ph.at <= t).pop();
    return `pid ${p} spawned ${last === undefined ? "before the first kill" : `${t - last.at} ms after the ${last.what}`}`;
  });
  if (missing.length > 0) {
    // Tell a loss (never stored) from a delivery problem (stored, not handed to the watcher).
    const inStream = await pidsInStream(new Set(missing));
    process.stderr.write(`# missing exits in the events stream all the same: ${[...inStream].join(", ") || "none"}\n`);
  }
  // Read by the frontend moments before its SIGKILL and never spooled: counted as read_lost.
  if (readLost > 0) process.stderr.write(`# read by the killed frontend, never delivered, reported: ${readLost} (${where.join("; ")})\n`);
  assert.equal(missing.length, kernelLost + readLost, `every child's exit arrived, or a loss record counts it; missing: ${where.join("; ")}`);
});
