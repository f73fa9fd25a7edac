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

export class CpuCursor {
  /** The seq the next page taken must carry. */
  next: bigint;
  /** Every page up to here is stored. */
  durable: bigint;
  /** Bumped when a store fails: completions queued before that must not move `durable`. */
  private epoch = 0;
  /** Store completions, in page order. Never rejects. */
  private chain: Promise<void> = Promise.resolve();
  /** When a page after a gap was first refused (0: no gap open). */
  private gapSince = 0;

  constructor(acked: bigint) {
    this.durable = acked;
    this.next = acked + 1n;
  }

  offer(seq: bigint, now: number, gapTimeoutMs: number): Offer {
    if (seq < this.next) return { kind: "duplicate" };
    if (seq > this.next) {
      if (this.gapSince === 0) this.gapSince = now;
      if (now - this.gapSince < gapTimeoutMs) return { kind: "ahead" };
      // The missing pages are not coming: they count as done, so the watermark can pass them.
      const lost = seq - this.next;
      this.settle(seq - 1n);
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
    this.chain = this.chain
      .then(() => stored)
      .then(
        () => {
          if (this.epoch !== epoch) return;
          if (last > this.durable) this.durable = last;
          done(true);
        },
        () => {
          if (this.epoch !== epoch) return;
          this.epoch++;
          this.next = this.durable + 1n;
          done(false);
        },
      );
  }

  private settle(upTo: bigint): void {
    const epoch = this.epoch;
    this.chain = this.chain.then(() => {
      if (this.epoch === epoch && upTo > this.durable) this.durable = upTo;
    });
  }
}
