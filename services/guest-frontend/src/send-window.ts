/**
 * The pages of one probe on one CPU that the host has not acknowledged yet.
 *
 * Pages travel in runs (consecutive pages read in one go, back to back in one
 * buffer): the guest handles a run as a whole, never page by page. They leave in seq
 * order and stay here until a DataAck covers them; the host takes pages in order
 * only (go-back-N), so resending means starting again from the oldest
 * unacknowledged page. The window is bounded in pages: a pump waits for room before
 * it reads from the kernel, so a host that is slow or away turns into events waiting
 * in the kernel's ring (which counts what it overwrites), never into memory growing here.
 */

/** Pages firstSeq .. firstSeq + count - 1; all pageSize bytes but the last (lastLength). */
export interface OutRun {
  /** Per probe and CPU, from 1 (a number: 2^53 pages is more than any CPU will ever ship). */
  readonly firstSeq: number;
  readonly count: number;
  readonly pageSize: number;
  readonly lastLength: number;
  readonly data: Buffer;
}

export function runEnd(r: OutRun): number {
  return r.firstSeq + r.count - 1;
}

/** The pages of `r` after `seq` (firstSeq <= seq < runEnd(r)). */
export function runAfter(r: OutRun, seq: number): OutRun {
  const drop = seq - r.firstSeq + 1;
  return { firstSeq: seq + 1, count: r.count - drop, pageSize: r.pageSize, lastLength: r.lastLength, data: r.data.subarray(drop * r.pageSize) };
}

export interface WindowStats {
  /** Pages sent again (after a timeout, a resend request or a new Welcome). */
  resent: number;
  /** Acks that named a seq this window never sent. */
  badAcks: number;
}

export class SendWindow {
  readonly stats: WindowStats = { resent: 0, badAcks: 0 };
  private runs: OutRun[] = [];
  /** Index in `runs` of the next run to send. */
  private next = 0;
  /** Pages in `runs`. */
  private pages = 0;
  /** Highest seq pushed (or known to the host). */
  private highest: number;
  private highestSent: number;
  private lastProgressAt = Date.now();
  private lastSentAt = 0;
  private roomWaiters: Array<() => void> = [];
  /** seq of the ack that last asked for a resend: one resend per gap, not one per ack. */
  private resentFor = -1;
  /** Events up to `acked` as the host counted them (its DataAck), echoed back to it; undefined: not known. */
  ackedEvents: bigint | undefined;
  private skipped: { from: number; to: number } | undefined;

  constructor(
    readonly cpu: number,
    readonly capacity: number,
    /** The host's watermark as far as we know (the spool's lower bound after a restart). */
    public acked = 0,
  ) {
    this.highest = acked;
    this.highestSent = acked;
  }

  get unacked(): number {
    return this.pages;
  }

  get hasUnsent(): boolean {
    return this.next < this.runs.length;
  }

  /** seq the next pushed run must start at. */
  get nextSeq(): number {
    return this.highest + 1;
  }

  /** Pages that still fit. */
  get room(): number {
    return Math.max(0, this.capacity - this.pages);
  }

  hasRoom(n: number): boolean {
    return this.pages + n <= this.capacity;
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

  /**
   * After adopting a predecessor's spool: seqs from nextSeq to `to` - 1 are not used (the
   * predecessor may have sent some of them without spooling them, so the host may hold
   * pages there that are not ours to resend or reuse). The next run starts at `to`.
   */
  skipTo(to: number): void {
    if (to <= this.nextSeq) return;
    this.skipped = { from: this.nextSeq, to };
    this.highest = to - 1;
    // The host acks the skipped seqs once it has moved past them.
    if (this.highestSent < to - 1) this.highestSent = to - 1;
  }

  /** The skip, until the host has acknowledged past it (data messages carry it until then). */
  get pendingSkip(): { from: number; to: number } | undefined {
    return this.skipped !== undefined && this.acked < this.skipped.to - 1 ? this.skipped : undefined;
  }

  /** Adds a run read from the kernel (it must start at nextSeq). */
  push(run: OutRun): void {
    if (run.firstSeq !== this.nextSeq) throw new Error(`run at seq ${run.firstSeq} does not follow ${this.highest}`);
    if (run.count <= 0) return;
    this.runs.push(run);
    this.pages += run.count;
    this.highest = runEnd(run);
  }

  /** The next runs to send, oldest first, about `maxPages` pages and `maxBytes`; marks them sent. */
  take(maxPages: number, maxBytes: number): OutRun[] {
    const out: OutRun[] = [];
    let pages = 0;
    let bytes = 0;
    while (this.next < this.runs.length) {
      const r = this.runs[this.next]!;
      if (out.length > 0 && (pages + r.count > maxPages || bytes + r.data.length > maxBytes)) break;
      out.push(r);
      pages += r.count;
      bytes += r.data.length;
      this.next++;
    }
    if (out.length > 0) {
      const last = runEnd(out.at(-1)!);
      if (last > this.highestSent) this.highestSent = last;
      this.lastSentAt = Date.now();
    }
    return out;
  }

  /** Sending failed: these runs go out again with the next take(). */
  unsend(runs: readonly OutRun[]): void {
    if (runs.length === 0) return;
    const first = runs[0]!.firstSeq;
    const i = this.runs.findIndex((r) => runEnd(r) >= first);
    if (i >= 0 && i < this.next) this.next = i;
  }

  /**
   * The host holds every page up to `seq`. With `resend`, it also saw a gap after
   * `seq`: everything after it goes out again (once per gap). Returns false for an
   * ack that names a page this window never sent (dropped and counted).
   */
  ack(seq: number, resend: boolean): boolean {
    if (seq > this.highestSent) {
      this.stats.badAcks++;
      return false;
    }
    if (seq > this.acked) {
      this.acked = seq;
      this.lastProgressAt = Date.now();
      let drop = 0;
      while (drop < this.runs.length && runEnd(this.runs[drop]!) <= seq) {
        this.pages -= this.runs[drop]!.count;
        drop++;
      }
      if (drop > 0) {
        this.runs.splice(0, drop);
        this.next = Math.max(0, this.next - drop);
      }
      const head = this.runs[0];
      if (head !== undefined && head.firstSeq <= seq) {
        const rest = runAfter(head, seq);
        this.pages -= head.count - rest.count;
        this.runs[0] = rest;
      }
      this.wakeRoomWaiters();
    }
    if (resend && seq !== this.resentFor && this.runs.length > 0) {
      this.resentFor = seq;
      this.rewind();
    }
    return true;
  }

  /** Everything unacknowledged goes out again, oldest first. */
  rewind(): void {
    for (let i = 0; i < this.next; i++) this.stats.resent += this.runs[i]!.count;
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
    this.runs = [];
    this.next = 0;
    this.pages = 0;
    this.wakeRoomWaiters();
  }

  private wakeRoomWaiters(): void {
    const ws = this.roomWaiters;
    this.roomWaiters = [];
    for (const w of ws) w();
  }
}
