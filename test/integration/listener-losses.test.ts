/**
 * The probe-listener on real NATS/JetStream, fed pages captured from the guest
 * kernel: every loss is reported (the kernel's missed-events count; pages that
 * never came, once the gap timeout passes), pages after a gap are refused until
 * then, replays are dropped, stored pages are acknowledged, and events arrive
 * decoded with their wait-status fields.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { connectNats, ProbeStore, request } from "@vesper/host-common";
import { buildDecoder, ProbeListener } from "@vesper/probe-listener";
import { api, bus, createLogger, decodeHostMessage, encodeGuestMessage, EVENTS_STREAM, PROTOCOL_VERSION, ring, subjects } from "@vesper/protocol";
import { waitFor } from "../harness/wait.js";

const FIX = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../services/probe-listener/test/fixtures/guest-6.1");
const read = (p: string): string => readFileSync(path.join(FIX, p), "utf8");
const guest = `loss${process.pid}`;
const log = createLogger("test", "silent");

let nc: NatsConnection;
let listener: ProbeListener;

const spec: ring.ProbeSpec = {
  name: "fixture",
  description: "",
  uprobes: [],
  kprobes: [{ name: "exit", symbol: "do_exit", offset: 0n, fetchArgs: ["code=%di:s64", "comm=$comm"], isReturn: false, filter: "", waitStatusArg: "code" }],
  tracepoints: ["sched_process_exit", "sched_process_exec", "sched_process_fork"].map((event) => ({ system: "sched", event, filter: "" })).concat([{ system: "signal", event: "signal_deliver", filter: "" }]),
  bufferKbPerCpu: 64,
  delivery: ring.DeliveryMode.DELIVERY_MODE_URGENT,
  flushIntervalMs: 200,
};

function formats(): ring.EventFormat[] {
  const expected = JSON.parse(read("expected.json")) as { formats: Record<string, string> };
  return Object.entries(expected.formats).map(([name, file]) => {
    const text = read(file);
    const [system = "", event = ""] = name.split("/");
    return { system, name: event, id: Number(/^ID: (\d+)/m.exec(text)?.[1]), format: text };
  });
}

function pages(capture: string): Buffer[] {
  const raw = readFileSync(path.join(FIX, capture, "cpu0.raw"));
  const out: Buffer[] = [];
  for (let o = 0; o + 4096 <= raw.length; o += 4096) out.push(raw.subarray(o, o + 4096));
  return out;
}

let seq = 0n;
const loadId = BigInt(Date.now());
const GAP_TIMEOUT_MS = 300;
/** Long enough to tell an ack that waited for company from one sent at once. */
const ACK_DELAY_MS = 3_000;
const acks: Array<{ at: number; ack: ring.DataAck }> = [];
const bulkGuest = `lossb${process.pid}`;
const bulkAcks: Array<{ at: number; ack: ring.DataAck }> = [];
function send(probe: string, cpu: number, pageSeq: bigint, page: Buffer, guestId = guest): void {
  seq++;
  const msg: ring.GuestMessage = { version: PROTOCOL_VERSION, guestId, seq, body: { $case: "data", value: { probe, pages: [{ cpu, seq: pageSeq, page }], loadId, acked: [], runs: [], ackSoon: false, skips: [] } } };
  nc.publish(subjects.ringUpData(guest), encodeGuestMessage(msg));
}

before(async () => {
  nc = await connectNats({ name: "test-listener-losses", log });
  for (const g of [guest, bulkGuest]) {
    const down = nc.subscribe(subjects.ringDown(g));
    void (async () => {
      for await (const m of down) {
        const msg = decodeHostMessage(m.data);
        if (msg.body?.$case === "ack") (g === guest ? acks : bulkAcks).push({ at: Date.now(), ack: msg.body.value });
      }
    })();
  }
  listener = new ProbeListener({ nc, log, store: await ProbeStore.open(nc), gapTimeoutMs: GAP_TIMEOUT_MS, ackDelayMs: ACK_DELAY_MS });
  await listener.start();
  const loaded: ring.LoadedProbe = { instance: "vesper-fixture", formats: formats(), headerPage: read("header_page"), pageSize: 4096, cpus: 1, loadId };
  const r = await request(nc, subjects.listenerAttach, bus.AttachRequest, bus.AttachResponse, { guest, spec, loaded });
  assert.equal(r.error, undefined);
});

after(async () => {
  await listener.stop();
  await nc.drain();
});

