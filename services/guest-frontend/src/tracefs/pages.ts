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

export interface PageRead {
  cpu: number;
  /** Exactly what read() returned: normally one whole page. */
  page: Buffer;
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
  /** readPageBatches, bulk: most pages per batch (one ProbeData frame). Default 32 (128 KiB of 4 KiB pages). */
  maxPagesPerBatch?: number;
}

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
   * Non-blocking fds only (bulk mode): read(2) on this thread, no pool-thread round trip
   * (a round trip costs more than the read itself, under TCG about a millisecond).
   * Same results as read().
   */
  readSync(buf: Buffer): number {
    const fd = this.fd;
    if (fd === undefined) return 0;
    try {
      return fs.readSync(fd, buf, 0, buf.length, null);
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

/**
 * Pages of one CPU of one instance, until the signal aborts. Each yielded page is
 * a fresh Buffer (never reused).
 */
export async function* readPages(
  instanceDir: string,
  cpu: number,
  mode: ReadMode,
  opts: ReadPagesOptions,
): AsyncGenerator<PageRead, void, undefined> {
  const { signal } = opts;
  if (signal.aborted) return;
  const flags = fs.constants.O_RDONLY | (mode === "bulk" ? fs.constants.O_NONBLOCK : 0);
  const raw = new RawFile(traceRawPath(instanceDir, cpu), flags, signal, opts.wakeGraceMs ?? 25);
  const onAbort = (): void => raw.abort();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    if (!(await raw.open())) return;
    if (mode === "urgent") yield* urgentLoop(raw, cpu, opts);
    else for await (const batch of bulkLoop(raw, cpu, opts)) yield* batch;
  } finally {
    signal.removeEventListener("abort", onAbort);
    await raw.close();
  }
}

/**
 * Like readPages, but bulk mode yields the pages of one drain in batches (of at most
 * maxPagesPerBatch), so a transport can ship several pages per message; urgent mode
 * yields one-page batches.
 */
export async function* readPageBatches(
  instanceDir: string,
  cpu: number,
  mode: ReadMode,
  opts: ReadPagesOptions,
): AsyncGenerator<PageRead[], void, undefined> {
  const { signal } = opts;
  if (signal.aborted) return;
  const flags = fs.constants.O_RDONLY | (mode === "bulk" ? fs.constants.O_NONBLOCK : 0);
  const raw = new RawFile(traceRawPath(instanceDir, cpu), flags, signal, opts.wakeGraceMs ?? 25);
  const onAbort = (): void => raw.abort();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    if (!(await raw.open())) return;
    if (mode === "urgent") for await (const p of urgentLoop(raw, cpu, opts)) yield [p];
    else yield* bulkLoop(raw, cpu, opts);
  } finally {
    signal.removeEventListener("abort", onAbort);
    await raw.close();
  }
}

async function* urgentLoop(raw: RawFile, cpu: number, opts: ReadPagesOptions): AsyncGenerator<PageRead, void, undefined> {
  const { signal, pageSize } = opts;
  const batchDelay = opts.minBatchDelayMs ?? 0;
  const adaptive: { windowMs: number; delayMs: number } | false =
    opts.minBatchDelayMs === undefined && opts.adaptiveBatch !== false ? (opts.adaptiveBatch ?? { windowMs: 20, delayMs: 10 }) : false;
  let lastDataAt = -Infinity;
  let emptyReads = 0;
  while (!signal.aborted) {
    const buf = Buffer.allocUnsafe(pageSize);
    const n = await raw.read(buf);
    if (n > 0) {
      emptyReads = 0;
      const now = performance.now();
      const busyDelay = adaptive !== false && now - lastDataAt < adaptive.windowMs ? adaptive.delayMs : 0;
      lastDataAt = now;
      yield { cpu, page: n === buf.length ? buf : buf.subarray(0, n) };
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

async function* bulkLoop(raw: RawFile, cpu: number, opts: ReadPagesOptions): AsyncGenerator<PageRead[], void, undefined> {
  const { signal, pageSize } = opts;
  const maxPages = opts.maxPagesPerFlush ?? 1024;
  const perBatch = Math.max(1, opts.maxPagesPerBatch ?? 32);
  const interval = Math.max(1, opts.flushIntervalMs);
  while (!signal.aborted) {
    await sleep(interval, signal);
    // Full pages come out first; the page the writer is on comes last (partly filled).
    // The fd is non-blocking: read on this thread until EAGAIN, in batches.
    let batch: PageRead[] = [];
    let reopen = false;
    for (let i = 0; i < maxPages && !signal.aborted; i++) {
      const buf = Buffer.allocUnsafe(pageSize);
      const n = raw.readSync(buf);
      if (n < 0) break; // EAGAIN: drained
      if (n === 0) {
        // Flushed file (see above) returns EOF instead of EAGAIN: reopen, drain next tick.
        reopen = true;
        break;
      }
      batch.push({ cpu, page: n === buf.length ? buf : buf.subarray(0, n) });
      if (batch.length >= perBatch) {
        yield batch;
        batch = [];
      }
    }
    if (batch.length > 0) yield batch;
    if (reopen && !signal.aborted && !(await raw.reopen())) return;
  }
}
