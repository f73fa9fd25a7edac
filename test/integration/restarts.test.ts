/**
 * Nothing lost across host service restarts. A real guest frontend on this host's
 * kernel (NATS transport, tracepoint probe) reports a steady stream of child
 * exits while the host services, each in its own process (`--services X`), are
 * killed and restarted one at a time, on a private nats-server. A durable
 * JetStream consumer must see every child's exit exactly once (msgID dedup),
 * except what a loss record accounts for, and the probe must stay loaded.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, it } from "node:test";
import { fileURLToPath } from "node:url";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
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
let generator: NodeJS.Timeout | undefined;
const spawned = new Set<number>();
const seen = new Map<number, number>(); // pid -> times its exit arrived
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
  frontend = spawn(
    process.execPath,
    [path.join(REPO_ROOT, "dist", "guest-frontend.mjs"), "--guest-id", GUEST, "--transport", "nats", "--nats", nats.hostPort, "--instance-prefix", `vesper_${tag}`, "--no-oom-protect"],
    { stdio: ["ignore", "ignore", process.env.VESPER_TEST_DEBUG ? "inherit" : "ignore"] },
  );
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
      else if (r.kind?.$case === "event" && spawned.has(r.kind.value.pid)) seen.set(r.kind.value.pid, (seen.get(r.kind.value.pid) ?? 0) + 1);
      m.ack();
    }
  })();
  generator = setInterval(() => {
    const ch = spawn("true", { stdio: "ignore" });
    if (ch.pid !== undefined) spawned.add(ch.pid);
  }, 50);
});

after(async () => {
  clearInterval(generator);
  await stopConsumer?.();
  if (frontend !== undefined && frontend.exitCode === null && frontend.signalCode === null) {
    const exited = new Promise((r) => frontend.once("exit", r));
    frontend.kill("SIGTERM");
    const t = setTimeout(() => frontend.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(t);
  }
  for (const h of hosts.values()) await h.stop();
  await nc?.close();
  await nats?.stop();
});

it("events flow and nothing is lost or duplicated while the listener, loader and gateway restart one at a time", { timeout: 240_000 }, async () => {
  await waitFor("first events", () => seen.size >= 10, { timeoutMs: 30_000 });
  const steady = (ms: number) => new Promise((r) => setTimeout(r, ms));

  // The loader: killed outright. It is not on the data path; the guest re-says Hello
  // when its idle request goes unanswered, and the loader reconciles from the store.
  await steady(2_000);
  await hosts.get("loader")!.stop("SIGKILL");
  await steady(1_000);
  await startService("loader");
  {
    const c = grpc();
    await waitFor("the probe is still loaded after the loader restart", async () =>
      (await c.listGuests()).find((g) => g.id === GUEST && g.state === 1 && g.loadedProbes.includes("exits")), { timeoutMs: 30_000 });
    c.close();
  }

  // The gateway: killed; a new one on a new port.
  await steady(2_000);
  await hosts.get("gateway")!.stop("SIGKILL");
  await steady(500);
  await startService("gateway");

  // The listener: a rolling restart (the new one first, then the old one stops):
  // both publish the same pages with the same msgIDs, and JetStream keeps one.
  await steady(2_000);
  const old = hosts.get("listener")!;
  await startService("listener");
  await old.stop("SIGTERM");

  const before = seen.size;
  await waitFor("events after the restarts", () => seen.size >= before + 20, { timeoutMs: 30_000 });
  clearInterval(generator);
  const all = [...spawned];
  await waitFor("every exit or a reported loss", () => all.every((p) => seen.has(p)) || losses.length > 0, { timeoutMs: 20_000 }).catch(() => undefined);
  await steady(2_000);

  const missing = all.filter((p) => !seen.has(p));
  const dups = [...seen].filter(([, n]) => n > 1);
  const kernelLost = losses.reduce((n, l) => n + Number(l.kernelLost), 0);
  const pagesLost = losses.reduce((n, l) => n + Number(l.pagesLost), 0);
  process.stderr.write(
    `# restarts: ${all.length} children, ${seen.size} exits seen, ${missing.length} missing, ${dups.length} duplicated, loss records ${losses.length} (kernel ${kernelLost}, pages ${pagesLost})\n`,
  );
  // Known, not fixed yet: the restarted listener starts each CPU's page sequence from 0,
  // so its first page per CPU publishes a loss record for every page the old instance
  // handled (pages_lost > 0 with nothing missing): a false alarm, not a silent gap.
  assert.deepEqual(dups, [], "no event arrives twice");
  if (missing.length > 0) {
    assert.ok(kernelLost + pagesLost > 0, `${missing.length} exits missing with no loss record: a silent gap`);
  }
  assert.equal(missing.length, 0, `every child's exit arrived (kernel-reported losses: ${kernelLost}, pages lost: ${pagesLost})`);
});
