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
import net from "node:net";
import path from "node:path";
import { closeFd, openFd, sleep } from "./fsutil.js";
import { errnoOf } from "./errors.js";
import { CoalescingDelay, DEFAULT_COALESCING, type CoalescingOptions } from "./coalescing.js";
import { countEvents, usedBytes, type PageLayout } from "./page-layout.js";

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

/** How an urgent reader waits for its next page: in the event loop's epoll, or with a blocking read on a pool thread. */
export type UrgentWait = "epoll" | "pool";

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
   * Urgent, when minBatchDelayMs is not set: coalesce under load (CoalescingDelay). Three reads
   * in a row, each less than `windowMs` after the one before, mean events are coming fast; the
   * next read then waits `delayMs`, doubling while the load lasts up to `maxDelayMs`, so the
   * events of that time share one page (one wake-up, one frame) instead of a page each. The
   * first events after a quiet spell still go out at once. false: never wait.
   * Default DEFAULT_COALESCING { windowMs: 20, delayMs: 10, maxDelayMs: 250 }: under a sustained stream an event waits
   * at most 250 ms (failover takes seconds; every wake-up of the agent costs the guest milliseconds).
   */
  adaptiveBatch?: CoalescingOptions | false;
  /** Bulk: most pages read in one flush (the rest waits for the next tick). Default 1024. */
  maxPagesPerFlush?: number;
  /** After abort, how long a blocked read may take to return by itself before its fd is closed. Default 25 ms. */
  wakeGraceMs?: number;
  /** Most pages per readv(2), i.e. per run (bulk drains; urgent drains after a coalescing wait). Default 32; the frontend passes its message limit (64). */
  maxPagesPerBatch?: number;
  /** The page header layout (events/header_page): with it, pages are cut to the bytes they hold. */
  layout?: PageLayout;
  /** Urgent (startUrgentReader): how to wait for the next page. Default "epoll" (else "pool" when this Node has no pipe handle). */
  urgentWait?: UrgentWait;
}

/** A page with more free space than this was not full: the writer is still on it. */
const PARTIAL_PAGE_SLACK = 512;

export function traceRawPath(instanceDir: string, cpu: number): string {
  return path.join(instanceDir, "per_cpu", `cpu${cpu}`, "trace_pipe_raw");
}

/** What an urgent reader waits on for its next page: a pool-thread read, or the event loop's epoll. */
interface WaitFile {
  open(): Promise<boolean>;
  readCb(buf: Buffer, done: (n: number, err?: Error) => void): void;
  reopen(): Promise<boolean>;
  abort(): void;
  close(): Promise<void>;
}

interface PipeHandle {
  open(fd: number): number;
}
type PipeWrap = { Pipe: new (type: number) => PipeHandle; constants: { SOCKET: number } };

/** libuv's pipe handle, which polls any fd (Node's own net.Socket refuses a tracefs file by its type). */
const pipeWrap: PipeWrap | undefined = (() => {
  try {
    return (process as unknown as { binding(name: string): PipeWrap }).binding("pipe_wrap");
  } catch {
    return undefined;
  }
})();

/**
 * trace_pipe_raw waited for in the event loop: a non-blocking fd that libuv polls (tracefs
 * supports poll; the instance's buffer_percent 0 makes it readable at the first event), and
 * the page read on this thread as soon as it is there. The pool-thread read (RawFile) costs two
 * thread hops per wake-up, ~1 ms under TCG, and a page read there sits outside the spool until
 * the event loop takes it. One page per readCb, into the buffer of the first call.
 */
class PolledRawFile implements WaitFile {
  private fd: number | undefined;
  private socket: net.Socket | undefined;
  private pending: ((n: number, err?: Error) => void) | undefined;

  constructor(
    private readonly file: string,
    private readonly signal: AbortSignal,
  ) {}

