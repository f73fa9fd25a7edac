/**
 * The guest end of the ring. The guest initiates everything (the VESPER rule):
 * Hello, then one outstanding IdleRequest that the host answers with a Command.
 * The guest executes it, sends a Result and posts the next IdleRequest. Data
 * messages are answered by DataAcks, which the handler checks against what it
 * sent. Any host message that answers nothing outstanding is dropped and counted.
 * If an answer does not come in time (host restarted, bridge reconnected), the
 * client starts over with a new Hello, waiting longer (with jitter) each time no
 * Welcome comes, so a host that is slow to answer is not buried in Hellos from
 * every guest at once. A stopping frontend says Goodbye and never starts over.
 */
import {
  decodeHostMessage,
  encodeGuestMessage,
  FrameKind,
  PROTOCOL_VERSION,
  ring,
  type Logger,
} from "@vesper/protocol";
import { encodeDataMessage, type DataMessage } from "./data-encoder.js";

export type { DataMessage } from "./data-encoder.js";
import type { GuestTransport } from "./transports/transport.js";

export interface CommandHandler {
  hello(): Promise<ring.Hello>;
  handle(command: ring.Command): Promise<ring.Result>;
  /** A DataAck; false when it acknowledges nothing this guest sent (dropped, counted). */
  onAck?(ack: ring.DataAck): boolean;
  /** The host welcomed a Hello: it may have restarted and lost what was in flight. */
  onWelcome?(): void;
}

export interface RingClientOptions {
  guestId: string;
  /** How long to wait for Welcome before saying Hello again; doubles while none comes. Default 3 s. */
  helloTimeoutMs?: number;
  /** Longest wait for a Welcome. Default 30 s. */
  maxHelloTimeoutMs?: number;
  /** Slack on top of the host's idle hold before the idle request counts as lost. */
  idleSlackMs?: number;
  /** Jitter source, [0, 1). Default Math.random. */
  random?: () => number;
}

export interface RingClientStats {
  hellos: number;
  commands: number;
  dropped: number;
  dataMessages: number;
  acks: number;
}

/** What the client waits for: a Welcome, a Command, or (after a refusal) the end of a pause before its next Hello. */
type Outstanding = { readonly seq: bigint; readonly kind: "hello" | "idle" | "pause" };

/** Hellos of one round kept for a late Welcome (a slow host answers each of them). */
const HELLO_ROUND_MAX = 8;

export class RingClient {
  readonly stats: RingClientStats = { hellos: 0, commands: 0, dropped: 0, dataMessages: 0, acks: 0 };
  private seq = 0n;
  private outstanding: Outstanding | undefined;
  private idleHoldMs = 5_000;
  private timer: NodeJS.Timeout | undefined;
  private readonly helloTimeoutMs: number;
  private readonly maxHelloTimeoutMs: number;
  private readonly idleSlackMs: number;
  private readonly random: () => number;
  private connected = false;
  private closing = false;
  /** Hellos sent since the last Welcome, oldest first: a Welcome to any of them will do. */
  private helloRound: bigint[] = [];
  /** Hellos in a row that got no Welcome (timed out or refused): the next wait doubles. */
  private helloFailures = 0;

  constructor(
    private readonly transport: GuestTransport,
    private readonly handler: CommandHandler,
    private readonly log: Logger,
    private readonly opts: RingClientOptions,
  ) {
    this.helloTimeoutMs = opts.helloTimeoutMs ?? 3_000;
    this.maxHelloTimeoutMs = Math.max(this.helloTimeoutMs, opts.maxHelloTimeoutMs ?? 30_000);
    this.idleSlackMs = opts.idleSlackMs ?? 5_000;
    this.random = opts.random ?? Math.random;
  }

  /** True once the host has welcomed this client (and until an answer goes missing). */
  get isConnected(): boolean {
    return this.connected;
  }

  /** Runs until the signal aborts or the transport ends. */
  async run(signal: AbortSignal): Promise<void> {
    const onAbort = (): void => void this.transport.close();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      await this.sayHello();
      for await (const bytes of this.transport.incoming()) {
        if (signal.aborted) break;
        await this.onHostMessage(bytes);
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      clearTimeout(this.timer);
    }
  }

  /** Probe data does not wait for an idle request; the host answers it with a DataAck. */
  async sendData(data: DataMessage): Promise<void> {
    this.stats.dataMessages++;
    this.seq++;
    // The hot path: a hand-rolled encoder (same bytes as the generated one), framed in place
    // when the transport is a byte stream.
    const t = this.transport;
    const parts = encodeDataMessage(PROTOCOL_VERSION, this.opts.guestId, this.seq, data, t.sendParts !== undefined);
    if (t.sendParts !== undefined) await t.sendParts(FrameKind.Data, parts);
    else await t.send(FrameKind.Data, parts.length === 1 ? parts[0]! : Buffer.concat(parts));
  }

  /**
   * Sends a data message now if the transport can without waiting (the urgent path);
   * false when it cannot (then use sendData). Throws what the write throws.
   */
  trySendDataNow(data: DataMessage): boolean {
    const t = this.transport;
    if (t.trySendNow === undefined) return false;
    const parts = encodeDataMessage(PROTOCOL_VERSION, this.opts.guestId, this.seq + 1n, data, t.framed === true);
    if (!t.trySendNow(FrameKind.Data, parts)) return false;
    this.seq++;
    this.stats.dataMessages++;
    return true;
  }

  /**
   * The frontend is stopping: from now on the client never says Hello again, and it
   * refuses commands that would load a probe (RESULT_CODE_UNAVAILABLE). Pings and
   * unloads are still answered while the frontend unloads its probes.
   */
  beginClose(): void {
    this.closing = true;
  }

