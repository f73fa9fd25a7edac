/**
 * When an urgent reader reads next: at once after a quiet spell, and later and later while
 * events keep coming fast, so that the events of a busy spell share a page (one wake-up, one
 * frame) instead of a page each. Under emulation every wake-up costs the guest milliseconds.
 * "Fast" is more than one event per window: below that rate every event goes at once.
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
 * Failover takes seconds; under a stream of events every wake-up of the agent costs the guest
 * milliseconds. So while events come faster than one per 20 ms, an event waits up to 250 ms for
 * company (the frontend's --coalesce-max-ms). Measured on a fork/exit storm in the TCG guest
 * (bench/overhead): the agent's own CPU 2.6-3.0 % of the run at 250 ms against 3.9-5.2 % at 100 (4 runs each).
 */
export const DEFAULT_COALESCING: Readonly<Required<CoalescingOptions>> = { windowMs: 20, delayMs: 10, maxDelayMs: 250 };

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

  /**
   * How many events a read after the current wait must bring for the stream to count as still
   * fast (one per window of the wait); 0 when no wait was made (the interval decides then).
   * The reader counts the events it read up to this many (countEvents) and passes the count.
   */
  get eventsToGoOn(): number {
    return this.delay > 0 ? Math.ceil(this.delay / this.o.windowMs) : 0;
  }

  /** A read returned data (`events` of them, at least as many as eventsToGoOn asked for, if known) at `nowMs`: how long to wait before the next read. */
  afterRead(nowMs: number, events = Infinity): number {
    // The interval counts without our own wait: a steady stream makes a streak of fast reads.
    // A read right after a wait always looks fast, so what it brought decides: a 40 ms wait
    // that caught one event was a trickle (25/s), and doubling on it held the next events
    // 80-100 ms (seen in bench/latency --trace after a burst of process starts).
    if (events < this.eventsToGoOn) this.streak = 0;
    else if (nowMs - this.lastReadAt - this.delay < this.o.windowMs) this.streak++;
    else this.streak = 0;
    this.lastReadAt = nowMs;
    const s = this.streak - FAST_READS_BEFORE_WAIT;
    this.delay = s < 0 ? 0 : Math.min(this.o.delayMs * 2 ** Math.max(0, s - 1), this.o.maxDelayMs ?? this.o.delayMs);
    return this.delay;
  }
}
