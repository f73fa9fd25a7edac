/**
 * Where one CPU of one loaded probe stands: pages are taken in sequence order only
 * (go-back-N: after a gap the guest sends again from the gap), and `durable` is the
 * newest seq up to which every page's events are stored, which is what the guest is
 * told in DataAcks. A page that never comes is given up on after a timeout: it is
 * reported lost (a loss record), never skipped silently.
 */
export type Offer =
  | { readonly kind: "take"; readonly pagesLost: bigint }
  | { readonly kind: "duplicate" }
  | { readonly kind: "ahead" };

/** How many recent pages a read check may refer back to. */
const MARKS = 64;

export class CpuCursor {
  /** The seq the next page taken must carry. */
  next: bigint;
  /** Every page up to here is stored. */
  durable: bigint;
  /**
   * Events in the pages taken (up to next - 1) and in the stored ones (up to durable),
   * counted from the load's first page; undefined once not known (a cursor started from
   * a guest's hint without a count, or pages given up on, whose events nobody counted).
   */
  eventsTaken: bigint | undefined;
  eventsDurable: bigint | undefined;
  /** Bumped when a store fails: completions queued before that must not move `durable`. */
  private epoch = 0;
  /** Store completions, in page order. Never rejects. */
  private chain: Promise<void> = Promise.resolve();
  /** When a page after a gap was first refused (0: no gap open). */
  private gapSince = 0;

  constructor(acked: bigint, ackedEvents: bigint | undefined = acked === 0n ? 0n : undefined) {
    this.durable = acked;
    this.next = acked + 1n;
    this.eventsTaken = ackedEvents;
    this.eventsDurable = ackedEvents;
  }

  /** Recent (seq, events up to it) pairs, for read checks that refer to a page just passed. */
  private readonly marks: Array<[bigint, bigint | undefined]> = [];
  private markAt = 0;

  /** A page just taken (offer said "take") held `events` events; undefined: not known (bad records), counting stops. */
  count(seq: bigint, events: number | undefined): void {
    if (events === undefined) this.eventsTaken = undefined;
    else if (this.eventsTaken !== undefined) this.eventsTaken += BigInt(events);
    this.mark(seq);
  }

  /** Events in pages up to `seq`, when that is still known (`seq` is recent). */
  eventsUpTo(seq: bigint): bigint | undefined {
    if (seq === this.next - 1n) return this.eventsTaken;
    // Newest first: after a failed store the same pages are taken (and marked) again.
    const n = this.marks.length;
    for (let i = 1; i <= n; i++) {
      const m = this.marks[(this.markAt - i + n) % n]!;
      if (m[0] === seq) return m[1];
    }
    return undefined;
  }

  /**
   * `n` events of pages up to `seq` were reported lost: they count as accounted for, so
   * a later check does not report them again (and the count the guest echoes carries
   * them to a restarted listener).
   */
  account(seq: bigint, n: bigint): void {
    if (this.eventsTaken !== undefined) this.eventsTaken += n;
    if (this.eventsDurable !== undefined) this.eventsDurable += n;
    for (const m of this.marks) if (m[0] >= seq && m[1] !== undefined) m[1] += n;
  }

  private mark(seq: bigint): void {
    if (this.marks.length < MARKS) this.marks.push([seq, this.eventsTaken]);
    else this.marks[this.markAt] = [seq, this.eventsTaken];
    this.markAt = (this.markAt + 1) % MARKS;
  }

  /**
   * The guest adopted the load after a restart: pages from `from` to `to` - 1 will never
   * come. If the next page expected is among them, the cursor moves on to `to`, nothing
   * lost (the events of pages the predecessor read and nobody received show in the read
   * check). Returns whether it moved.
   */
  skip(from: bigint, to: bigint): boolean {
    if (this.next < from || this.next >= to) return false;
    this.settle(to - 1n, this.eventsTaken);
    this.next = to;
    this.mark(to - 1n);
    return true;
  }

  offer(seq: bigint, now: number, gapTimeoutMs: number): Offer {
    if (seq < this.next) return { kind: "duplicate" };
    if (seq > this.next) {
      if (this.gapSince === 0) this.gapSince = now;
      if (now - this.gapSince < gapTimeoutMs) return { kind: "ahead" };
      // The missing pages are not coming: they count as done, so the watermark can pass them.
      const lost = seq - this.next;
      this.eventsTaken = undefined;
      this.settle(seq - 1n, undefined);
      this.gapSince = 0;
      this.next = seq + 1n;
      return { kind: "take", pagesLost: lost };
    }
    this.gapSince = 0;
    this.next = seq + 1n;
    return { kind: "take", pagesLost: 0n };
  }

  /**
   * Pages up to `last` are taken and `stored` settles when their events are in the
   * stream. `done(true)` once `durable` reached `last`; `done(false)` if storing
   * failed: the cursor goes back to the watermark, so the guest's resend is taken.
   */
  whenStored(last: bigint, stored: Promise<void>, done: (ok: boolean) => void): void {
    const epoch = this.epoch;
    const events = this.eventsTaken; // the count up to `last`: pages are taken in order
    this.chain = this.chain
      .then(() => stored)
      .then(
        () => {
          if (this.epoch !== epoch) return;
          if (last > this.durable) {
            this.durable = last;
            this.eventsDurable = events;
          }
          done(true);
        },
        () => {
          if (this.epoch !== epoch) return;
          this.epoch++;
          this.next = this.durable + 1n;
          this.eventsTaken = this.eventsDurable;
          done(false);
        },
      );
  }

  private settle(upTo: bigint, events: bigint | undefined): void {
    const epoch = this.epoch;
    this.chain = this.chain.then(() => {
      if (this.epoch === epoch && upTo > this.durable) {
        this.durable = upTo;
        this.eventsDurable = events;
      }
    });
  }
}