async function collect(startSeq: number, until: (rs: api.WatchEventsResponse[]) => boolean, of = guest): Promise<api.WatchEventsResponse[]> {
  const js = jetstream(nc);
  const c = await js.consumers.get(EVENTS_STREAM, { filter_subjects: subjects.events(of, "fixture"), opt_start_seq: startSeq });
  const out: api.WatchEventsResponse[] = [];
  const msgs = await c.consume();
  const timer = setTimeout(() => void msgs.stop(), 30_000);
  for await (const m of msgs) {
    out.push(api.WatchEventsResponse.decode(m.data));
    if (until(out)) break;
  }
  clearTimeout(timer);
  await msgs.close();
  return out;
}

const ackedTo = (s: bigint, resend = false): boolean => acks.some(({ ack: a }) => a.loadId === loadId && a.resend === resend && a.cpus.some((c) => c.cpu === 0 && c.seq === s));

test("kernel-reported losses, sequence gaps and replays are all accounted for", async () => {
  const info = await (await jetstreamManager(nc)).streams.info(EVENTS_STREAM);
  const start = Number(info.state.last_seq) + 1;
  const [overflow] = pages("overflow");
  const [basic] = pages("basic");
  send("fixture", 0, 1n, overflow!); // page header: 877 events overwritten before it
  await waitFor("page 1 acknowledged once stored", () => ackedTo(1n), { timeoutMs: 10_000 });
  send("fixture", 0, 3n, basic!); // page 2 has not arrived: refused, and the guest is asked to send from 2
  await waitFor("a resend request after the gap", () => ackedTo(1n, true), { timeoutMs: 10_000 });
  assert.equal(listener.counts(guest).outOfOrderPages, 1);
  await new Promise((r) => setTimeout(r, GAP_TIMEOUT_MS + 50));
  send("fixture", 0, 3n, basic!); // page 2 never came: after the gap timeout it is reported lost
  await waitFor("page 3 acknowledged", () => ackedTo(3n), { timeoutMs: 10_000 });
  send("fixture", 0, 3n, basic!); // a replay
  send("nosuch", 0, 1n, basic!); // a probe nobody listens to
  const rs = await collect(start, (r) => r.filter((x) => x.kind?.$case === "loss").length >= 2 && r.some((x) => x.kind?.$case === "event" && x.kind.value.pageSeq === 3n && x.kind.value.event === "vesper_fixture/exit" && x.kind.value.pid === 207));
  const losses = rs.flatMap((r) => (r.kind?.$case === "loss" ? [r.kind.value] : []));
  assert.equal(losses[0]?.kernelLost, 877n);
  assert.equal(losses[0]?.pagesLost, 0n);
  assert.equal(losses[1]?.pagesLost, 1n, "the missing page 2 is reported");
  const events = rs.flatMap((r) => (r.kind?.$case === "event" ? [r.kind.value] : []));
  const first = events.find((e) => e.pageSeq === 1n);
  assert.equal(first?.lostBefore, 877n, "the first event after the overwrite says how many came before it");
  const exit3 = events.find((e) => e.pageSeq === 3n && e.event === "vesper_fixture/exit" && e.pid === 207)!;
  assert.equal(exit3.fields.exit_code?.kind?.$case === "int" && exit3.fields.exit_code.kind.value, 3n);
  const killed = events.find((e) => e.pageSeq === 3n && e.event === "vesper_fixture/exit" && e.pid === 206)!;
  assert.equal(killed.fields.signal?.kind?.$case === "int" && killed.fields.signal.kind.value, 9n);
  assert.equal(killed.comm, "sleep");
  // The replay added nothing: each (page, index) appears once.
  const keys = events.map((e) => `${e.pageSeq}.${e.index}`);
  assert.equal(new Set(keys).size, keys.length);
  await waitFor("the unknown-probe drop to be counted", () => listener.counts(guest).unknownProbe === 1, { timeoutMs: 10_000 });
});

test("data that claims another guest is dropped and counted, not published", async () => {
  const before = listener.counts(guest).wrongGuest;
  send("fixture", 0, 10n, pages("basic")[0]!, "someone-else");
  await waitFor("the wrong-guest drop to be counted", () => listener.counts(guest).wrongGuest === before + 1, { timeoutMs: 10_000 });
});

