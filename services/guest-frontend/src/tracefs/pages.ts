/**
 * Per-CPU page readers on instances/<X>/per_cpu/cpuN/trace_pipe_raw.
 *
 * Kernel behaviour these readers are built around (measured on 6.1 and 6.18):
 * - A read returns one whole ring-buffer page (normally 4096 bytes) as soon as at
 *   least one event is there; the page header's commit field says how much is real
 *   (the rest is zeroed). Reads are consuming: whatever one fd read is gone for all.
 * - Every close() of ANY fd on the same open file (including the implicit closes
 *   of O_CLOEXEC fds when this process spawns a child) calls the file's flush,
 *   which since ~6.8 marks the reader "closed": from then on every read returns 0
 *   at once. So a 0-byte read that is not ours to expect means "reopen".
 * - Writing 0 to the instance's tracing_on wakes blocked readers on 6.1 (they
 *   return 0), but NOT on 6.18; there only closing the fd (flush) wakes them.
 *   On abort we therefore close the fd ourselves after a short grace period.
 */
import fs from "node:fs";
import path from "node:path";
import { closeFd, openFd, readFd, sleep } from "./fsutil.js";
import { errnoOf } from "./errors.js";
import { usedBytes, type PageLayout } from "./page-layout.js";

export interface PageRead {
  cpu: number;
  /** One page as read (cut after what it holds when the layout is known). */
  page: Buffer;
}

/**
 * Consecutive pages read in one go, back to back in `data`: every page but the last
 * is pageSize bytes (as the kernel gave it), the last is cut after the bytes it holds
 * when `layout` is known (header, committed events, stored missed-events count).
 */
export interface RunRead {
  cpu: number;
  count: number;
  pageSize: number;
  lastLength: number;
  data: Buffer;
}

export type ReadMode = "urgent" | "bulk";

export interface ReadPagesOptions {
  signal: AbortSignal;
  /** Bulk: how often the buffer is drained (a partly filled page waits at most this long). */
  flushIntervalMs: number;
  pageSize: number;
  /**
   * Urgent: after a read, wait this long before the next one so events that arrive
   * close together share a page (the first event of a quiet period still goes out
   * at once). Default 0: every read is issued immediately.
   */
  minBatchDelayMs?: number;
  /**
   * Urgent, when minBatchDelayMs is not set: coalesce under load. A read that returns data
   * less than `windowMs` after the previous one means events are coming fast; the next read
   * then waits `delayMs`, so the events of that time share one page (one wake-up, one frame)
   * instead of a page each. The first event after a quiet spell still goes out at once.
   * false: never wait. Default { windowMs: 20, delayMs: 10 }.
   */
  adaptiveBatch?: { windowMs: number; delayMs: number } | false;
  /** Bulk: most pages read in one flush (the rest waits for the next tick). Default 1024. */
  maxPagesPerFlush?: number;
  /** After abort, how long a blocked read may take to return by itself before its fd is closed. Default 25 ms. */
  wakeGraceMs?: number;
  /** Bulk: most pages per readv(2), i.e. per run. Default 32 (128 KiB of 4 KiB pages). */
  maxPagesPerBatch?: number;
  /** The page header layout (events/header_page): with it, pages are cut to the bytes they hold. */
  layout?: PageLayout;
}

/** A page with more free space than this was not full: the writer is still on it. */
const PARTIAL_PAGE_SLACK = 512;

export function traceRawPath(instanceDir: string, cpu: number): string {
  return path.join(instanceDir, "per_cpu", `cpu${cpu}`, "trace_pipe_raw");
}

/**
 * One fd on trace_pipe_raw that can be closed from outside while a read is pending
 * (that is what wakes the read on recent kernels), and reopened after a spurious EOF.
 */
