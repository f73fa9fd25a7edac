/** The guest end of the ring against a scripted host (the transport is faked; the protocol is real). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { pino, type Logger } from "pino";
import { decodeGuestMessage, encodeHostMessage, FrameKind, PROTOCOL_VERSION, ring, createLogger } from "@vesper/protocol";
import { RingClient, type CommandHandler } from "../src/ring-client.js";
import type { GuestTransport } from "../src/transports/transport.js";

class FakeTransport implements GuestTransport {
  readonly name = "nats" as const;
  readonly sent: Array<{ kind: FrameKind; msg: ring.GuestMessage }> = [];
  private queue: Uint8Array[] = [];
  private wake: (() => void) | undefined;
  private closed = false;
  private onSend: Array<() => void> = [];
  async send(kind: FrameKind, payload: Uint8Array): Promise<void> {
    this.sent.push({ kind, msg: decodeGuestMessage(payload) });
    for (const f of this.onSend.splice(0)) f();
  }
  deliver(msg: ring.HostMessage): void {
    this.queue.push(encodeHostMessage(msg));
    this.wake?.();
  }
  async *incoming(): AsyncIterable<Uint8Array> {
    while (!this.closed) {
      const m = this.queue.shift();
      if (m !== undefined) yield m;
      else await new Promise<void>((r) => (this.wake = r));
    }
  }
  async close(): Promise<void> {
    this.closed = true;
    this.wake?.();
  }
  /** Resolves when the guest has sent `n` messages in all. */
  async until(n: number): Promise<void> {
    while (this.sent.length < n) await new Promise<void>((r) => this.onSend.push(r));
  }
}

const handler: CommandHandler = {
  async hello() {
    return { kernelRelease: "6.1", bootId: "b", capabilities: undefined, loadedProbes: [], agentVersion: "t", monoNs: 1n };
  },
  async handle(c) {
    return { commandId: c.commandId, code: ring.ResultCode.RESULT_CODE_OK, message: "", kernelLog: [] };
  },
};

const host = (replyTo: bigint, body: ring.HostMessage["body"], guestId = "g1"): ring.HostMessage => ({ version: PROTOCOL_VERSION, guestId, replyTo, body });

test("hello, then one idle request at a time; commands are answered with a result and a new idle request", async () => {
  const t = new FakeTransport();
  const client = new RingClient(t, handler, createLogger("test", "silent"), { guestId: "g1" });
  const abort = new AbortController();
  const running = client.run(abort.signal);
  await t.until(1);
  assert.equal(t.sent[0]!.msg.body?.$case, "hello");
  assert.equal(t.sent[0]!.kind, FrameKind.Control);

  // Unsolicited: answers nothing outstanding, or claims another guest. Dropped and counted.
  t.deliver(host(999n, { $case: "welcome", value: { idleHoldMs: 1000, maxFrameBytes: 0 } }));
  t.deliver(host(t.sent[0]!.msg.seq, { $case: "welcome", value: { idleHoldMs: 1000, maxFrameBytes: 0 } }, "g2"));
  t.deliver(host(t.sent[0]!.msg.seq, { $case: "welcome", value: { idleHoldMs: 1000, maxFrameBytes: 0 } }));
  await t.until(2);
  assert.equal(client.stats.dropped, 2);
  assert.equal(t.sent[1]!.msg.body?.$case, "idle");
  assert.ok(client.isConnected);

  const idleSeq = t.sent[1]!.msg.seq;
  t.deliver(host(idleSeq, { $case: "command", value: { commandId: 5n, kind: { $case: "ping", value: { hostUnixNs: 1n } } } }));
  await t.until(4);
  const result = t.sent[2]!.msg.body;
  assert.equal(result?.$case, "result");
  assert.equal(result.$case === "result" && result.value.commandId, 5n);
  assert.equal(t.sent[3]!.msg.body?.$case, "idle");
  // The same idle request answered twice: the second answer is dropped.
  t.deliver(host(idleSeq, { $case: "command", value: { commandId: 6n, kind: { $case: "ping", value: { hostUnixNs: 1n } } } }));
  await new Promise((r) => setImmediate(r));
  assert.equal(client.stats.commands, 1);
  assert.ok(t.sent.every((s, i) => i === 0 || s.msg.seq > t.sent[i - 1]!.msg.seq), "guest sequence numbers increase");
  abort.abort();
  await running;
});