test("acks: a few stored pages wait for company (ackDelayMs); asked for (ack_soon), or a quarter window's worth, they go out at once", async () => {
  const bulkSpec: ring.ProbeSpec = { ...spec, delivery: ring.DeliveryMode.DELIVERY_MODE_BULK };
  const loaded: ring.LoadedProbe = { instance: "vesper-fixture", formats: formats(), headerPage: read("header_page"), pageSize: 4096, cpus: 1, loadId };
  const r = await request(nc, subjects.listenerAttach, bus.AttachRequest, bus.AttachResponse, { guest: bulkGuest, spec: bulkSpec, loaded });
  assert.equal(r.error, undefined);
  const page = pages("basic")[0]!;
  const acked = (s: bigint): number | undefined => bulkAcks.find(({ ack }) => ack.loadId === loadId && ack.cpus.some((c) => c.cpu === 0 && c.seq >= s))?.at;
  const sendPages = (from: number, n: number, ackSoon = false): number => {
    seq++;
    const ps = Array.from({ length: n }, (_, i) => ({ cpu: 0, seq: BigInt(from + i), page }));
    const msg: ring.GuestMessage = { version: PROTOCOL_VERSION, guestId: bulkGuest, seq, body: { $case: "data", value: { probe: "fixture", pages: ps, loadId, acked: [], runs: [], ackSoon, skips: [] } } };
    nc.publish(subjects.ringUpData(bulkGuest), encodeGuestMessage(msg));
    return Date.now();
  };
  const fast = (s: bigint, sent: number): void => assert.ok(acked(s)! - sent < ACK_DELAY_MS - 500, `the ack for page ${s} took ${acked(s)! - sent} ms`);

  // One page, and the guest asks for its ack (its window is filling): no waiting.
  const sentAsked = sendPages(1, 1, true);
  await waitFor("page 1 acknowledged", () => acked(1n), { timeoutMs: 10_000 });
  fast(1n, sentAsked);

  // One page: its ack waits ackDelayMs for others to join it.
  const sentOne = sendPages(2, 1);
  await waitFor("page 2 acknowledged", () => acked(2n), { timeoutMs: ACK_DELAY_MS + 10_000 });
  assert.ok(acked(2n)! - sentOne >= ACK_DELAY_MS - 100, `the ack for one page came after ${acked(2n)! - sentOne} ms`);

  // 270 pages not asked for: more than ACK_SOON_PAGES (256) wait, so the ack does not wait the 3 s.
  const sentMany = sendPages(3, 90);
  sendPages(93, 90);
  sendPages(183, 90);
  await waitFor("272 pages acknowledged", () => acked(272n), { timeoutMs: 10_000 });
  fast(272n, sentMany);
});

test("a guest that adopted its load: past its skip nothing counts as lost or duplicate, and what its predecessor read and never sent is reported once", async () => {
  const g = `lossr${process.pid}`;
  const lid = loadId + 7n;
  const loaded: ring.LoadedProbe = { instance: "vesper-fixture", formats: formats(), headerPage: read("header_page"), pageSize: 4096, cpus: 1, loadId: lid };
  const r = await request(nc, subjects.listenerAttach, bus.AttachRequest, bus.AttachResponse, { guest: g, spec, loaded });
  assert.equal(r.error, undefined);
  const got: ring.DataAck[] = [];
  const down = nc.subscribe(subjects.ringDown(g), {
    callback: (_e, m) => {
      const msg = decodeHostMessage(m.data);
      if (msg.body?.$case === "ack") got.push(msg.body.value);
    },
  });
  const acked = (s: bigint): ring.CpuSeq | undefined => got.flatMap((a) => a.cpus).find((c) => c.cpu === 0 && c.seq === s);
  const up = (body: ring.GuestMessage["body"]): void => {
    seq++;
    nc.publish(subjects.ringUpData(g), encodeGuestMessage({ version: PROTOCOL_VERSION, guestId: g, seq, body }));
  };
  const data = (pageSeq: bigint, skips: ring.SeqSkip[] = []): ring.GuestMessage["body"] => ({
    $case: "data",
    value: { probe: "fixture", pages: [{ cpu: 0, seq: pageSeq, page: basic }], loadId: lid, acked: [], runs: [], ackSoon: true, skips },
  });
  const basic = pages("basic")[0]!;
  const perPage = buildDecoder(spec, loaded).decode(basic).events.length;
  const start = Number((await (await jetstreamManager(nc)).streams.info(EVENTS_STREAM)).state.last_seq) + 1;
  try {
    // The first frontend sends pages 1-3 and dies after sending 3, before spooling it.
    for (const s of [1n, 2n, 3n]) up(data(s));
    await waitFor("pages 1-3 acknowledged", () => acked(3n), { timeoutMs: 10_000 });
    assert.equal(acked(3n)?.events, BigInt(3 * perPage), "the ack carries the host's event count, for the guest to echo");
    // The next one adopts the spool (it ends at 2): its new pages start past a window of seqs.
    // Had it reused seq 3, the host would have dropped that page as one it already has.
    up(data(1027n, [{ cpu: 0, from: 3n, to: 1027n }]));
    await waitFor("the first page after the skip acknowledged", () => acked(1027n), { timeoutMs: 10_000 });
    // Its adoption check: the kernel had handed out the events of pages 1-3 and 2 more, which
    // the dead frontend had read and not sent. Sent twice (every stats report carries it).
    const check = { $case: "stats" as const, value: { probe: "fixture", cpus: [], pagesDropped: 0n, readChecks: [{ cpu: 0, readEvents: BigInt(3 * perPage + 2), nextSeq: 1027n }] } };
    up(check);
    up(check);
    await waitFor("the read loss counted", () => listener.counts(g).readLost === 2n, { timeoutMs: 10_000 });
    const rs = await collect(start, (x) => x.some((y) => y.kind?.$case === "loss") && x.filter((y) => y.kind?.$case === "event" && y.kind.value.pageSeq === 1027n).length === perPage, g);
    const losses = rs.flatMap((x) => (x.kind?.$case === "loss" ? [x.kind.value] : []));
    assert.deepEqual(losses.map((l) => [l.readLost, l.pagesLost, l.kernelLost]), [[2n, 0n, 0n]], "one loss record: the 2 events read and never sent");
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(listener.counts(g).readLost, 2n, "the repeated check reported nothing more");
    assert.equal(listener.counts(g).readChecks, 2);
    assert.equal(listener.counts(g).replayedPages, 0, "no page was taken for a duplicate");
  } finally {
    down.unsubscribe();
  }
});

