import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import type { NatsConnection } from "@nats-io/transport-node";
import type { JetStreamClient } from "@nats-io/jetstream";
import { api, ErrorCode, VesperError } from "@vesper/protocol";
import { timeoutWithin } from "../src/call-scope.js";
import { eventMatches, eventsFilterSubject, grpcStatusOf, startGateway, toGrpcError, type Gateway } from "../src/index.js";
import {
  connectNats,
  fakeLoader,
  jetstream,
  makeEvent,
  makeLoss,
  publishEvent,
  quietLog,
  reader,
  stopPrivateNats,
  uniq,
} from "./helpers.js";

after(stopPrivateNats);

function unary<Req, Res>(
  fn: (req: Req, md: Metadata, opts: { deadline: Date }, cb: (err: ServiceError | null, res: Res) => void) => unknown,
  req: Req,
  ms = 5000,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    fn(req, new Metadata(), { deadline: new Date(Date.now() + ms) }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

function watch(client: api.VesperClient, req: Partial<api.WatchEventsRequest>) {
  const call = client.watchEvents(api.WatchEventsRequest.fromPartial(req));
  const ready = new Promise<void>((resolve, reject) => {
    call.once("metadata", () => resolve());
    call.once("error", reject);
  });
  const messages = reader(call as AsyncIterable<api.WatchEventsResponse>);
  return { call, ready, messages };
}

describe("status mapping", () => {
  it("maps Vesper codes to gRPC codes with the code in metadata and details in the message", () => {
    assert.equal(grpcStatusOf(ErrorCode.UnknownGuest), status.NOT_FOUND);
    assert.equal(grpcStatusOf(ErrorCode.UnknownProbe), status.NOT_FOUND);
    assert.equal(grpcStatusOf(ErrorCode.ProbeAlreadyLoaded), status.ALREADY_EXISTS);
    assert.equal(grpcStatusOf(ErrorCode.GuestOffline), status.UNAVAILABLE);
    assert.equal(grpcStatusOf(ErrorCode.Unavailable), status.UNAVAILABLE);
    assert.equal(grpcStatusOf(ErrorCode.InvalidSpec), status.INVALID_ARGUMENT);
    assert.equal(grpcStatusOf(ErrorCode.KernelRefused), status.FAILED_PRECONDITION);
    assert.equal(grpcStatusOf(ErrorCode.Unsupported), status.FAILED_PRECONDITION);
    assert.equal(grpcStatusOf(ErrorCode.Timeout), status.DEADLINE_EXCEEDED);
    const g = toGrpcError(new VesperError(ErrorCode.KernelRefused, "no", { details: ["line 1", "line 2"] }));
    assert.equal(g.details, "no\nline 1\nline 2");
    assert.deepEqual(g.metadata.get("vesper-error-code"), ["KERNEL_REFUSED"]);
    assert.equal(toGrpcError(new Error("boom")).code, status.INTERNAL);
  });

  it("carries the shorter of the gRPC deadline and the loader timeout", () => {
    assert.equal(timeoutWithin(Infinity, 30_000, 0), 30_000);
    assert.equal(timeoutWithin(new Date(5_000), 30_000, 1_000), 4_000);
    assert.equal(timeoutWithin(100_000, 30_000, 1_000), 30_000);
    assert.equal(timeoutWithin(500, 30_000, 1_000), 0);
  });

  it("builds filter subjects and matches event names", () => {
    assert.equal(eventsFilterSubject({ guest: "", probe: "" }), "vesper.events.*.*");
    assert.equal(eventsFilterSubject({ guest: "web1", probe: "" }), "vesper.events.web1.*");
    assert.ok(eventMatches("", "sched/sched_process_exit"));
    assert.ok(eventMatches("sched/sched_process_exit", "sched/sched_process_exit"));
    assert.ok(eventMatches("sched_process_exit", "sched/sched_process_exit"));
    assert.ok(!eventMatches("sched/sched_process_fork", "sched/sched_process_exit"));
    assert.ok(!eventMatches("other/sched_process_exit", "sched/sched_process_exit"));
    assert.ok(!eventMatches("exit", "sched/sched_process_exit"));
  });
});

describe("gateway over real NATS", () => {
  let nc: NatsConnection;
  let js: JetStreamClient;
  let gw: Gateway;
  let client: api.VesperClient;

  before(async () => {
    nc = await connectNats();
    js = jetstream(nc);
    gw = await startGateway({ nc, listen: "127.0.0.1:0", log: quietLog, loaderTimeoutMs: 1500, listTimeoutMs: 1000, shutdownGraceMs: 1000 });
    client = new api.VesperClient(gw.address, credentials.createInsecure());
  });

  after(async () => {
    client.close();
    await gw.close();
    await nc.close();
  });

  it("forwards VirtInsmod to the loader and returns its response", async () => {
    const guest = uniq("web");
    const seen: api.VirtInsmodRequest[] = [];
    const loader = await fakeLoader(nc, {
      insmod: async (req) => {
        seen.push(req);
        return { guest: req.guest, probe: req.probe, instance: `vesper-${req.probe}`, events: ["sched/sched_process_exit"] };
      },
    });
    try {
      const res = await unary(client.virtInsmod.bind(client), {
        guest,
        probe: "process",
        options: { buffer_kb: "512" },
      });
      assert.deepEqual(res, { guest, probe: "process", instance: "vesper-process", events: ["sched/sched_process_exit"] });
      assert.equal(seen.length, 1);
      assert.deepEqual(seen[0]?.options, { buffer_kb: "512" });
    } finally {
      await loader.stop();
    }
  });

  it("maps loader errors: UNKNOWN_GUEST becomes NOT_FOUND with vesper-error-code", async () => {
    const guest = uniq("ghost");
    const loader = await fakeLoader(nc, {
      insmod: async (req) => {
        throw new VesperError(ErrorCode.UnknownGuest, `guest ${req.guest} is not known`);
      },
      rmmod: async () => {
        throw new VesperError(ErrorCode.KernelRefused, "tracefs said no", { details: ["error_log: bad symbol"] });
      },
    });
    try {
      const err = await unary(client.virtInsmod.bind(client), { guest, probe: "process", options: {} }).then(
        () => assert.fail("should fail"),
        (e: ServiceError) => e,
      );
      assert.equal(err.code, status.NOT_FOUND);
      assert.equal(err.details, `guest ${guest} is not known`);
      assert.deepEqual(err.metadata.get("vesper-error-code"), ["UNKNOWN_GUEST"]);

      const err2 = await unary(client.virtRmmod.bind(client), { guest, probe: "process", flags: 0 }).then(
        () => assert.fail("should fail"),
        (e: ServiceError) => e,
      );
      assert.equal(err2.code, status.FAILED_PRECONDITION);
      assert.equal(err2.details, "tracefs said no\nerror_log: bad symbol");
    } finally {
      await loader.stop();
    }
  });

  it("rejects invalid names before asking the loader", async () => {
    const err = await unary(client.virtInsmod.bind(client), { guest: "a.b", probe: "process", options: {} }).then(
      () => assert.fail("should fail"),
      (e: ServiceError) => e,
    );
    assert.equal(err.code, status.INVALID_ARGUMENT);
    assert.deepEqual(err.metadata.get("vesper-error-code"), ["INVALID_ARGUMENT"]);
  });

  it("answers UNAVAILABLE naming probe-loader when nothing answers on the bus", async () => {
    const err = await unary(client.listGuests.bind(client), { guest: "", withTracepoints: false }).then(
      () => assert.fail("should fail"),
      (e: ServiceError) => e,
    );
    assert.equal(err.code, status.UNAVAILABLE);
    assert.match(err.details, /probe-loader is not answering on vesper\.svc\.loader\.guests: is vesper-host running\?/);
  });

  it("answers DEADLINE_EXCEEDED (TIMEOUT) when the loader is too slow, within the shorter gRPC deadline", async () => {
    const loader = await fakeLoader(nc, { probes: () => new Promise(() => {}) });
    try {
      const t0 = Date.now();
      const err = await unary(client.listProbes.bind(client), {}, 60_000).then(
        () => assert.fail("should fail"),
        (e: ServiceError) => e,
      );
      assert.equal(err.code, status.DEADLINE_EXCEEDED);
      assert.deepEqual(err.metadata.get("vesper-error-code"), ["TIMEOUT"]);
      assert.match(err.details, /probe-loader did not answer/);
      assert.ok(Date.now() - t0 < 3000);
    } finally {
      await loader.stop();
    }
  });

  it("calls the authorize hook before every call", async () => {
    const nc2 = await connectNats();
    const gw2 = await startGateway({
      nc: nc2,
      listen: "127.0.0.1:0",
      log: quietLog,
      authorize: ({ metadata }) => {
        if (metadata.get("authorization")[0] !== "Bearer ok") {
          throw new VesperError(ErrorCode.Unauthenticated, "missing or bad token");
        }
      },
    });
    const c2 = new api.VesperClient(gw2.address, credentials.createInsecure());
    try {
      const err = await unary(c2.listGuests.bind(c2), { guest: "", withTracepoints: false }).then(
        () => assert.fail("should fail"),
        (e: ServiceError) => e,
      );
      assert.equal(err.code, status.UNAUTHENTICATED);
      const w = watch(c2, {});
      await assert.rejects(w.ready, (e: ServiceError) => e.code === status.UNAUTHENTICATED);
    } finally {
      c2.close();
      await gw2.close();
      await nc2.close();
    }
  });

  it("WatchEvents filters by guest, probe and event, and sets stream_seq", async () => {
    const gA = uniq("ga");
    const gB = uniq("gb");
    const byGuest = watch(client, { guest: gA });
    const byProbe = watch(client, { guest: gA, probe: "files" });
    const byEvent = watch(client, { event: "sched_process_exit", guest: gA });
    const byFullEvent = watch(client, { event: "sched/sched_process_exit" });
    await Promise.all([byGuest.ready, byProbe.ready, byEvent.ready, byFullEvent.ready]);

    const published = [
      makeEvent(gA, "process", "sched/sched_process_exit"),
      makeEvent(gB, "process", "sched/sched_process_exit"),
      makeEvent(gA, "files", "vesper_files/open"),
      makeLoss(gA, "process"),
      makeEvent(gA, "process", "sched/sched_process_fork"),
    ];
    const seqs: number[] = [];
    for (const m of published) seqs.push(await publishEvent(js, m));

    const got = await byGuest.messages.take(4);
    assert.deepEqual(
      got.map((m) => m.streamSeq),
      [seqs[0], seqs[2], seqs[3], seqs[4]].map((s) => BigInt(s ?? 0)),
    );
    assert.equal(got[0]?.kind?.$case, "event");
    assert.equal(got[2]?.kind?.$case, "loss");
    const first = got[0]?.kind?.$case === "event" ? got[0].kind.value : undefined;
    assert.equal(first?.guest, gA);
    assert.equal(first?.fields.big?.kind?.value, 18_446_744_073_709_551_615n);

    const files = await byProbe.messages.take(1);
    assert.equal(files[0]?.streamSeq, BigInt(seqs[2] ?? 0));

    // bare event name: only gA's exit (the loss comes too: losses are not filtered by event)
    const exits = await byEvent.messages.take(2);
    assert.deepEqual(
      exits.map((m) => [m.kind?.$case, m.streamSeq]),
      [
        ["event", BigInt(seqs[0] ?? 0)],
        ["loss", BigInt(seqs[3] ?? 0)],
      ],
    );
    // full name, every guest: gA's and gB's exits (plus gA's loss), in stream order
    const all = await byFullEvent.messages.take(3);
    assert.deepEqual(
      all.map((m) => m.streamSeq),
      [seqs[0], seqs[1], seqs[3]].map((s) => BigInt(s ?? 0)),
    );
    for (const w of [byGuest, byProbe, byEvent, byFullEvent]) w.call.cancel();
  });

  it("WatchEvents replays from from_stream_seq", async () => {
    const g = uniq("replay");
    const seqs: number[] = [];
    for (let i = 0; i < 3; i++) seqs.push(await publishEvent(js, makeEvent(g, "process", "sched/sched_process_exit", { pid: i })));
    const from = seqs[1] ?? 0;
    const w = watch(client, { guest: g, fromStreamSeq: BigInt(from) });
    const got = await w.messages.take(2);
    assert.deepEqual(
      got.map((m) => [m.streamSeq, m.kind?.$case === "event" ? m.kind.value.pid : -1]),
      [
        [BigInt(from), 1],
        [BigInt(seqs[2] ?? 0), 2],
      ],
    );
    // then live events follow on the same stream
    const later = await publishEvent(js, makeEvent(g, "process", "sched/sched_process_exit", { pid: 3 }));
    const live = await w.messages.take(1);
    assert.equal(live[0]?.streamSeq, BigInt(later));
    w.call.cancel();
  });

  it("WatchEvents without from_stream_seq sends only new events", async () => {
    const g = uniq("new");
    await publishEvent(js, makeEvent(g, "process", "sched/sched_process_exit", { pid: 1 }));
    const w = watch(client, { guest: g });
    await w.ready;
    const seq = await publishEvent(js, makeEvent(g, "process", "sched/sched_process_exit", { pid: 2 }));
    const got = await w.messages.take(1);
    assert.equal(got[0]?.streamSeq, BigInt(seq));
    w.call.cancel();
  });

  it("WatchEvents delivers a burst in order through a small buffer", async () => {
    const nc2 = await connectNats();
    const gw2 = await startGateway({ nc: nc2, listen: "127.0.0.1:0", log: quietLog, watchBufferMessages: 4 });
    const c2 = new api.VesperClient(gw2.address, credentials.createInsecure());
    try {
      const g = uniq("burst");
      const n = 300;
      const seqs = await Promise.all(
        Array.from({ length: n }, (_, i) => publishEvent(js, makeEvent(g, "process", "sched/sched_process_exit", { pid: i }))),
      );
      const w = watch(c2, { guest: g, fromStreamSeq: BigInt(Math.min(...seqs)) });
      const got = await w.messages.take(n, 10_000);
      assert.deepEqual(
        got.map((m) => m.streamSeq),
        [...seqs].sort((a, b) => a - b).map(BigInt),
      );
      w.call.cancel();
    } finally {
      c2.close();
      await gw2.close();
      await nc2.close();
    }
  });

  it("invalid WatchEvents requests fail with INVALID_ARGUMENT", async () => {
    const w = watch(client, { guest: "bad guest" });
    await assert.rejects(w.ready, (e: ServiceError) => e.code === status.INVALID_ARGUMENT);
  });

  it("client cancel stops the watch; close() ends open watches with UNAVAILABLE", async () => {
    const nc2 = await connectNats();
    const gw2 = await startGateway({ nc: nc2, listen: "127.0.0.1:0", log: quietLog, shutdownGraceMs: 2000 });
    const c2 = new api.VesperClient(gw2.address, credentials.createInsecure());
    try {
      const cancelled = watch(c2, { guest: uniq("c") });
      await cancelled.ready;
      const ended = new Promise<ServiceError>((resolve) => cancelled.call.on("error", resolve));
      cancelled.call.cancel();
      assert.equal((await ended).code, status.CANCELLED);

      const open = watch(c2, { guest: uniq("o") });
      await open.ready;
      const status2 = new Promise<ServiceError>((resolve) => open.call.on("error", resolve));
      open.call.on("data", () => {});
      const t0 = Date.now();
      await gw2.close();
      assert.ok(Date.now() - t0 < 1500, "close() did not wait for the grace period");
      const e = await status2;
      assert.equal(e.code, status.UNAVAILABLE);
      assert.match(e.details, /shutting down/);
    } finally {
      c2.close();
      await gw2.close();
      await nc2.close();
    }
  });
});
