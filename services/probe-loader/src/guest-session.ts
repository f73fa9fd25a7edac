/**
 * The host's view of one guest's ring: the guest's outstanding idle request, the
 * commands waiting for it, and the commands waiting for their Result. Commands go
 * out only as answers to an idle request (the VESPER rule); when there is nothing
 * to do the idle request is held and answered with a Ping after idleHoldMs, which
 * doubles as the guest's heartbeat.
 */
import { ErrorCode, ring, VesperError, type Logger } from "@vesper/protocol";

export type CommandKind = NonNullable<ring.Command["kind"]>;

interface Inflight {
  readonly kind: CommandKind["$case"];
  resolve(result: ring.Result): void;
  reject(err: VesperError): void;
  timer: NodeJS.Timeout;
}

interface Queued {
  readonly command: ring.Command;
  readonly inflight: Omit<Inflight, "timer">;
  readonly timeoutMs: number;
}

export interface GuestSessionOptions {
  idleHoldMs: number;
  /** A guest silent for longer than this is offline. */
  offlineAfterMs: number;
  /** Sends a command as the answer to the guest message `replyTo`. */
  send(replyTo: bigint, command: ring.Command): void;
  log: Logger;
}

export class GuestSession {
  hello: ring.Hello | undefined;
  transport = "unknown";
  lastSeen = 0;
  /** Round trip of the last Ping, and the guest clock estimate it gave. */
  lastRttMs: number | undefined;
  /** guest CLOCK_MONOTONIC minus host unix time, ns (NTP-style, ± rtt/2). */
  clockOffsetNs: bigint | undefined;
  /** The frontend said Goodbye (until its next Hello): why, and when. */
  left: { reason: string; probesKept: boolean; atMs: number } | undefined;
  private idleSeq: bigint | undefined;
  private holdTimer: NodeJS.Timeout | undefined;
  private readonly queue: Queued[] = [];
  private readonly inflight = new Map<bigint, Inflight>();
  private nextCommandId = 1n;

  constructor(
    readonly id: string,
    private readonly opts: GuestSessionOptions,
  ) {}

  /** It said Hello and has not said Goodbye since. */
  get greeted(): boolean {
    return this.hello !== undefined && this.left === undefined;
  }

  get online(): boolean {
    return this.greeted && Date.now() - this.lastSeen < this.opts.offlineAfterMs;
  }

  touch(): void {
    this.lastSeen = Date.now();
  }

  /** A new Hello: the guest started over, so whatever it was asked before is void. */
  reset(hello: ring.Hello): void {
    this.hello = hello;
    this.left = undefined;
    this.idleSeq = undefined;
    clearTimeout(this.holdTimer);
    for (const [id, f] of this.inflight) {
      clearTimeout(f.timer);
      f.reject(new VesperError(ErrorCode.Unavailable, `guest ${this.id} restarted its ring before answering command ${id}`));
    }
    this.inflight.clear();
    this.touch();
  }

  /** The guest posted an idle request: answer it now if work is queued, else hold it. */
  onIdle(seq: bigint): void {
    this.touch();
    this.idleSeq = seq;
    this.dispatch();
  }

  onResult(result: ring.Result): boolean {
    this.touch();
    const f = this.inflight.get(result.commandId);
    if (f === undefined) return false;
    this.inflight.delete(result.commandId);
    clearTimeout(f.timer);
    f.resolve(result);
    return true;
  }

  /** Queues a command; resolves with the guest's Result. */
  run(kind: CommandKind, timeoutMs: number): Promise<ring.Result> {
    return new Promise<ring.Result>((resolve, reject) => {
      const command: ring.Command = { commandId: this.nextCommandId++, kind };
      this.queue.push({ command, timeoutMs, inflight: { kind: kind.$case, resolve, reject } });
      this.dispatch();
    });
  }

  /** The frontend said Goodbye: what waits for it fails now, not at its timeout. */
  leave(goodbye: ring.Goodbye): NonNullable<GuestSession["left"]> {
    this.touch();
    const left = { reason: goodbye.reason, probesKept: goodbye.probesKept, atMs: Date.now() };
    this.left = left;
    if (!goodbye.probesKept && this.hello !== undefined) this.hello.loadedProbes = [];
    this.close(`guest ${this.id}'s frontend stopped (${goodbye.reason || "no reason given"})`);
    return left;
  }

  close(reason: string): void {
    this.idleSeq = undefined;
    clearTimeout(this.holdTimer);
    const err = new VesperError(ErrorCode.Unavailable, reason);
    for (const f of this.inflight.values()) {
      clearTimeout(f.timer);
      f.reject(err);
    }
    this.inflight.clear();
    for (const q of this.queue.splice(0)) q.inflight.reject(err);
  }

  private dispatch(): void {
    if (this.idleSeq === undefined) return;
    const next = this.queue.shift();
    clearTimeout(this.holdTimer);
    if (next === undefined) {
      const seq = this.idleSeq;
      this.holdTimer = setTimeout(() => {
        if (this.idleSeq === seq && this.queue.length === 0) this.ping();
      }, this.opts.idleHoldMs);
      this.holdTimer.unref();
      return;
    }
    const replyTo = this.idleSeq;
    this.idleSeq = undefined;
    const { command, inflight, timeoutMs } = next;
    const timer = setTimeout(() => {
      this.inflight.delete(command.commandId);
      inflight.reject(
        new VesperError(ErrorCode.Timeout, `guest ${this.id} did not answer ${inflight.kind} within ${timeoutMs} ms`),
      );
    }, timeoutMs);
    this.inflight.set(command.commandId, { ...inflight, timer });
    this.opts.send(replyTo, command);
  }

  private ping(): void {
    const sent = process.hrtime.bigint();
    const hostUnixNs = BigInt(Date.now()) * 1_000_000n;
    this.run({ $case: "ping", value: { hostUnixNs } }, this.opts.offlineAfterMs).then(
      (r) => {
        const rttNs = process.hrtime.bigint() - sent;
        this.lastRttMs = Number(rttNs) / 1e6;
        if (r.detail?.$case === "pong") {
          this.clockOffsetNs = r.detail.value.monoNs - (hostUnixNs + rttNs / 2n);
        }
      },
      (err: unknown) => this.opts.log.debug({ guest: this.id, err: (err as Error).message }, "ping failed"),
    );
  }
}