  async open(): Promise<boolean> {
    const fd = await openFd(this.file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    if (this.signal.aborted) {
      await closeFd(fd);
      return false;
    }
    this.fd = fd;
    return true;
  }

  readCb(buf: Buffer, done: (n: number, err?: Error) => void): void {
    if (this.fd === undefined) return done(0);
    this.pending = done;
    if (this.socket !== undefined) {
      this.socket.resume();
      return;
    }
    const handle = new pipeWrap!.Pipe(pipeWrap!.constants.SOCKET);
    const rc = handle.open(this.fd);
    if (rc !== 0) return this.settle(0, new Error(`cannot poll ${this.file} (libuv error ${rc})`));
    // The consumer usually asks for the next page from inside the callback (its copy of this
    // one is made): reading goes on; else it stops until the next readCb.
    const onread = (n: number): boolean => {
      this.settle(n);
      return this.pending !== undefined;
    };
    // `handle` is an untyped option of net.Socket (child_process passes its pipes so). The socket
    // owns the fd from here: destroying it closes the fd.
    const opts = { handle, readable: true, writable: false, onread: { buffer: buf, callback: onread } };
    this.socket = new net.Socket(opts as net.SocketConstructorOpts);
    this.socket.on("end", () => this.settle(0)); // EOF: the reader reopens
    this.socket.on("error", (err: Error) => this.settle(0, err));
  }

  private settle(n: number, err?: Error): void {
    const done = this.pending;
    this.pending = undefined;
    done?.(n, err);
  }

  async reopen(): Promise<boolean> {
    await this.close();
    if (this.signal.aborted) return false;
    return this.open();
  }

  abort(): void {
    void this.close();
    this.settle(0);
  }

  close(): Promise<void> {
    const s = this.socket;
    const fd = this.fd;
    this.socket = undefined;
    this.fd = undefined;
    if (s !== undefined) {
      s.destroy();
      return Promise.resolve();
    }
    return fd === undefined ? Promise.resolve() : closeFd(fd);
  }
}

/**
 * One fd on trace_pipe_raw that can be closed from outside while a read is pending
 * (that is what wakes the read on recent kernels), and reopened after a spurious EOF.
 */
class RawFile implements WaitFile {
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
  read(buf: Buffer): Promise<number> {
    return new Promise((resolve, reject) => this.readCb(buf, (n, err) => (err === undefined ? resolve(n) : reject(err))));
  }

  /** read() with a callback, no promise: `done` gets what read() returns, or the error it throws. */
  readCb(buf: Buffer, done: (n: number, err?: Error) => void): void {
    const fd = this.fd;
    if (fd === undefined) return done(0);
    this.reading = true;
    fs.read(fd, buf, 0, buf.length, null, (err, n) => {
      this.reading = false;
      if (err === null) return done(n);
      const code = errnoOf(err);
      if (code === "EAGAIN" || code === "EWOULDBLOCK" || code === "EINTR") return done(-1);
      if (this.fd === undefined && (code === "EBADF" || code === undefined)) return done(0); // closed under us by abort()
      done(0, err);
    });
  }

  /**
   * Non-blocking fds only (bulk drains, urgent drains under load): readv(2) on this thread, no pool-thread round trip
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

/**
 * Urgent mode with no promise between the kernel and the transport: a blocking read on a
 * pool thread whose callback hands the page over at once (under emulation every promise
 * and microtask hop on that path costs the event time). Under load, after a coalescing
 * wait, one readv(2) on a second, non-blocking file takes every page that piled up (one
 * run, one frame) instead of a page per wait. `onRun` returns the pages of room the
 * consumer has left; at 0 reading waits for resume(). `done` settles when it ends.
 */
export class UrgentReader {
  readonly done: Promise<void>;
  private finish!: (err?: Error) => void;
  private paused = false;
  private pausedDelay = 0;
  private emptyReads = 0;
  // One read buffer; what a page holds is copied out (usually a few dozen bytes: pooled).
  private readonly buf: Buffer;
  private readonly batchDelay: number;
  /** Coalescing under load (opts.adaptiveBatch), unless a fixed minBatchDelayMs is set. */
  private readonly coalescing: CoalescingDelay | undefined;
  /** Pages the consumer can still take (what onRun or resume said last). */
  private room = 1;
  /** The drain's readv target, made at its first use. */
  private batch: ReadBatch | undefined;