class RawFile {
  private fd: number | undefined;
  private reading = false;
  private closing: Promise<void> | undefined;
  private graceTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly file: string,
    private readonly flags: number,
    private readonly signal: AbortSignal,
    private readonly wakeGraceMs: number,
  ) {}

  async open(): Promise<boolean> {
    const fd = await openFd(this.file, this.flags);
    if (this.signal.aborted) {
      await closeFd(fd);
      return false;
    }
    this.fd = fd;
    return true;
  }

  /** Bytes read; 0 on EOF (or when the fd was closed to stop us); -1 on EAGAIN. */
  async read(buf: Buffer): Promise<number> {
    const fd = this.fd;
    if (fd === undefined) return 0;
    this.reading = true;
    try {
      return await readFd(fd, buf);
    } catch (err) {
      const code = errnoOf(err);
      if (code === "EAGAIN" || code === "EWOULDBLOCK") return -1;
      if (code === "EINTR") return -1;
      if (this.fd === undefined && (code === "EBADF" || code === undefined)) return 0; // closed under us by abort()
      throw err;
    } finally {
      this.reading = false;
    }
  }

  /**
   * Non-blocking fds only (bulk mode): readv(2) on this thread, no pool-thread round trip
   * (a round trip costs more than the read itself, under TCG about a millisecond).
   * Same results as read().
   */
  readvSync(bufs: Buffer[]): number {
    const fd = this.fd;
    if (fd === undefined) return 0;
    try {
      return fs.readvSync(fd, bufs);
    } catch (err) {
      const code = errnoOf(err);
      if (code === "EAGAIN" || code === "EWOULDBLOCK" || code === "EINTR") return -1;
      throw err;
    }
  }

  async reopen(): Promise<boolean> {
    await this.close();
    if (this.signal.aborted) return false;
    this.closing = undefined;
    return this.open();
  }

  /** Called on abort: close now if no read is pending, else give it a moment to return by itself. */
  abort(): void {
    if (!this.reading) {
      void this.close();
      return;
    }
    this.graceTimer = setTimeout(() => void this.close(), this.wakeGraceMs);
    this.graceTimer.unref();
  }

  close(): Promise<void> {
    clearTimeout(this.graceTimer);
    if (this.closing) return this.closing;
    const fd = this.fd;
    this.fd = undefined;
    this.closing = fd === undefined ? Promise.resolve() : closeFd(fd);
    return this.closing;
  }
}

/** Pages of one CPU of one instance, one by one, until the signal aborts. */
export async function* readPages(
  instanceDir: string,
  cpu: number,
  mode: ReadMode,
  opts: ReadPagesOptions,
): AsyncGenerator<PageRead, void, undefined> {
  for await (const r of readPageRuns(instanceDir, cpu, mode, opts)) {
    for (let i = 0; i < r.count; i++) {
      const end = i < r.count - 1 ? (i + 1) * r.pageSize : (r.count - 1) * r.pageSize + r.lastLength;
      yield { cpu, page: r.data.subarray(i * r.pageSize, end) };
    }
  }
}

/**
 * Pages of one CPU of one instance in runs, until the signal aborts: urgent mode
 * yields each page as it is read (a run of one), bulk mode the pages of one
 * readv(2) (at most maxPagesPerBatch).
 */
export async function* readPageRuns(
  instanceDir: string,
  cpu: number,
  mode: ReadMode,
  opts: ReadPagesOptions,
): AsyncGenerator<RunRead, void, undefined> {
  const { signal } = opts;
  if (signal.aborted) return;
  const file = traceRawPath(instanceDir, cpu);
  const grace = opts.wakeGraceMs ?? 25;
  // Both modes wait for data in a blocking read (no CPU at all while nothing happens);
  // bulk mode then drains through a second, non-blocking file.
  const raw = new RawFile(file, fs.constants.O_RDONLY, signal, grace);
  const drain = mode === "bulk" ? new RawFile(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK, signal, grace) : undefined;
  const onAbort = (): void => {
    raw.abort();
    drain?.abort();
  };
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    if (!(await raw.open())) return;
    if (drain === undefined) yield* urgentLoop(raw, cpu, opts);
    else if (await drain.open()) yield* bulkLoop(raw, drain, cpu, opts);
  } finally {
    signal.removeEventListener("abort", onAbort);
    await raw.close();
    await drain?.close();
  }
}

async function* urgentLoop(raw: RawFile, cpu: number, opts: ReadPagesOptions): AsyncGenerator<RunRead, void, undefined> {
  const { signal, pageSize } = opts;
  const batchDelay = opts.minBatchDelayMs ?? 0;
  const adaptive: { windowMs: number; delayMs: number } | false =
    opts.minBatchDelayMs === undefined && opts.adaptiveBatch !== false ? (opts.adaptiveBatch ?? { windowMs: 20, delayMs: 10 }) : false;
  let lastDataAt = -Infinity;
  let emptyReads = 0;
  // One read buffer; what a page holds is copied out (usually a few dozen bytes: pooled).
  const buf = Buffer.allocUnsafe(pageSize);
  while (!signal.aborted) {
    const n = await raw.read(buf);
    if (n > 0) {
      emptyReads = 0;
      const now = performance.now();
      const busyDelay = adaptive !== false && now - lastDataAt < adaptive.windowMs ? adaptive.delayMs : 0;
      lastDataAt = now;
      const used = usedBytes(buf, 0, n, opts.layout);
      yield { cpu, count: 1, pageSize, lastLength: used, data: Buffer.from(buf.subarray(0, used)) };
      if (batchDelay > 0) await sleep(batchDelay, signal);
      else if (busyDelay > 0) await sleep(busyDelay, signal);
      continue;
    }
    if (signal.aborted) break;
    if (n < 0) continue; // EINTR
    // EOF although nobody stopped us: tracing_on went 0, or the file was flushed
    // (a child process closed its inherited copy). Reopen; back off if it repeats.
    emptyReads++;
    if (emptyReads > 2) await sleep(Math.min(5 * 2 ** (emptyReads - 3), 200), signal);
    if (!(await raw.reopen())) break;
  }
}

