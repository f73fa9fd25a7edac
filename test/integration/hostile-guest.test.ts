/**
 * Hostile guests against the real host services (vesper-host: loader, listener,
 * gateway) on a private nats-server, while a well-behaved guest (a real guest
 * frontend on this host's kernel, tracepoint probe) keeps producing events.
 *
 * Each kind of bad input gets a clear error (a ring error back to the guest, or
 * the insmod caller's error) and a counted drop, visible in ListGuests' `drops`
 * and on the listener's stats subject; the good guest's events keep flowing
 * with latency close to what it was before.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { ApiError, dropsToJson, VesperApiClient } from "@vesper/cli";
import { request } from "@vesper/host-common";
import { api, bus, encodeGuestMessage, ErrorCode, PROTOCOL_VERSION, ring, subjects } from "@vesper/protocol";
import { FakeGuest, type CommandHandler } from "../harness/fake-guest.js";
import { HostProcess } from "../harness/host-process.js";
import { PrivateNats } from "../harness/private-nats.js";
import { waitFor } from "../harness/wait.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const TRACEFS = "/sys/kernel/tracing";
const tag = `hg${process.pid}`;
const GOOD = `good-${tag}`;
const QUOTA = 2 * 1024 * 1024; // bytes/s per guest at the listener, for this test

const fmt = (system: string, event: string): ring.EventFormat => {
  const text = readFileSync(path.join(TRACEFS, "events", system, event, "format"), "utf8");
  return { system, name: event, id: Number(/^ID: (\d+)$/m.exec(text)?.[1] ?? 0), format: text };
};
const REAL_FORMATS = [fmt("sched", "sched_process_exit"), fmt("signal", "signal_deliver")];
const HEADER_PAGE = readFileSync(path.join(TRACEFS, "events", "header_page"), "utf8");

function loaded(formats: ring.EventFormat[], headerPage = HEADER_PAGE): ring.LoadedProbe {
  return { instance: "vesper-fake-exits", formats, headerPage, pageSize: 4096, cpus: 2, loadId: BigInt(`0x${randomBytes(6).toString("hex")}`) };
}

const OK = ring.ResultCode.RESULT_CODE_OK;
function answering(onLoad: () => ring.LoadedProbe): CommandHandler {
  return (cmd) => {
    const k = cmd.kind;
    if (k?.$case === "load") return { code: OK, message: "", kernelLog: [], detail: { $case: "loaded", value: onLoad() } };
    return { code: OK, message: "", kernelLog: [], detail: undefined };
  };
}

let nats: PrivateNats;
let host: HostProcess;
let client: VesperApiClient;
let nc: NatsConnection;
let frontend: ChildProcess;
const guests: FakeGuest[] = [];

// The well-behaved guest's children: spawn time, and when their exit event reached the watcher.
const spawned = new Map<number, number>();
const arrived = new Map<number, number>();
let generator: NodeJS.Timeout | undefined;
let watchAbort: AbortController;
let hostilePhaseStart = 0;

function fake(name: string): FakeGuest {
  const g = new FakeGuest(nc, `${name}-${tag}`);
  guests.push(g);
  return g;
}

async function drops(guest: string): Promise<api.GuestDrops> {
  const g = (await client.listGuests()).find((x) => x.id === guest);
  assert.ok(g !== undefined, `${guest} is listed`);
  assert.ok(g.drops !== undefined, `${guest} has drop counters`);
  return g.drops;
}

async function listenerDrops(guest: string): Promise<api.GuestDrops | undefined> {
  const r = await request(nc, subjects.listenerStats, bus.ListenerStatsRequest, bus.ListenerStatsReply, { guest }, { timeoutMs: 5_000 });
  return r.guests[guest];
}

function latencies(from: number, to: number): number[] {
  const out: number[] = [];
  for (const [pid, t0] of spawned) {
    if (t0 < from || t0 >= to) continue;
    const t1 = arrived.get(pid);
    if (t1 !== undefined) out.push(t1 - t0);
  }
  return out.sort((a, b) => a - b);
}
const median = (xs: number[]): number => xs[Math.floor(xs.length / 2)] ?? NaN;

before(async () => {
  nats = await PrivateNats.start("# hostile-guest test\n");
  nc = await connect({ servers: nats.hostPort, name: "hostile-test" });
  const runDir = mkdtempSync("/tmp/vesper-it-hostile-");
  const probeDir = path.join(runDir, "probes");
  mkdirSync(probeDir);
  writeFileSync(
    path.join(probeDir, "exits.json"),
    JSON.stringify({
      name: "exits",
      description: "process exits and fatal signals, tracepoints only",
      tracepoints: [
        { system: "sched", event: "sched_process_exit" },
        { system: "signal", event: "signal_deliver" },
      ],
      delivery: "urgent",
    }),
  );
  host = await HostProcess.start({
    runDir,
    probeDir,
    services: ["loader", "listener", "gateway"],
    extraArgs: ["--nats", nats.hostPort, "--guest-max-bytes-per-sec", String(QUOTA), "--command-timeout-ms", "10000"],
  });
  client = new VesperApiClient(host.address!, { timeoutMs: 30_000 });
  frontend = spawn(
    process.execPath,
    [
      path.join(REPO_ROOT, "dist", "guest-frontend.mjs"),
      ...["--guest-id", GOOD, "--transport", "nats", "--nats", nats.hostPort, "--instance-prefix", `vesper_${tag}`, "--no-oom-protect"],
    ],
    { stdio: ["ignore", "ignore", process.env.VESPER_TEST_DEBUG ? "inherit" : "ignore"] },
  );
  await waitFor(`${GOOD} online`, async () => (await client.listGuests()).find((g) => g.id === GOOD && g.state === 1), { timeoutMs: 60_000 });
  await client.insmod({ guest: GOOD, probe: "exits", options: {} });

  watchAbort = new AbortController();
  const stream = client.watch({ guest: GOOD, probe: "exits", event: "sched/sched_process_exit" }, { signal: watchAbort.signal });
  await stream.ready;
  void (async () => {
    try {
      for await (const res of stream) {
        if (res.kind?.$case === "event" && spawned.has(res.kind.value.pid)) arrived.set(res.kind.value.pid, Date.now());
      }
    } catch {
      /* ended by the test */
    }
  })();
  generator = setInterval(() => {
    const c = spawn("true", { stdio: "ignore" });
    if (c.pid !== undefined) spawned.set(c.pid, Date.now());
  }, 100);
  // A baseline of latencies before any hostile input.
  await waitFor("baseline events of the good guest", () => arrived.size >= 8, { timeoutMs: 30_000 });
  hostilePhaseStart = Date.now();
});