test("data goes out as data frames without waiting for the host", async () => {
  const t = new FakeTransport();
  const client = new RingClient(t, handler, createLogger("test", "silent"), { guestId: "g1" });
  await client.sendData({ probe: "p", runs: [{ cpu: 0, firstSeq: 1, count: 1, pageSize: 4096, lastLength: 16, data: Buffer.alloc(16) }], loadId: 9n, acked: [{ cpu: 0, seq: 0 }] });
  assert.equal(t.sent[0]!.kind, FrameKind.Data);
  assert.equal(t.sent[0]!.msg.body?.$case, "data");
  const data = t.sent[0]!.msg.body?.$case === "data" ? t.sent[0]!.msg.body.value : undefined;
  assert.equal(data?.loadId, 9n);
});

test("probe stats go out on the data channel, where the probe-listener reads them", async () => {
  // On the control channel the probe-loader answers them with a ring error (unsolicited).
  const t = new FakeTransport();
  const client = new RingClient(t, handler, createLogger("test", "silent"), { guestId: "g1" });
  await client.sendStats({ probe: "p", cpus: [], pagesDropped: 3n, readChecks: [] });
  assert.equal(t.sent[0]!.kind, FrameKind.Data);
  const body = t.sent[0]!.msg.body;
  assert.equal(body?.$case, "stats");
  assert.equal(body?.$case === "stats" && body.value.pagesDropped, 3n);
});

test("a host that stops answering is greeted again", async () => {
  const t = new FakeTransport();
  const client = new RingClient(t, handler, createLogger("test", "silent"), { guestId: "g1", helloTimeoutMs: 50 });
  const abort = new AbortController();
  // The client's timers are unref'd (they must not keep a frontend alive); keep the test's loop up.
  const keepAlive = setInterval(() => {}, 1000);
  const running = client.run(abort.signal);
  await t.until(3);
  assert.deepEqual(t.sent.slice(0, 3).map((s) => s.msg.body?.$case), ["hello", "hello", "hello"]);
  clearInterval(keepAlive);
  abort.abort();
  await running;
});