  constructor(
    private readonly raw: WaitFile,
    private readonly cpu: number,
    private readonly opts: ReadPagesOptions,
    private readonly onRun: (run: RunRead) => number,
    /** Non-blocking file on the same trace_pipe_raw; without it every read is a blocking one. */
    private readonly drainFile?: RawFile,
  ) {
    this.done = new Promise<void>((resolve, reject) => {
      this.finish = (err?: Error) => (err === undefined ? resolve() : reject(err));
    });
    this.buf = Buffer.allocUnsafe(opts.pageSize);
    // A reader waiting for room has no read pending: the abort must end it.
    opts.signal.addEventListener("abort", () => this.paused && this.finish(), { once: true });
    this.batchDelay = opts.minBatchDelayMs ?? 0;
    this.coalescing =
      opts.minBatchDelayMs === undefined && opts.adaptiveBatch !== false
        ? new CoalescingDelay(opts.adaptiveBatch ?? DEFAULT_COALESCING)
        : undefined;
  }

  start(): void {
    this.next();
  }

  /** The consumer has room again: `room` pages. */
  resume(room: number): void {
    if (!this.paused || room <= 0) return;
    this.paused = false;
    this.room = room;
    this.after(this.pausedDelay);
  }

  private after(delay: number): void {
    if (delay > 0) setTimeout(() => this.drain(), delay);
    else this.next();
  }

  /**
   * After a coalescing wait: what the kernel holds now, in one readv(2) on the
   * non-blocking file. Nothing there: back to the blocking read, so the next event
   * after the load goes out at once.
   */
  private drain(): void {
    const { signal, pageSize, layout } = this.opts;
    if (signal.aborted) return this.finish();
    const file = this.drainFile;
    if (file === undefined) return this.next();
    const batch = (this.batch ??= new ReadBatch(Math.max(1, this.opts.maxPagesPerBatch ?? 32), pageSize));
    let n: number;
    try {
      n = file.readvSync(batch.iov(0, this.room));
    } catch (err) {
      return this.finish(err as Error);
    }
    if (n < 0) return this.next(); // EAGAIN: the ring is empty
    if (n === 0) {
      // The file was flushed (a child closed its inherited copy): reopen it, read blocking meanwhile.
      void file.reopen().then(
        (ok) => (ok ? this.next() : this.finish()),
        (e: unknown) => this.finish(e as Error),
      );
      return;
    }
    this.deliver(batch.take(this.cpu, n, layout));
  }

  private next(): void {
    if (this.opts.signal.aborted) return this.finish();
    this.raw.readCb(this.buf, (n, err) => this.onRead(n, err));
  }

  private onRead(n: number, err?: Error): void {
    const { signal, pageSize, layout } = this.opts;
    if (err !== undefined) return this.finish(err);
    if (signal.aborted) return this.finish();
    if (n > 0) {
      this.emptyReads = 0;
      return this.deliver(runOf(this.cpu, this.buf, n, pageSize, layout));
    }
    if (n < 0) return this.next(); // EINTR
    // EOF although nobody stopped us: tracing_on went 0, or the file was flushed
    // (a child process closed its inherited copy). Reopen; back off if it repeats.
    this.emptyReads++;
    setTimeout(() => {
      void this.raw.reopen().then(
        (ok) => (ok ? this.next() : this.finish()),
        (e: unknown) => this.finish(e as Error),
      );
    }, eofBackoffMs(this.emptyReads));
  }

