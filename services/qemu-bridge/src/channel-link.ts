/**
 * One guest's virtio-serial channel carried onto NATS. Frames from the guest are
 * routed by kind (control, data) to the guest's ring subjects without decoding
 * protobuf; host answers on the guest's down subject are framed and written back.
 * The guest id comes from which socket this is, never from what the guest says;
 * the loader and listener drop messages that claim another id.
 */
import { createConnection, type Socket } from "node:net";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { bus, encodeFrame, FrameDecoder, FrameKind, subjects, type Logger } from "@vesper/protocol";
import type { GuestChannel } from "./guest-discovery.js";

export interface LinkCounters {
  framesUp: number;
  framesDown: number;
  bytesUp: number;
  frameErrors: number;
  bytesSkipped: number;
  connects: number;
}

const RETRY_MS = 250;

export class ChannelLink {
  readonly counters: LinkCounters = { framesUp: 0, framesDown: 0, bytesUp: 0, frameErrors: 0, bytesSkipped: 0, connects: 0 };
  private socket: Socket | undefined;
  private down: Subscription | undefined;
  private stopped = false;
  private retry: NodeJS.Timeout | undefined;
  private connected = false;

  constructor(
    readonly channel: GuestChannel,
    private readonly nc: NatsConnection,
    private readonly log: Logger,
    private readonly maxFrameBytes: number,
  ) {}

  get isConnected(): boolean {
    return this.connected;
  }

  start(): void {
    this.down = this.nc.subscribe(subjects.ringDown(this.channel.guest));
    void (async () => {
      for await (const m of this.down!) {
        const s = this.socket;
        if (s === undefined || !this.connected) continue; // the guest re-sends Hello when it hears nothing
        s.write(encodeFrame(FrameKind.Control, m.data, this.maxFrameBytes));
        this.counters.framesDown++;
      }
    })();
    this.connect();
  }

  private connect(): void {
    if (this.stopped) return;
    const { guest, path } = this.channel;
    // A fresh decoder per connection: a reconnect may land mid-frame and resynchronises.
    const decoder = new FrameDecoder(this.maxFrameBytes);
    const s = createConnection(path);
    this.socket = s;
    s.setNoDelay?.(true);
    s.on("connect", () => {
      this.connected = true;
      this.counters.connects++;
      this.log.info({ guest, path }, "guest channel connected");
      this.notice(true, "connected");
    });
    s.on("data", (chunk: Buffer) => {
      this.counters.bytesUp += chunk.length;
      for (const r of decoder.push(chunk)) {
        if ("error" in r) {
          this.counters.frameErrors++;
          this.log.warn({ guest, err: r.error.message }, "bad frame from guest");
          continue;
        }
        this.counters.framesUp++;
        const subject = r.frame.kind === FrameKind.Data ? subjects.ringUpData(guest) : subjects.ringUpCtl(guest);
        this.nc.publish(subject, r.frame.payload);
      }
      this.counters.bytesSkipped = decoder.stats.bytesSkipped;
    });
    s.on("error", (err) => {
      this.log.debug({ guest, err: err.message }, "guest channel error");
    });
    s.on("close", () => {
      if (this.connected) {
        this.log.info({ guest }, "guest channel closed");
        this.notice(false, "closed");
      }
      this.connected = false;
      if (!this.stopped) {
        this.retry = setTimeout(() => this.connect(), RETRY_MS);
        this.retry.unref();
      }
    });
  }

  private notice(connected: boolean, reason: string): void {
    const ev: bus.ChannelEvent = { guest: this.channel.guest, connected, transport: `virtio-serial (${this.channel.source})`, reason };
    this.nc.publish(subjects.channel(this.channel.guest), bus.ChannelEvent.encode(ev).finish());
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    this.down?.unsubscribe();
    this.socket?.destroy();
    if (this.connected) this.notice(false, "bridge stopped");
    this.connected = false;
  }
}