/** A logger that keeps what the client warns about (the waits it gave up on). */
function recordingLogger(): { log: Logger; warns: Array<Record<string, unknown>> } {
  const warns: Array<Record<string, unknown>> = [];
  const log = pino({ level: "warn" }, { write: (line: string) => void warns.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, warns };
}

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

test("while no Welcome comes, each Hello waits twice as long as the one before, up to a cap, with jitter", async () => {
  const keepAlive = setInterval(() => {}, 1000);
  try {
    const waits = async (random: () => number, n: number): Promise<unknown[]> => {
      const t = new FakeTransport();
      const { log, warns } = recordingLogger();
      const client = new RingClient(t, handler, log, { guestId: "g1", helloTimeoutMs: 20, maxHelloTimeoutMs: 80, random });
      const abort = new AbortController();
      const running = client.run(abort.signal);
      await until(() => warns.length >= n);
      abort.abort();
      await running;
      assert.ok(t.sent.every((s) => s.msg.body?.$case === "hello"));
      return warns.slice(0, n).map((w) => w.ms);
    };
    assert.deepEqual(await waits(() => 0.5, 5), [20, 40, 80, 80, 80]);
    // ±25 %: guests that lost the host together do not all come back in the same instant.
    assert.deepEqual(await waits(() => 0, 2), [15, 30]);
    assert.deepEqual(await waits(() => 0.999, 2), [25, 50]);
  } finally {
    clearInterval(keepAlive);
  }
});

test("a Welcome to an earlier Hello of the round is taken (a slow host answers each); the later ones are dropped", async () => {
  const t = new FakeTransport();
  const client = new RingClient(t, handler, createLogger("test", "silent"), { guestId: "g1", helloTimeoutMs: 20, random: () => 0.5 });
  const keepAlive = setInterval(() => {}, 1000);
  const abort = new AbortController();
  const running = client.run(abort.signal);
  try {
    await t.until(2);
    const [first, second] = t.sent.map((s) => s.msg);
    assert.equal(second!.body?.$case, "hello");
    t.deliver(host(first!.seq, { $case: "welcome", value: { idleHoldMs: 60_000, maxFrameBytes: 0 } }));
    await until(() => t.sent.some((s) => s.msg.body?.$case === "idle"));
    assert.ok(client.isConnected);
    const hellos = t.sent.filter((s) => s.msg.body?.$case === "hello").length;
    t.deliver(host(second!.seq, { $case: "welcome", value: { idleHoldMs: 60_000, maxFrameBytes: 0 } }));
    await until(() => client.stats.dropped === 1);
    assert.ok(client.isConnected, "the second Welcome changes nothing");
    assert.equal(t.sent.filter((s) => s.msg.body?.$case === "hello").length, hellos, "no Hello after the Welcome");
  } finally {
    clearInterval(keepAlive);
    abort.abort();
    await running;
  }
});

test("a closing client takes no new probe, never says Hello again, and says Goodbye", async () => {
  const t = new FakeTransport();
  const handled: string[] = [];
  const counting: CommandHandler = {
    hello: handler.hello,
    async handle(c) {
      handled.push(c.kind?.$case ?? "");
      return handler.handle(c);
    },
  };
  const client = new RingClient(t, counting, createLogger("test", "silent"), { guestId: "g1", helloTimeoutMs: 20, idleSlackMs: 10 });
  const keepAlive = setInterval(() => {}, 1000);
  const abort = new AbortController();
  const running = client.run(abort.signal);
  try {
    await t.until(1);
    t.deliver(host(t.sent[0]!.msg.seq, { $case: "welcome", value: { idleHoldMs: 10_000, maxFrameBytes: 0 } }));
    await t.until(2);
    client.beginClose();
    const spec = ring.ProbeSpec.fromPartial({ name: "p", tracepoints: [{ system: "sched", event: "sched_process_exit" }] });
    t.deliver(host(t.sent[1]!.msg.seq, { $case: "command", value: { commandId: 1n, kind: { $case: "load", value: { spec } } } }));
    await t.until(4);
    const refused = t.sent[2]!.msg.body;
    assert.equal(refused?.$case === "result" && refused.value.code, ring.ResultCode.RESULT_CODE_UNAVAILABLE);
    assert.deepEqual(handled, [], "the load never reached the frontend");
    // A ping is still answered (the host's heartbeat while the probes are unloaded).
    t.deliver(host(t.sent[3]!.msg.seq, { $case: "command", value: { commandId: 2n, kind: { $case: "ping", value: { hostUnixNs: 1n } } } }));
    await t.until(6);
    assert.deepEqual(handled, ["ping"]);
    await client.goodbye({ reason: "SIGTERM", probesKept: false });
    const bye = t.sent.at(-1)!;
    assert.equal(bye.kind, FrameKind.Control);
    assert.deepEqual(bye.msg.body, { $case: "goodbye", value: { reason: "SIGTERM", probesKept: false } });
    assert.ok(!client.isConnected);
    // Unanswered idle requests from before would have timed out by now; no Hello follows.
    const sent = t.sent.length;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(t.sent.length, sent, "nothing after the goodbye");
  } finally {
    clearInterval(keepAlive);
    abort.abort();
    await running;
  }
});

test("a closing client whose idle request goes unanswered does not start over", async () => {
  const t = new FakeTransport();
  const { log, warns } = recordingLogger();
  const client = new RingClient(t, handler, log, { guestId: "g1", helloTimeoutMs: 20, idleSlackMs: 10 });
  const keepAlive = setInterval(() => {}, 1000);
  const abort = new AbortController();
  const running = client.run(abort.signal);
  try {
    await t.until(1);
    t.deliver(host(t.sent[0]!.msg.seq, { $case: "welcome", value: { idleHoldMs: 10, maxFrameBytes: 0 } }));
    await t.until(2);
    client.beginClose();
    await until(() => !client.isConnected); // the idle request's 20 ms ran out
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(t.sent.map((s) => s.msg.body?.$case), ["hello", "idle"]);
    assert.deepEqual(warns, []);
  } finally {
    clearInterval(keepAlive);
    abort.abort();
    await running;
  }
});
