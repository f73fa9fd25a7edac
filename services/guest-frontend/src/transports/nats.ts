/**
 * NATS transport, for containers, networked guests and frontends that run on the
 * host itself. Each NATS message is one ring message; the subject says its kind,
 * so no framing is needed.
 */
import { connect, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { FrameKind, subjects, type Logger } from "@vesper/protocol";
import type { GuestTransport } from "./transport.js";

const FLUSH_EVERY_BYTES = 1024 * 1024;

export interface NatsTransportOptions {
  servers: string;
  guestId: string;
  /** A creds file or user/pass as issued per guest (permissions limit it to its own subjects). */
  user?: string;
  pass?: string;
  token?: string;
}

export class NatsGuestTransport implements GuestTransport {
  readonly name = "nats" as const;
  private readonly sub: Subscription;
  private unflushed = 0;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly guestId: string,
  ) {
    this.sub = nc.subscribe(subjects.ringDown(guestId));
  }

  static async open(opts: NatsTransportOptions, log: Logger): Promise<NatsGuestTransport> {
    const nc = await connect({
      servers: opts.servers,
      name: `vesper-guest-${opts.guestId}`,
      maxReconnectAttempts: -1,
      ...(opts.user !== undefined ? { user: opts.user, pass: opts.pass ?? "" } : {}),
      ...(opts.token !== undefined ? { token: opts.token } : {}),
    });
    log.info({ servers: opts.servers }, "nats transport connected");
    void (async () => {
      for await (const s of nc.status()) log.info({ status: s.type }, "nats status");
    })();
    return new NatsGuestTransport(nc, opts.guestId);
  }

  async send(kind: FrameKind, payload: Uint8Array): Promise<void> {
    const subject = kind === FrameKind.Data ? subjects.ringUpData(this.guestId) : subjects.ringUpCtl(this.guestId);
    this.nc.publish(subject, payload);
    // publish() only buffers; a flush every MiB bounds what sits in the client and
    // turns a slow server into backpressure on the page readers.
    this.unflushed += payload.length;
    if (this.unflushed >= FLUSH_EVERY_BYTES) {
      this.unflushed = 0;
      await this.nc.flush();
    }
  }

  readonly framed = false;

  trySendNow(kind: FrameKind, parts: readonly Buffer[]): boolean {
    if (this.unflushed >= FLUSH_EVERY_BYTES) return false; // the async path flushes
    const payload = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    const subject = kind === FrameKind.Data ? subjects.ringUpData(this.guestId) : subjects.ringUpCtl(this.guestId);
    this.nc.publish(subject, payload);
    this.unflushed += payload.length;
    return true;
  }

  async *incoming(): AsyncIterable<Uint8Array> {
    for await (const m of this.sub) yield m.data;
  }

  async close(): Promise<void> {
    await this.nc.drain().catch(() => undefined);
  }
}
