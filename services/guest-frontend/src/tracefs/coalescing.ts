/**
 * When an urgent reader reads next: at once after a quiet spell, and later and later while
 * events keep coming fast, so that the events of a busy spell share a page (one wake-up, one
 * frame) instead of a page each. Under emulation every wake-up costs the guest milliseconds.
 */
export interface CoalescingOptions {
  /** A read less than this after the previous one (not counting our own wait) came fast. */
  windowMs: number;
  /** The first wait, once reads keep coming fast. */
  delayMs: number;
  /** The wait doubles while the load lasts, up to this. Default delayMs. */
  maxDelayMs?: number;
}

/**
 * Fast reads in a row before the first wait. Two are not load: one exit alone makes two events
 * (the do_exit kprobe, then sched_process_exit) that are often read as two pages, and a wait
 * armed by the second would hold back the next process's exit (seen: 6.6 ms in a guest trace).
 */
const FAST_READS_BEFORE_WAIT = 2;

export class CoalescingDelay {
  private lastReadAt = -Infinity;
  private delay = 0;
  /** Reads in a row that came fast. */
  private streak = 0;

  constructor(private readonly o: CoalescingOptions) {}

  /** A read returned data at `nowMs`: how long to wait before the next read. */
  afterRead(nowMs: number): number {
    // The interval counts without our own wait: a steady stream makes a streak of fast reads.
    if (nowMs - this.lastReadAt - this.delay < this.o.windowMs) this.streak++;
    else this.streak = 0;
    this.lastReadAt = nowMs;
    const s = this.streak - FAST_READS_BEFORE_WAIT;
    this.delay = s < 0 ? 0 : Math.min(this.o.delayMs * 2 ** Math.max(0, s - 1), this.o.maxDelayMs ?? this.o.delayMs);
    return this.delay;
  }
}