after(async () => {
  clearInterval(generator);
  watchAbort?.abort();
  for (const g of guests) g.close();
  if (frontend !== undefined && frontend.exitCode === null && frontend.signalCode === null) {
    const exited = new Promise((r) => frontend.once("exit", r));
    frontend.kill("SIGTERM");
    const t = setTimeout(() => frontend.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(t);
  }
  client?.close();
  await host?.stop();
  await nc?.close();
  await nats?.stop();
});

describe("hostile guests", () => {
  it("a forged load Result whose formats lie about offsets: the listener refuses to attach, insmod says why", async () => {
    const g = fake("liar");
    g.hello();
    let variant = 0;
    g.serve(
      answering(() => {
        variant++;
        if (variant === 1) {
          // A field "at" 2 MB: past any ftrace page.
          const [exit, deliver] = REAL_FORMATS;
          return loaded([{ ...exit!, format: exit!.format.replace(/offset:24;/, "offset:2000000;") }, deliver!]);
        }
        // A header page whose data starts past any page.
        return loaded(REAL_FORMATS, HEADER_PAGE.replace(/offset:16;/, "offset:9999999;"));
      }),
    );
    await waitFor(`${g.id} online`, async () => (await client.listGuests()).find((x) => x.id === g.id && x.state === 1), { timeoutMs: 15_000 });
    for (let i = 0; i < 2; i++) {
      await assert.rejects(client.insmod({ guest: g.id, probe: "exits", options: {} }), (e: unknown) => {
        assert.ok(e instanceof ApiError, String(e));
        assert.equal(e.code, ErrorCode.Malformed);
        assert.match(e.message, /the guest's event formats for exits do not parse/);
        return true;
      });
    }
    const d = await drops(g.id);
    assert.equal(d.badFormats, 2n);
    const info = (await client.listGuests()).find((x) => x.id === g.id)!;
    assert.ok(!info.loadedProbes.includes("exits"), "nothing stays loaded");
  });

  it("protocol version mismatch, another guest's id, unsolicited messages, garbage: a ring error each, counted", async () => {
    const g = fake("rude");
    const garbage = g.send("ctl", Uint8Array.from([0xff, 0xff, 0xff, 0x01, 0x02]));
    void garbage;
    assert.equal((await g.next((m) => m.body?.$case === "error" && m.body.value.code === ring.RingErrorCode.RING_ERROR_CODE_MALFORMED)).replyTo, 0n);
    const v2 = g.send("ctl", { $case: "idle", value: {} }, { version: 2 as ring.ProtocolVersion });
    void v2;
    const mismatch = await g.next((m) => m.body?.$case === "error" && m.body.value.code === ring.RingErrorCode.RING_ERROR_CODE_VERSION_MISMATCH);
    assert.match(mismatch.body?.$case === "error" ? mismatch.body.value.message : "", /protocol version 2 not supported/);
    const imp = g.send("ctl", { $case: "hello", value: ring.Hello.fromPartial({ kernelRelease: "x", bootId: "y" }) }, { guestId: GOOD });
    const wrong = await g.errorFor(imp);
    assert.equal(wrong.code, ring.RingErrorCode.RING_ERROR_CODE_WRONG_GUEST);
    assert.match(wrong.message, new RegExp(`belongs to guest ${g.id}, not ${GOOD}`));
    const early = await g.errorFor(g.send("ctl", { $case: "idle", value: {} }));
    assert.equal(early.code, ring.RingErrorCode.RING_ERROR_CODE_UNSOLICITED);
    assert.match(early.message, /before Hello/);
    g.send("ctl", { $case: "result", value: { commandId: 424242n, code: OK, message: "", kernelLog: [], detail: undefined } });
    const bye = await g.errorFor(g.send("ctl", { $case: "goodbye", value: { reason: "x", probesKept: false } }));
    assert.equal(bye.code, ring.RingErrorCode.RING_ERROR_CODE_UNSOLICITED);
    assert.match(bye.message, /goodbye before Hello/);
    // Another guest's goodbye from this channel: refused, and the good guest stays online (checked below).
    const fakeBye = await g.errorFor(g.send("ctl", { $case: "goodbye", value: { reason: "x", probesKept: false } }, { guestId: GOOD }));
    assert.equal(fakeBye.code, ring.RingErrorCode.RING_ERROR_CODE_WRONG_GUEST);
    g.hello();
    const misplaced = await g.errorFor(g.send("ctl", { $case: "data", value: { probe: "exits", pages: [], loadId: 1n, acked: [], runs: [], ackSoon: false, skips: [] } }));
    assert.equal(misplaced.code, ring.RingErrorCode.RING_ERROR_CODE_UNSOLICITED);
    // Data claiming another guest, and garbage, on the data path.
    g.send("data", { $case: "data", value: { probe: "exits", pages: [], loadId: 1n, acked: [], runs: [], ackSoon: false, skips: [] } }, { guestId: GOOD });
    g.send("data", Uint8Array.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]));
    await waitFor("counted", async () => (await listenerDrops(g.id))?.dataMalformed === 1n && (await listenerDrops(g.id))?.dataWrongGuest === 1n, { timeoutMs: 10_000 });
    const d = await drops(g.id);
    assert.equal(d.ctlMalformed, 1n);
    assert.equal(d.versionMismatch, 1n);
    assert.equal(d.wrongGuest, 2n);
    assert.equal(d.unsolicited, 3n);
    assert.equal(d.unknownResults, 1n);
    assert.equal(d.dataMalformed, 1n);
    assert.equal(d.dataWrongGuest, 1n);
    assert.equal(dropsToJson(d).version_mismatch, 1, "`vesper guests --json` shows them");
    // The impostor's Hello did not touch the good guest.
    const good = (await client.listGuests()).find((x) => x.id === GOOD)!;
    assert.equal(good.state, api.GuestState.GUEST_STATE_ONLINE);
    assert.notEqual(good.kernelRelease, "x");
  });

  it("truncated pages, page headers that lie about sizes, replays, gaps, other loads, unknown probes: dropped and counted", async () => {
    const g = fake("broken");
    g.hello();
    let loadId = 0n;
    g.serve(
      answering(() => {
        const l = loaded(REAL_FORMATS);
        loadId = l.loadId;
        return l;
      }),
    );
    await waitFor(`${g.id} online`, async () => (await client.listGuests()).find((x) => x.id === g.id && x.state === 1), { timeoutMs: 15_000 });
    await client.insmod({ guest: g.id, probe: "exits", options: {} });
    const lying = Buffer.alloc(4096);
    lying.writeBigUInt64LE(0x7fff_ffffn, 8); // commit: 2 GB of data in a 4 KB page
    const empty = Buffer.alloc(4096); // commit 0: a valid page with nothing in it
    const page = (seq: bigint, bytes: Buffer): ring.RawPage => ({ cpu: 0, seq, page: bytes });
    const data = (pages: ring.RawPage[], lid = loadId, probe = "exits"): ring.GuestMessage["body"] => ({ $case: "data", value: { probe, pages, loadId: lid, acked: [], runs: [], ackSoon: false, skips: [] } });
    const acked = (seq: bigint, resend: boolean) => (m: ring.HostMessage): boolean =>
      m.body?.$case === "ack" && m.body.value.loadId === loadId && m.body.value.resend === resend && m.body.value.cpus.some((c) => c.cpu === 0 && c.seq === seq);
    const first = g.send("data", data([page(1n, Buffer.alloc(10)), page(2n, lying), page(3n, empty), page(3n, empty)]));
    // Bad pages are handled (counted, acked); the replay is re-acked.
    const ack = await g.next(acked(3n, false));
    assert.ok(ack.replyTo >= first, "the ack answers the data message");
    g.send("data", data([page(9n, empty)])); // after a gap: refused, the guest is asked to send again from 4
    await g.next(acked(3n, true));
    g.send("data", data([page(4n, empty)], loadId + 1n)); // another load's page
    g.send("data", data([page(1n, empty)], loadId, "nosuch"));
    await waitFor("counted", async () => (await listenerDrops(g.id))?.unknownProbe === 1n, { timeoutMs: 10_000 });
    const d = await drops(g.id);
    assert.equal(d.badPages, 2n, "the truncated page and the lying one");
    assert.equal(d.replayedPages, 1n);
    assert.equal(d.outOfOrderPages, 1n);
    assert.equal(d.staleLoadPages, 1n);
    assert.equal(d.unknownProbe, 1n);
    assert.equal(d.dataMessages, 4n);
    await client.rmmod({ guest: g.id, probe: "exits", flags: 0 });
  });

  it("oversize messages and a flood: dropped before decoding, counted, over the guest's quota", async () => {
    const g = fake("flood");
    g.send("data", Buffer.alloc(600 * 1024, 7));
    const chunk = Buffer.alloc(16 * 1024, 1);
    const total = 6 * QUOTA;
    for (let sent = 0; sent < total; sent += chunk.length) {
      g.send("data", encodeGuestMessage({ version: PROTOCOL_VERSION, guestId: g.id, seq: 1n, body: { $case: "data", value: { probe: "exits", pages: [{ cpu: 0, seq: 1n, page: chunk }], loadId: 1n, acked: [], runs: [], ackSoon: false, skips: [] } } }));
    }
    await nc.flush();
    const n = 1 + Math.ceil(total / chunk.length);
    await waitFor("the flood was read", async () => (await listenerDrops(g.id))?.dataMessages === BigInt(n), { timeoutMs: 30_000 });
    const d = (await listenerDrops(g.id))!;
    assert.equal(d.oversize, 1n);
    assert.ok(d.overQuota > 0n, `over quota: ${d.overQuota}`);
    // What got through the quota is at most a burst plus the refill while it was read.
    assert.ok(d.overQuota >= BigInt(Math.floor((n - 1) / 2)), `most of the flood was refused (${d.overQuota} of ${n - 1})`);
  });

  it("meanwhile the well-behaved guest's events kept flowing, with latency close to before", async () => {
    const end = Date.now();
    await new Promise((r) => setTimeout(r, 3_000));
    const baseline = latencies(0, hostilePhaseStart);
    const during = latencies(hostilePhaseStart, end);
    const expected = [...spawned.values()].filter((t) => t >= hostilePhaseStart && t < end).length;
    assert.ok(expected >= 5, `children spawned during the hostile phase: ${expected}`);
    assert.equal(during.length, expected, `every child exit during the hostile phase arrived (${during.length} of ${expected})`);
    const b = median(baseline);
    const m = median(during);
    process.stderr.write(`# good guest latency: baseline median ${b} ms (${baseline.length}), during ${m} ms (${during.length}), max ${during.at(-1)} ms\n`);
    assert.ok(m <= b + 1_000, `median latency ${m} ms during vs ${b} ms before`);
  });
});
