/**
 * The events stream's live mirror inside one host process. The probe-listener offers
 * every record it hands to JetStream here first; a gateway in the same process serves
 * `WatchEvents{live}` from it. That saves the bus round trip between storing a record
 * and a consumer getting it (one process wake-up each way, most of a millisecond on a
 * busy host) for watchers to whom the first notice matters more than a stream sequence:
 * a cluster manager waiting for a service to die.
 *
 * Offering never blocks or fails the listener. Each watcher has a bounded queue; one that
 * falls behind is ended with an error (it learns it missed records) instead of being
 * silently thinned. A record re-sent with the same message id (the guest sends a page
 * again when its store failed) is offered once, as the stream stores it once.
 */
import type { MsgHdrs } from "@nats-io/transport-node";
import { ErrorCode, guestProbeOfEventsSubject, VesperError } from "@vesper/protocol";

export interface LiveRecord {
  /** vesper.events.<guest>.<probe> */
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: MsgHdrs | undefined;
}

export interface LiveFilter {
  /** Empty or absent: any. */
  guest?: string;
  probe?: string;
}

export interface LiveWatchOptions {
  /** Records queued for a watcher that has not taken them; one more ends the watch. */
  maxQueued: number;
  signal?: AbortSignal;
}

export interface LiveFeedStats {
  offered: number;
  repeats: number;
  /** Watches ended because they fell behind. */
  overflows: number;
}

/** Recent message ids remembered for repeats (JetStream's duplicate window is time-based; re-sends come within seconds). */
const RECENT_IDS = 16_384;

export class LiveFeed {
  readonly stats: LiveFeedStats = { offered: 0, repeats: 0, overflows: 0 };
  private readonly subs = new Set<LiveSubscription>();
  private readonly recent = new Set<string>();
  private readonly recentOrder: string[] = [];
  private recentHead = 0;

  get watchers(): number {
    return this.subs.size;
  }

  /** A record on its way to the events stream. Free when nobody watches live. */
  offer(subject: string, data: Uint8Array, msgID: string, headers?: MsgHdrs): void {
    if (this.subs.size === 0) return;
    if (this.recent.has(msgID)) {
      this.stats.repeats++;
      return;
    }
    this.remember(msgID);
    this.stats.offered++;
    const rec: LiveRecord = { subject, data, headers };
    let guest: string | undefined;
    let probe: string | undefined;
    for (const s of this.subs) {
      if (s.guest !== "" || s.probe !== "") {
        if (guest === undefined) [guest, probe] = guestProbeOfEventsSubject(subject);
        if ((s.guest !== "" && s.guest !== guest) || (s.probe !== "" && s.probe !== probe)) continue;
      }
      if (!s.push(rec)) this.stats.overflows++;
    }
  }

  /** Records offered from now on that match the filter, until the signal aborts or the watcher falls behind (then it throws). */
  watch(filter: LiveFilter, opts: LiveWatchOptions): AsyncIterableIterator<LiveRecord> {
    const sub = new LiveSubscription(filter.guest ?? "", filter.probe ?? "", Math.max(1, opts.maxQueued), opts.signal, () => this.subs.delete(sub));
    if (!sub.ended) this.subs.add(sub);
    return sub;
  }

  private remember(id: string): void {
    if (this.recentOrder.length < RECENT_IDS) this.recentOrder.push(id);
    else {
      this.recent.delete(this.recentOrder[this.recentHead]!);
      this.recentOrder[this.recentHead] = id;
      this.recentHead = (this.recentHead + 1) % RECENT_IDS;
    }
    this.recent.add(id);
  }
}

class LiveSubscription implements AsyncIterableIterator<LiveRecord> {
  ended = false;
  private queue: LiveRecord[] = [];
  private head = 0;
  private failure: VesperError | undefined;
  private waiter: ((r: IteratorResult<LiveRecord>) => void) | undefined;
  private readonly onAbort = (): void => this.end();

  constructor(
    readonly guest: string,
    readonly probe: string,
    private readonly maxQueued: number,
    private readonly signal: AbortSignal | undefined,
    private readonly unlink: () => void,
  ) {
    if (signal?.aborted) this.ended = true;
    else signal?.addEventListener("abort", this.onAbort, { once: true });
  }

  /** False when the record did not fit: the watch then ends with an error after what it already holds. */
  push(rec: LiveRecord): boolean {
    if (this.ended || this.failure !== undefined) return true;
    const w = this.waiter;
    if (w !== undefined) {
      this.waiter = undefined;
      w({ value: rec, done: false });
      return true;
    }
    if (this.queue.length - this.head >= this.maxQueued) {
      this.failure = new VesperError(
        ErrorCode.Unavailable,
        `the live watch fell more than ${this.maxQueued} records behind and was ended: watch again, or watch without live to read the stored stream at your own pace`,
      );
      this.unlink();
      return false;
    }
    this.queue.push(rec);
    return true;
  }

  next(): Promise<IteratorResult<LiveRecord>> {
    if (this.head < this.queue.length) {
      const value = this.queue[this.head++]!;
      if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.failure !== undefined) {
      const f = this.failure;
      this.failure = undefined; // reported once; the watch is over
      this.end();
      return Promise.reject(f);
    }
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => (this.waiter = resolve));
  }

  return(): Promise<IteratorResult<LiveRecord>> {
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<LiveRecord> {
    return this;
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    this.queue = [];
    this.head = 0;
    this.signal?.removeEventListener("abort", this.onAbort);
    this.unlink();
    const w = this.waiter;
    this.waiter = undefined;
    w?.({ value: undefined, done: true });
  }
}
