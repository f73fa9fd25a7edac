/**
 * Events the guest agent read and never delivered are counted, not silently lost. A real
 * guest frontend on this host's kernel (NATS transport, urgent tracepoint probe) reports
 * the exits of one program. The test then plays an agent that dies right after a read():
 * with the frontend SIGKILLed, it reads trace_pipe_raw itself (consuming the events, as
 * the dead agent's last read would have) and a new frontend adopts the probe from the
 * spool. The listener must report exactly the events the test consumed as `read_lost`
 * (the kernel's "read events" against the events that arrived), and every other exit
 * must arrive once. Then, with the new frontend running, the test takes pages from under
 * it: the frontend's periodic read check must count those as well.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { VesperApiClient } from "@vesper/cli";
import { PageDecoder, parseEventFormat, parseHeaderPage } from "@vesper/probe-listener";
import type { api } from "@vesper/protocol";
import { HostProcess } from "../harness/host-process.js";
import { waitFor } from "../harness/wait.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const TRACEFS = "/sys/kernel/tracing";
const tag = `rl${process.pid}`;
const GUEST = `readloss-${tag}`;
const COMM = `vrl${process.pid % 1_000_000}`; // under the kernel's 15-character comm
const say = (s: string): void => void process.stderr.write(`# ${s}\n`);

let runDir: string;
let spoolDir: string;
let program: string;
let host: HostProcess;
let client: VesperApiClient;
let frontend: ChildProcess | undefined;
const abort = new AbortController();
const seen = new Map<number, number>(); // pid -> times its exit arrived
const losses: api.Loss[] = [];

function startFrontend(): ChildProcess {
  return spawn(
    process.execPath,
    [
      path.join(REPO_ROOT, "dist", "guest-frontend.mjs"),
      ...["--guest-id", GUEST, "--transport", "nats", "--instance-prefix", `vesper_${tag}`, "--no-oom-protect", "--spool-dir", spoolDir],
    ],
    { stdio: ["ignore", "ignore", process.env.VESPER_TEST_DEBUG ? "inherit" : "ignore"] },
  );
}

async function killFrontend(): Promise<void> {
  const f = frontend;
  if (f === undefined || f.exitCode !== null || f.signalCode !== null) return;
  const gone = new Promise((r) => f.once("exit", r));
  f.kill("SIGKILL");
  await gone;
}

/** Runs the program n times; returns the children's pids (each one exit event). */
function children(n: number): number[] {
  const pids: number[] = [];
  for (let i = 0; i < n; i++) {
    const r = spawnSync(program);
    assert.equal(r.status, 0);
    pids.push(r.pid!);
  }
  return pids;
}

const totalReadLost = (): number => losses.reduce((n, l) => n + Number(l.readLost), 0);

before(async () => {
  runDir = fs.mkdtempSync("/tmp/vesper-readloss-");
  spoolDir = path.join(runDir, "spool");
  program = path.join(runDir, COMM);
  fs.copyFileSync("/bin/true", program);
  fs.chmodSync(program, 0o755);
  const probeDir = path.join(runDir, "probes");
  fs.mkdirSync(probeDir);
  fs.writeFileSync(
    path.join(probeDir, "rlexits.json"),
    JSON.stringify({ name: "rlexits", tracepoints: [{ system: "sched", event: "sched_process_exit", filter: `comm == "${COMM}"` }], delivery: "urgent" }),
  );
  host = await HostProcess.start({ runDir, probeDir, services: ["loader", "listener", "gateway"] });
  client = new VesperApiClient(host.address!, { timeoutMs: 30_000 });
  frontend = startFrontend();
  await waitFor(`${GUEST} online`, async () => (await client.listGuests()).find((g) => g.id === GUEST && g.state === 1), { timeoutMs: 60_000 });
});

after(async () => {
  abort.abort();
  await client?.rmmod({ guest: GUEST, probe: "rlexits", flags: 0 }).catch(() => undefined);
  frontend?.kill("SIGTERM");
  if (frontend !== undefined && frontend.exitCode === null && frontend.signalCode === null) await new Promise((r) => frontend!.once("exit", r));
  client?.close();
  await host?.stop();
});

