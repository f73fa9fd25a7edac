/** The guest end of the ring against a scripted host (the transport is faked; the protocol is real). */
import assert from "node:assert/strict";
import { test } from "node:test";
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