  /** Pages just read go to the consumer; the next read follows at once, or after a coalescing wait under load. */
  private deliver(run: RunRead): void {
    const c = this.coalescing;
    const need = c?.eventsToGoOn ?? 0;
    const events = need > 0 ? countEvents(run.data, run.count, run.pageSize, run.lastLength, this.opts.layout, need) : Infinity;
    const busy = c?.afterRead(performance.now(), events) ?? 0;
    const room = this.onRun(run);
    const delay = this.batchDelay > 0 ? this.batchDelay : busy;
    if (room <= 0) {
      this.paused = true;
      this.pausedDelay = delay;
      return;
    }
    this.room = room;
    this.after(delay);
  }
}

/** The run in the first `bytes` bytes of a read buffer (whole pages, the last cut after what it holds), as a view of it. */
function runView(cpu: number, buf: Buffer, bytes: number, pageSize: number, layout: PageLayout | undefined): RunRead {
  const count = Math.ceil(bytes / pageSize);
  const lastOff = (count - 1) * pageSize;
  const lastLength = usedBytes(buf, lastOff, bytes - lastOff, layout);
  return { cpu, count, pageSize, lastLength, data: buf.subarray(0, lastOff + lastLength) };
}

/** runView, copied out: the consumer keeps the run until it is acknowledged, the buffer is read into again. */
function runOf(cpu: number, buf: Buffer, bytes: number, pageSize: number, layout: PageLayout | undefined): RunRead {
  const run = runView(cpu, buf, bytes, pageSize, layout);
  const data = Buffer.allocUnsafe(run.data.length); // small runs share Node's pool, as Buffer.from did
  run.data.copy(data);
  run.data = data;
  return run;
}

/**
 * A readv(2) target that hands a full enough batch over instead of copying it: a run of at least
 * half the buffer's pages keeps the buffer itself (a view of what it holds), and the next readv
 * gets a new one. Smaller runs are copied out (runOf) and the buffer is read into again, so a
 * buffer held by the send window is always at least half used: the window's page bound stays a
 * bound on memory (×2 at most). Under a syscall storm this saves a copy of every page: in a host
 * profile of the bulk path the copy and its buffer were ~30 % of the frontend's CPU; in the TCG
 * guest (bench/throughput) the frontend's CPU fell from 1.6-2.4 s to 1.5-2.0 s per 2 M events.
 */
export class ReadBatch {
  private scratch: { buf: Buffer; iov: Buffer[] };

  constructor(
    readonly pages: number,
    readonly pageSize: number,
  ) {
    this.scratch = scratchPages(pages, pageSize);
  }

  /** The iovecs of the current buffer, from page `from` on, at most `max` of them. */
  iov(from = 0, max = this.pages): Buffer[] {
    const iov = this.scratch.iov;
    return from === 0 && max >= this.pages ? iov : iov.slice(from, from + Math.max(1, max));
  }