test("events read by an agent that died, or taken from under a live one, are reported as read_lost, exactly", { timeout: 300_000 }, async () => {
  const stream = client.watch({ guest: GUEST, probe: "rlexits" }, { signal: abort.signal });
  await stream.ready;
  void (async () => {
    try {
      for await (const r of stream) {
        if (r.kind?.$case === "event" && r.kind.value.comm === COMM) seen.set(r.kind.value.pid, (seen.get(r.kind.value.pid) ?? 0) + 1);
        else if (r.kind?.$case === "loss") losses.push(r.kind.value);
      }
    } catch {
      /* cancelled at the end */
    }
  })();
  const loaded = await client.insmod({ guest: GUEST, probe: "rlexits", options: {} });
  const dir = path.join(TRACEFS, "instances", loaded.instance);
  const decoder = new PageDecoder(
    [parseEventFormat(fs.readFileSync(path.join(dir, "events/sched/sched_process_exit/format"), "utf8"), "sched")],
    parseHeaderPage(fs.readFileSync(path.join(dir, "events/header_page"), "utf8")),
  );
  const cpuFiles = fs.readdirSync(path.join(dir, "per_cpu")).map((c) => path.join(dir, "per_cpu", c, "trace_pipe_raw"));
  const fds = cpuFiles.map((f) => fs.openSync(f, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK));
  const page = Buffer.alloc(4096);
  /** Reads every page the kernel holds now, as an agent would; returns the pids of the exits in them. */
  const consume = (): number[] => {
    const pids: number[] = [];
    for (const fd of fds) {
      for (;;) {
        let n: number;
        try {
          n = fs.readSync(fd, page, 0, page.length, null);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "EAGAIN") break;
          throw err;
        }
        if (n <= 0) break;
        const d = decoder.decode(page.subarray(0, n));
        assert.deepEqual(d.errors, []);
        for (const ev of d.events) pids.push(Number(ev.fields["pid"]));
      }
    }
    return pids;
  };

  try {
    // 1. A running frontend: every exit arrives, nothing is reported lost.
    const first = children(20);
    await waitFor("the first exits", () => first.every((p) => seen.has(p)), { timeoutMs: 60_000 });

    // 2. The frontend dies; exits go on into the kernel's ring; the test reads some of them
    //    out (what a dying agent's last read takes with it), more follow; a new frontend adopts.
    await killFrontend();
    const taken = children(15);
    const consumedDead = consume();
    assert.deepEqual([...consumedDead].sort(), [...taken].sort(), "the test read exactly the exits made while no frontend ran");
    const later = children(10);
    frontend = startFrontend();
    await waitFor("the exits left in the ring, from the adopting frontend", () => later.every((p) => seen.has(p)), { timeoutMs: 90_000 });
    await waitFor(`read_lost ${consumedDead.length}`, () => totalReadLost() >= consumedDead.length, { timeoutMs: 60_000 });
    say(`after adoption: read_lost ${totalReadLost()} (the test consumed ${consumedDead.length})`);
    assert.equal(totalReadLost(), consumedDead.length, "exactly the events the dead agent had read");

    // 3. A live frontend: the test takes pages from under it while children exit.
    const live: number[] = [];
    const consumedLive: number[] = [];
    const deadline = Date.now() + 3_000;
    while (Date.now() < deadline) {
      live.push(...children(2));
      consumedLive.push(...consume());
      await new Promise((r) => setImmediate(r));
    }
    // A few more for the frontend alone: its next stats report (every 5 s) carries a read check.
    const tail = children(3);
    live.push(...tail);
    const want = consumedDead.length + consumedLive.length;
    await waitFor(`the live exits and read_lost ${want}`, () => tail.every((p) => seen.has(p)) && totalReadLost() >= want, { timeoutMs: 60_000 });
    say(`live: ${live.length} exits, the test took ${consumedLive.length}, ${live.filter((p) => seen.has(p)).length} arrived; read_lost ${totalReadLost()}`);
    assert.ok(consumedLive.length > 0, "the test got some pages before the frontend did");
    assert.equal(totalReadLost(), want, "the live check counts exactly what the test took");

    // Every exit arrived once, or was taken by the test; none both.
    const all = [...first, ...taken, ...later, ...live];
    const gone = new Set([...consumedDead, ...consumedLive]);
    assert.deepEqual(all.filter((p) => !seen.has(p) && !gone.has(p)), [], "every exit arrived or was read out by the test");
    assert.deepEqual(all.filter((p) => seen.has(p) && gone.has(p)), [], "no event both arrived and was taken");
    assert.deepEqual([...seen].filter(([, n]) => n > 1), [], "no exit arrived twice");
    assert.equal(losses.reduce((n, l) => n + Number(l.kernelLost + l.pagesLost), 0), 0, "no other loss");
    const drops = (await client.listGuests()).find((g) => g.id === GUEST)?.drops;
    assert.ok((drops?.readChecks ?? 0n) > 0n, "the listener compared read checks");
    assert.equal(drops?.readLost, BigInt(want));
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
});
