/**
 * The pages of one probe on one CPU that the host has not acknowledged yet.
 *
 * Pages leave in seq order and stay here until a DataAck covers them; the host
 * takes pages in order only (go-back-N), so resending means starting again from the
 * oldest unacknowledged page. The window is bounded: a pump waits for room before it
 * reads the next page from the kernel, so a host that is slow or away turns into
 * events waiting in the kernel's ring (which counts what it overwrites), never into
 * memory growing here.
 */

export interface OutPage {
  readonly seq: bigint;
  readonly page: Buffer;
}

export interface WindowStats {
  /** Pages sent again (after a timeout, a resend request or a new Welcome). */
  resent: number;
  /** Acks that named a seq this window never sent, or a rewind past what it has. */
  badAcks: number;
}

export class SendWindow {
  readonly stats: WindowStats = { resent: 0, badAcks: 0 };
  private pages: OutPage[] = [];
  /** Index in `pages` of the next page to send. */
  private next = 0;
  /** Highest seq ever sent (or pushed, for pages recovered from the spool). */
  private highest: bigint;
  private lastProgressAt = Date.now();
  private lastSentAt = 0;
  private roomWaiters: Array<() => void> = [];
  /** seq of the ack that last asked for a resend: one resend per gap, not one per ack. */
  private resentFor = -1n;

  constructor(
    readonly cpu: number,
    readonly capacity: number,
    /** The host's watermark as far as we know (the spool's lower bound after a restart). */
    public acked = 0n,
  ) {
    this.highest = acked;
  }

  get unacked(): number {
    return this.pages.length;
  }

  get hasUnsent(): boolean {
    return this.next < this.pages.length;
  }

  /** seq the next pushed page must carry. */
  get nextSeq(): bigint {
    const last = this.pages.at(-1);
    return (last === undefined ? this.highest : last.seq > this.highest ? last.seq : this.highest) + 1n;
  }

  hasRoom(n: number): boolean {
    return this.pages.length + n <= this.capacity;
  }

  /** Resolves once `n` more pages fit (or at once when the signal aborts). */
  async waitForRoom(n: number, signal: AbortSignal): Promise<void> {
    const need = Math.min(n, this.capacity);
    while (!this.hasRoom(need) && !signal.aborted) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          signal.removeEventListener("abort", done);
          resolve();
        };
        this.roomWaiters.push(done);
        signal.addEventListener("abort", done, { once: true });
      });
    }
  }

  /** Adds pages read from the kernel (their seq must continue the window's). */
  push(pages: readonly OutPage[]): void {
    for (const p of pages) {
      if (p.seq !== this.nextSeq) throw new Error(`page seq ${p.seq} does not follow ${this.nextSeq - 1n}`);
      this.pages.push(p);
    }
  }

  /** The next pages to send, oldest first, at most `maxPages` and about `maxBytes`; marks them sent. */
  take(maxPages: number, maxBytes: number): OutPage[] {
    const out: OutPage[] = [];
    let bytes = 0;
    while (this.next < this.pages.length && out.length < maxPages) {
      const p = this.pages[this.next]!;
      if (out.length > 0 && bytes + p.page.length > maxBytes) break;
      out.push(p);
      bytes += p.page.length;
      this.next++;
    }
    if (out.length > 0) {
      const last = out.at(-1)!.seq;
      if (last > this.highest) this.highest = last;
      this.lastSentAt = Date.now();
    }
    return out;
  }

  /** Sending failed: these pages go out again with the next take(). */
  unsend(pages: readonly OutPage[]): void {
    if (pages.length === 0) return;
    const first = pages[0]!.seq;
    const i = this.pages.findIndex((p) => p.seq === first);
    if (i >= 0 && i < this.next) this.next = i;
  }

  /**
   * The host holds every page up to `seq`. With `resend`, it also saw a gap after
   * `seq`: everything after it goes out again (once per gap). Returns false for an
   * ack that names a page this window never sent (dropped and counted).
   */
  ack(seq: bigint, resend: boolean): boolean {
    if (seq > this.highest) {
      this.stats.badAcks++;
      return false;
    }
    if (seq > this.acked) {
      this.acked = seq;
      this.lastProgressAt = Date.now();
      let drop = 0;
      while (drop < this.pages.length && this.pages[drop]!.seq <= seq) drop++;
      if (drop > 0) {
        this.pages.splice(0, drop);
        this.next = Math.max(0, this.next - drop);
        this.wakeRoomWaiters();
      }
    }
    if (resend && seq !== this.resentFor && this.pages.length > 0) {
      this.resentFor = seq;
      this.rewind();
    }
    return true;
  }

  /** Everything unacknowledged goes out again, oldest first. */
  rewind(): void {
    this.stats.resent += this.next;
    this.next = 0;
  }

  /**
   * True when pages were sent but no ack has made progress for `timeoutMs`: the host
   * lost them (a restart, a dropped connection), so it is time to rewind.
   */
  stalled(now: number, timeoutMs: number): boolean {
    return this.next > 0 && now - this.lastProgressAt >= timeoutMs && now - this.lastSentAt >= timeoutMs / 2;
  }

  /** After a rewind for a stall, give the host another full timeout. */
  noteRetry(now: number): void {
    this.lastProgressAt = now;
  }

  /** Drops everything (unload); waiting pumps are released. */
  clear(): void {
    this.pages = [];
    this.next = 0;
    this.wakeRoomWaiters();
  }

  private wakeRoomWaiters(): void {
    const ws = this.roomWaiters;
    this.roomWaiters = [];
    for (const w of ws) w();
  }
}
