/**
 * Publishes records to the JetStream events stream with a bounded number of
 * acks outstanding: fast (acks are pipelined), and a slow server turns into
 * backpressure on the caller instead of an unbounded queue. Message ids make a
 * re-sent record a duplicate the stream drops, not a second event.
 */
import type { JetStreamClient } from "@nats-io/jetstream";
import type { MsgHdrs } from "@nats-io/transport-node";
import type { LiveFeed } from "@vesper/host-common";
import type { Logger } from "@vesper/protocol";

export interface PublisherStats {
  published: number;
  failed: number;
  inflight: number;
}

export class EventPublisher {
  readonly stats: PublisherStats = { published: 0, failed: 0, inflight: 0 };
  private waiters: Array<() => void> = [];

  constructor(
    private readonly js: JetStreamClient,
    private readonly log: Logger,
    /** Offered every record first, before it waits for room or is stored. */
    private readonly live?: LiveFeed,
    private readonly maxInflight = 2048,
  ) {}

  /**
   * Resolves once the record is handed over, with `stored`: the stream's ack (it
   * rejects when the record was not stored). Awaits while too many acks are outstanding.
   */
  async publish(subject: string, data: Uint8Array, msgID: string, headers?: MsgHdrs): Promise<{ stored: Promise<void> }> {
    this.live?.offer(subject, data, msgID, headers);
    while (this.stats.inflight >= this.maxInflight) {
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    this.stats.inflight++;
    const stored = this.js.publish(subject, data, headers === undefined ? { msgID } : { msgID, headers }).then(
      () => {
        this.stats.published++;
        this.done();
      },
      (err: unknown) => {
        this.stats.failed++;
        this.log.warn({ subject, err: (err as Error).message }, "an event was not stored; the guest sends its page again");
        this.done();
        throw err;
      },
    );
    // The caller may stop caring (e.g. after a detach); a rejection must not go unhandled.
    stored.catch(() => undefined);
    return { stored };
  }

  private done(): void {
    this.stats.inflight--;
    const w = this.waiters.shift();
    if (w !== undefined) w();
  }

  /** Waits until every outstanding publish is acked (or failed). */
  async flush(): Promise<void> {
    while (this.stats.inflight > 0) await new Promise<void>((r) => setTimeout(r, 5));
  }
}