test("a guest's backlog holds up only that guest: another's page is stored meanwhile, and past 1,024 queued the newest are dropped and counted", async () => {
  const flood = `lossf${process.pid}`;
  const quiet = `lossq${process.pid}`;
  const lid = loadId + 11n;
  const loaded: ring.LoadedProbe = { instance: "vesper-fixture", formats: formats(), headerPage: read("header_page"), pageSize: 4096, cpus: 1, loadId: lid };
  for (const g of [flood, quiet]) {
    const r = await request(nc, subjects.listenerAttach, bus.AttachRequest, bus.AttachResponse, { guest: g, spec, loaded });
    assert.equal(r.error, undefined);
  }
  // The highest page seq each guest has had acknowledged, as it stood when the quiet guest's came.
  const top = new Map<string, bigint>();
  let floodTopWhenQuietAcked: bigint | undefined;
  const subs = [flood, quiet].map((g) =>
    nc.subscribe(subjects.ringDown(g), {
      callback: (_e, m) => {
        const msg = decodeHostMessage(m.data);
        if (msg.body?.$case !== "ack" || msg.body.value.resend) return;
        for (const c of msg.body.value.cpus) if (c.seq > (top.get(g) ?? 0n)) top.set(g, c.seq);
        if (g === quiet && floodTopWhenQuietAcked === undefined) floodTopWhenQuietAcked = top.get(flood) ?? 0n;
      },
    }),
  );
  const page = pages("basic")[0]!;
  const up = (g: string, pageSeq: bigint, ackSoon: boolean): void => {
    seq++;
    const body: ring.GuestMessage["body"] = { $case: "data", value: { probe: "fixture", pages: [{ cpu: 0, seq: pageSeq, page }], loadId: lid, acked: [], runs: [], ackSoon, skips: [] } };
    nc.publish(subjects.ringUpData(g), encodeGuestMessage({ version: PROTOCOL_VERSION, guestId: g, seq, body }));
  };
  try {
    // 3,000 pages arrive far faster than their events can be stored (a JetStream round trip each).
    const N = 3000;
    for (let s = 1; s <= N; s++) up(flood, BigInt(s), s % 64 === 0);
    up(quiet, 1n, true);
    await nc.flush();
    await waitFor("the quiet guest's page acknowledged", () => top.get(quiet) === 1n, { timeoutMs: 30_000 });
    await waitFor("every flood message taken or dropped", () => listener.counts(flood).messages === N, { timeoutMs: 60_000 });
    const c = listener.counts(flood);
    assert.ok(c.overQuota >= N - 1024 - 64, `the newest past the 1,024 queued were dropped and counted (${c.overQuota} of ${N})`);
    await waitFor("the flood's accepted pages acknowledged", () => (top.get(flood) ?? 0n) >= BigInt(N - c.overQuota), { timeoutMs: 60_000 });
    // Behind one queue, the quiet page would have waited for every accepted flood page.
    assert.ok(floodTopWhenQuietAcked! < BigInt(N - c.overQuota), `the quiet guest's page was stored before the flood's ${N - c.overQuota} accepted pages (${floodTopWhenQuietAcked} of them were acknowledged by then)`);
  } finally {
    for (const s of subs) s.unsubscribe();
  }
});