  /** Tells the host this frontend stops on purpose (no answer comes). Call after beginClose, last. */
  async goodbye(value: ring.Goodbye): Promise<void> {
    this.beginClose();
    this.outstanding = undefined;
    clearTimeout(this.timer);
    this.connected = false;
    await this.transport.send(FrameKind.Control, this.encode({ $case: "goodbye", value }));
  }

  /** Stats travel with the probe's data, to the probe-listener (the control side refuses them). */
  async sendStats(stats: ring.ProbeStats): Promise<void> {
    await this.transport.send(FrameKind.Data, this.encode({ $case: "stats", value: stats }));
  }

  private encode(body: ring.GuestMessage["body"]): Uint8Array {
    this.seq++;
    return encodeGuestMessage({ version: PROTOCOL_VERSION, guestId: this.opts.guestId, seq: this.seq, body });
  }

  private async post(kind: "hello" | "idle", body: ring.GuestMessage["body"]): Promise<void> {
    const bytes = this.encode(body);
    this.outstanding = { seq: this.seq, kind };
    if (kind === "hello") {
      this.helloRound.push(this.seq);
      if (this.helloRound.length > HELLO_ROUND_MAX) this.helloRound.shift();
    }
    this.arm(kind === "hello" ? this.helloWaitMs() : this.idleHoldMs + this.idleSlackMs);
    await this.transport.send(FrameKind.Control, bytes);
  }

  /** The wait for a Welcome: doubling per Hello that got none, capped, ±25 % so guests drift apart. */
  private helloWaitMs(): number {
    const base = Math.min(this.maxHelloTimeoutMs, this.helloTimeoutMs * 2 ** Math.min(this.helloFailures, 16));
    return Math.round(base * (0.75 + 0.5 * this.random()));
  }

  private arm(ms: number): void {
    clearTimeout(this.timer);
    const expected = this.outstanding;
    this.timer = setTimeout(() => {
      // A starved process runs its timers before the I/O that piled up meanwhile; the
      // host's answer may be waiting in the socket. Look once more after the poll phase.
      setImmediate(() => {
        if (this.outstanding !== expected) return;
        this.connected = false;
        if (this.closing) return;
        if (expected?.kind === "hello") this.helloFailures++;
        if (expected?.kind !== "pause") this.log.warn({ waitingFor: expected?.kind, ms }, "no answer from host; saying hello again");
        void this.sayHello().catch((err: unknown) => this.log.error({ err }, "hello failed"));
      });
    }, ms);
    this.timer.unref();
  }

  private async sayHello(): Promise<void> {
    if (this.closing) return;
    this.stats.hellos++;
    const hello = await this.handler.hello();
    await this.post("hello", { $case: "hello", value: hello });
  }

  private async onHostMessage(bytes: Uint8Array): Promise<void> {
    let msg: ring.HostMessage;
    try {
      msg = decodeHostMessage(bytes);
    } catch (err) {
      this.stats.dropped++;
      this.log.warn({ err: (err as Error).message }, "dropping undecodable host message");
      return;
    }
    if (msg.body?.$case === "ack") {
      // Answers a data message: it must name one we sent, and acknowledge pages we sent.
      const ok = msg.guestId === this.opts.guestId && msg.replyTo > 0n && msg.replyTo <= this.seq && (this.handler.onAck?.(msg.body.value) ?? false);
      if (ok) this.stats.acks++;
      else {
        this.stats.dropped++;
        this.log.warn({ replyTo: String(msg.replyTo), probe: msg.body.value.probe }, "dropping an ack for nothing we sent");
      }
      return;
    }
    const pending = this.outstanding;
    // A slow host answers every Hello of a round; the first Welcome to any of them ends the round.
    const lateWelcome = pending?.kind === "hello" && msg.body?.$case === "welcome" && this.helloRound.includes(msg.replyTo);
    if (msg.guestId !== this.opts.guestId || pending === undefined || (msg.replyTo !== pending.seq && !lateWelcome)) {
      this.stats.dropped++;
      this.log.warn({ replyTo: String(msg.replyTo), guest: msg.guestId }, "dropping host message that answers nothing outstanding");
      return;
    }
    this.outstanding = undefined;
    clearTimeout(this.timer);
    const body = msg.body;
    switch (body?.$case) {
      case "welcome":
        if (pending.kind !== "hello") break;
        this.helloRound = [];
        this.helloFailures = 0;
        this.connected = true;
        if (body.value.idleHoldMs > 0) this.idleHoldMs = body.value.idleHoldMs;
        this.log.info({ idleHoldMs: this.idleHoldMs }, "host welcomed us");
        this.handler.onWelcome?.();
        await this.post("idle", { $case: "idle", value: {} });
        return;
      case "command": {
        this.stats.commands++;
        const result = this.closing && body.value.kind?.$case === "load"
          ? { commandId: body.value.commandId, code: ring.ResultCode.RESULT_CODE_UNAVAILABLE, message: "the guest frontend is stopping; it takes no new probes", kernelLog: [] }
          : await this.handler.handle(body.value);
        await this.transport.send(FrameKind.Control, this.encode({ $case: "result", value: result }));
        await this.post("idle", { $case: "idle", value: {} });
        return;
      }
      case "error":
        this.log.error({ code: body.value.code, message: body.value.message }, "host refused our request");
        break;
      default:
        break;
    }
    // An error or an answer of the wrong kind: start over after a pause.
    this.connected = false;
    this.helloRound = [];
    this.helloFailures++;
    this.outstanding = { seq: -1n, kind: "pause" };
    this.arm(this.helloWaitMs());
  }
}