  /** The run in the first `bytes` bytes of the current buffer; the buffer is handed over with it when it is at least half full. */
  take(cpu: number, bytes: number, layout: PageLayout | undefined): RunRead {
    if (Math.ceil(bytes / this.pageSize) * 2 < this.pages) return runOf(cpu, this.scratch.buf, bytes, this.pageSize, layout);
    const run = runView(cpu, this.scratch.buf, bytes, this.pageSize, layout);
    this.scratch = scratchPages(this.pages, this.pageSize);
    return run;
  }
}

/** After the n-th EOF in a row: reopen at once twice, then back off 5, 10, 20 ... up to 200 ms. */
function eofBackoffMs(n: number): number {
  return n > 2 ? Math.min(5 * 2 ** (n - 3), 200) : 0;
}

/** One buffer of `pages` pages and an iovec per page into it. */
function scratchPages(pages: number, pageSize: number): { buf: Buffer; iov: Buffer[] } {
  const buf = Buffer.allocUnsafeSlow(pages * pageSize);
  const iov: Buffer[] = [];
  for (let i = 0; i < pages; i++) iov.push(buf.subarray(i * pageSize, (i + 1) * pageSize));
  return { buf, iov };
}

/** Opens a CPU's trace_pipe_raw (blocking, and non-blocking for drains) for an UrgentReader; the reader ends (and closes them) at abort. */
/**
 * Whether urgent readers started with this wait read on the event loop's thread only (the
 * epoll wait, when this Node has pipe handles): then no read is ever in flight while
 * JavaScript runs, and the kernel's "read events" counter is exact between two callbacks.
 */
export function urgentReadsInLoop(wait: UrgentWait | undefined): boolean {
  return wait !== "pool" && pipeWrap !== undefined;
}

export async function startUrgentReader(instanceDir: string, cpu: number, opts: ReadPagesOptions, onRun: (run: RunRead) => number): Promise<UrgentReader | undefined> {
  const { signal } = opts;
  if (signal.aborted) return undefined;
  const file = traceRawPath(instanceDir, cpu);
  const grace = opts.wakeGraceMs ?? 25;
  const raw: WaitFile = urgentReadsInLoop(opts.urgentWait) ? new PolledRawFile(file, signal) : new RawFile(file, fs.constants.O_RDONLY, signal, grace);
  const drain = new RawFile(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK, signal, grace);
  const onAbort = (): void => {
    raw.abort();
    drain.abort();
  };
  signal.addEventListener("abort", onAbort, { once: true });
  const closeAll = (): void => {
    signal.removeEventListener("abort", onAbort);
    void raw.close();
    void drain.close();
  };
  try {
    if (!(await raw.open()) || !(await drain.open())) {
      closeAll();
      return undefined;
    }
  } catch (err) {
    closeAll();
    throw err;
  }
  const reader = new UrgentReader(raw, cpu, opts, onRun, drain);
  void reader.done.catch(() => undefined).finally(closeAll);
  reader.start();
  return reader;
}

/** The generator form of UrgentReader (reads only as the consumer pulls). */
async function* urgentLoop(raw: RawFile, cpu: number, opts: ReadPagesOptions): AsyncGenerator<RunRead, void, undefined> {
  const queue: RunRead[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  let failure: Error | undefined;
  const reader = new UrgentReader(raw, cpu, opts, (run) => {
    queue.push(run);
    wake?.();
    return 0; // one page at a time: the next read waits until this one is taken
  });
  void reader.done.then(
    () => ((ended = true), wake?.()),
    (err: unknown) => ((failure = err as Error), (ended = true), wake?.()),
  );
  reader.start();
  for (;;) {
    const run = queue.shift();
    if (run !== undefined) {
      yield run;
      reader.resume(1);
      continue;
    }
    if (failure !== undefined) throw failure;
    if (ended) return;
    await new Promise<void>((r) => (wake = r));
    wake = undefined;
  }
}

async function* bulkLoop(wake: RawFile, drain: RawFile, cpu: number, opts: ReadPagesOptions): AsyncGenerator<RunRead, void, undefined> {
  const { signal, pageSize } = opts;
  const maxPages = opts.maxPagesPerFlush ?? 1024;
  const perBatch = Math.max(1, opts.maxPagesPerBatch ?? 32);
  const interval = Math.max(1, opts.flushIntervalMs);
  // The readv target: a full batch keeps its buffer, a small one is copied out (ReadBatch).
  const batch = new ReadBatch(perBatch, pageSize);
  let emptyReads = 0;
  while (!signal.aborted) {
    // 1. Nothing to do until the first page: a blocking read on a pool thread.
    const n0 = await wake.read(batch.iov(0, 1)[0]!);
    if (signal.aborted) break;
    if (n0 < 0) continue; // EINTR
    if (n0 === 0) {
      // EOF although nobody stopped us (tracing_on went 0, or the file was flushed): reopen.
      emptyReads++;
      if (eofBackoffMs(emptyReads) > 0) await sleep(eofBackoffMs(emptyReads), signal);
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
      yield batch.take(cpu, n0, opts.layout);
      pending = 0;
    }
    let read = 0;
    while (read < maxPages && !signal.aborted) {
      const want = perBatch - pending;
      let n = want > 0 ? drain.readvSync(batch.iov(pending)) : 0;
      if (n === 0 && want > 0) {
        // The drain file was flushed (a child closed its copy): reopen, drain next time.
        if (!(await drain.reopen())) return;
        n = -1;
      }
      const got = n > 0 ? n : 0;
      const total = pending * pageSize + got;
      if (total === 0) break;
      const run = batch.take(cpu, total, opts.layout);
      read += run.count;
      yield run;
      pending = 0;
      if (n < 0 || got < want * pageSize) break; // nothing more for now
      // Once the writer's page is read, stop until next time: draining "until EAGAIN" never
      // ends when the probe sees our own reads (raw_syscalls), each a page holding our last call.
      if (opts.layout !== undefined && run.lastLength < pageSize - PARTIAL_PAGE_SLACK) break;
    }
  }
}