async function* bulkLoop(wake: RawFile, drain: RawFile, cpu: number, opts: ReadPagesOptions): AsyncGenerator<RunRead, void, undefined> {
  const { signal, pageSize } = opts;
  const maxPages = opts.maxPagesPerFlush ?? 1024;
  const perBatch = Math.max(1, opts.maxPagesPerBatch ?? 32);
  const interval = Math.max(1, opts.flushIntervalMs);
  // A batch's buffer, made only once the last one went out with its pages.
  let buf: Buffer | undefined;
  let iov: Buffer[] = [];
  const fresh = (): Buffer => {
    if (buf === undefined) {
      buf = Buffer.allocUnsafeSlow(perBatch * pageSize);
      iov = [];
      for (let i = 0; i < perBatch; i++) iov.push(buf.subarray(i * pageSize, (i + 1) * pageSize));
    }
    return buf;
  };
  let emptyReads = 0;
  while (!signal.aborted) {
    // 1. Nothing to do until the first page: a blocking read on a pool thread.
    fresh();
    const n0 = await wake.read(iov[0]!);
    if (signal.aborted) break;
    if (n0 < 0) continue; // EINTR
    if (n0 === 0) {
      // EOF although nobody stopped us (tracing_on went 0, or the file was flushed): reopen.
      emptyReads++;
      if (emptyReads > 2) await sleep(Math.min(5 * 2 ** (emptyReads - 3), 200), signal);
      if (!(await wake.reopen())) break;
      continue;
    }
    emptyReads = 0;
    // 2. Bulk: let the pages fill for the flush interval, then take them all.
    await sleep(interval, signal);
    if (signal.aborted) break;
    // 3. Full pages come out first; the page the writer is on comes last (partly filled).
    // readv(2): trace_pipe_raw has no read_iter, so the kernel serves each iovec with one
    // page read and one system call brings a whole batch (from Node, under TCG, the call is
    // what costs). The first batch starts with the page the blocking read got.
    let pending = 1; // pages already in `buf`
    if (n0 < pageSize) {
      // A short read (not a whole page, unlike every kernel seen): it goes out alone.
      const b = buf!;
      buf = undefined;
      yield { cpu, count: 1, pageSize, lastLength: usedBytes(b, 0, n0, opts.layout), data: b.subarray(0, usedBytes(b, 0, n0, opts.layout)) };
      pending = 0;
    }
    let read = 0;
    while (read < maxPages && !signal.aborted) {
      const b = fresh();
      const want = perBatch - pending;
      let n = want > 0 ? drain.readvSync(pending === 0 ? iov : iov.slice(pending)) : 0;
      if (n === 0 && want > 0) {
        // The drain file was flushed (a child closed its copy): reopen, drain next time.
        if (!(await drain.reopen())) return;
        n = -1;
      }
      const got = n > 0 ? n : 0;
      const total = pending * pageSize + got;
      if (total === 0) break;
      const count = Math.ceil(total / pageSize);
      const lastOff = (count - 1) * pageSize;
      const lastLength = usedBytes(b, lastOff, total - lastOff, opts.layout);
      read += count;
      buf = undefined; // the run keeps it until acknowledged
      yield { cpu, count, pageSize, lastLength, data: b.subarray(0, lastOff + lastLength) };
      pending = 0;
      if (n < 0 || got < want * pageSize) break; // nothing more for now
      // Once the writer's page is read, stop until next time: draining "until EAGAIN" never
      // ends when the probe sees our own reads (raw_syscalls), each a page holding our last call.
      if (opts.layout !== undefined && lastLength < pageSize - PARTIAL_PAGE_SLACK) break;
    }
  }
}
