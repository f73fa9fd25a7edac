/**
 * The guest frontend: executes the host's commands with the tracefs probe engine
 * and pumps each loaded probe's per-CPU pages to the host. Pages are shipped as
 * the kernel wrote them (the host decodes); each carries a per-probe, per-CPU
 * sequence number and stays in that CPU's send window (and the spool) until the
 * host acknowledges it.
 *
 * Backpressure: a pump reads the next page only when its window has room, so when
 * the host is slow or away the kernel ring keeps the events or counts what it
 * overwrites; nothing piles up unseen in this process.
 */
import { setPriority } from "node:os";
import { ErrorCode, isVesperError, ring, type Logger } from "@vesper/protocol";
import type { CommandHandler, RingClient } from "./ring-client.js";
import { SendWindow, type OutRun } from "./send-window.js";
import { ProbeSpool, type RecoveredSpool } from "./spool.js";
import { DEFAULT_COALESCING, ProbeError, readPageRuns, startUrgentReader, urgentReadsInLoop, type ProbeEngine, type RunRead, type Tracefs, type UrgentReader, type UrgentWait } from "./tracefs/index.js";

const AGENT_VERSION = "0.2.0";

export interface FrontendOptions {
  /** How often loaded probes' kernel counters are reported. */
  statsIntervalMs: number;
  /** RAM-backed directory for the spool; undefined: no spool (a killed frontend loses its window). */
  spoolDir: string | undefined;
  /** Unacknowledged pages per probe and CPU (the send window, and the spool's slots). */
  windowPages: number;
  /** No ack progress for this long while pages are out: send them again. */
  ackTimeoutMs: number;
  /** Most pages in one data message (bulk mode reads up to this many per readv). */
  maxPagesPerMessage: number;
  /** Most page bytes in one data message (under the frame limit). */
  maxMessageBytes: number;
  /** How urgent readers wait for pages (default "epoll"). */
  urgentWait?: UrgentWait;
  /** Urgent readers under a stream of events: the longest coalescing wait (default: the reader's, 250 ms). */
  coalesceMaxMs?: number;
  /** The process's nice value, set by applyPriority() (needs root below 0); undefined: left alone. */
  nice?: number;
}

interface RunningProbe {
  readonly spec: ring.ProbeSpec;
  readonly loadId: bigint;
  /** Stops the page readers. */
  readonly abort: AbortController;
  /** Set at unload: nothing more is sent. */
  stopped: boolean;
  readonly pumps: Promise<void>[];
  readonly windows: SendWindow[];
  readonly sending: boolean[];
  /** Urgent mode: each CPU's reader (it waits for room when its window is full). */
  readonly urgent: (UrgentReader | undefined)[];
  spool: ProbeSpool | undefined;
  pagesDropped: bigint;
  /** The counters last sent (stats go out only when they change). */
  lastStats: string;
  /** Pages were read since the last stats: the counters may have changed (else they are read once a minute). */
  active: boolean;
  statsAt: number;
  /** Taken at adoption, before any read: sent with every stats report (the host counts each loss once). */
  readonly adoptedChecks: ring.ReadCheck[];
}

export class Frontend implements CommandHandler {
  private readonly running = new Map<string, RunningProbe>();
  private client: RingClient | undefined;
  private statsTimer: NodeJS.Timeout | undefined;
  private resendTimer: NodeJS.Timeout | undefined;
  private spoolWarned = false;
  /** Per-run timing in the log at level trace (VESPER_LOG_LEVEL=trace): where an event's time goes. */
  private readonly tracing: boolean;

  constructor(
    private readonly tracefs: Tracefs,
    private readonly engine: ProbeEngine,
    private readonly log: Logger,
    private readonly o: FrontendOptions,
  ) {
    this.tracing = log.isLevelEnabled?.("trace") ?? false;
  }

  attach(client: RingClient): void {
    this.client = client;
    // Timers run only while they have something to do: under emulation every wake-up of an
    // idle agent costs the guest milliseconds.
    this.statsTimer = setInterval(() => {
      if (this.running.size > 0) void this.sendStats();
    }, this.o.statsIntervalMs);
    this.statsTimer.unref();
  }

  /** The stall check runs while some page is out and not acknowledged. */
  private armStallCheck(): void {
    if (this.resendTimer !== undefined) return;
    this.resendTimer = setInterval(() => this.checkStalls(), Math.max(50, Math.floor(this.o.ackTimeoutMs / 4)));
    this.resendTimer.unref();
  }

  async hello(): Promise<ring.Hello> {
    return {
      kernelRelease: this.tracefs.kernelRelease,
      bootId: this.tracefs.bootId,
      capabilities: await this.tracefs.capabilities(),
      loadedProbes: [...this.running.keys()],
      agentVersion: AGENT_VERSION,
      monoNs: process.hrtime.bigint(),
    };
  }

  async handle(command: ring.Command): Promise<ring.Result> {
    const commandId = command.commandId;
    const kind = command.kind;
    try {
      switch (kind?.$case) {
        case "ping":
          return { commandId, code: ring.ResultCode.RESULT_CODE_OK, message: "", kernelLog: [], detail: { $case: "pong", value: { monoNs: process.hrtime.bigint() } } };
        case "load": {
          const loaded = await this.load(kind.value.spec);
          return { commandId, code: ring.ResultCode.RESULT_CODE_OK, message: "", kernelLog: [], detail: { $case: "loaded", value: loaded } };
        }
        case "unload":
          await this.unload(kind.value.probe);
          return { commandId, code: ring.ResultCode.RESULT_CODE_OK, message: "", kernelLog: [] };
        default:
          return { commandId, code: ring.ResultCode.RESULT_CODE_INVALID_SPEC, message: "unknown command", kernelLog: [] };
      }
    } catch (err) {
      return { commandId, ...errorResult(err) };
    }
  }

  onAck(ack: ring.DataAck): boolean {
    const rp = this.running.get(ack.probe);
    if (rp === undefined || rp.loadId !== ack.loadId) return false;
    let ok = true;
    for (const c of ack.cpus) {
      const w = rp.windows[c.cpu];
      if (w === undefined || c.seq > BigInt(Number.MAX_SAFE_INTEGER) || !w.ack(Number(c.seq), ack.resend)) {
        ok = false;
        continue;
      }
      if (Number(c.seq) === w.acked) w.ackedEvents = c.events;
      rp.urgent[c.cpu]?.resume(w.room); // a reader waiting for room goes on (resume ignores 0)
      if (w.hasUnsent) this.kick(rp, c.cpu);
    }
    return ok;
  }

  onWelcome(): void {
    // A new Welcome may come from a host that restarted: whatever was in flight is gone.
    for (const rp of this.running.values()) {
      rp.windows.forEach((w, cpu) => {
        if (w.unacked === 0) {
          // An adopted load's skip goes out even with no page to carry it, so the host's
          // check of what the predecessor read need not wait for this CPU's next event.
          if (w.pendingSkip !== undefined) void this.client?.sendData(this.dataMessage(rp, cpu, [])).catch(() => undefined);
          return;
        }
        w.rewind();
        this.kick(rp, cpu);
      });
    }
  }

  /**
   * Takes over probes an earlier frontend process left (killed, crashed): each spool
   * whose tracefs instance is intact resumes with the same load id and sequence, and
   * its pages go out again; the rest are removed. Returns the probes resumed.
   */
  async adopt(recovered: readonly RecoveredSpool[]): Promise<string[]> {
    const resumed: string[] = [];
    for (const r of recovered) {
      const { meta } = r;
      try {
        const got = await this.engine.adopt(meta.spec);
        if (got.cpus !== meta.cpus || got.pageSize !== meta.pageSize) {
          await this.engine.unload(meta.spec.name, { blockedReaders: false }).catch(() => undefined);
          throw new Error(`instance has ${got.cpus} CPUs of ${got.pageSize}-byte pages, the spool ${meta.cpus} of ${meta.pageSize}`);
        }
        const pending = [...r.runs.values()].reduce((n, runs) => n + runs.reduce((m, x) => m + x.count, 0), 0);
        // Nothing reads the buffers now: what the kernel says it handed out is all in the
        // predecessor's pages (spooled, or lost with it: the host tells the two apart).
        const read = await this.engine.stats(meta.spec.name);
        this.start(meta.spec, meta.loadId, meta.cpus, meta.pageSize, r.spool, r.runs, read);
        resumed.push(meta.spec.name);
        this.log.info({ probe: meta.spec.name, loadId: String(meta.loadId), pagesToResend: pending }, "resumed a probe from its spool");
      } catch (err) {
        r.spool.remove();
        this.log.warn({ probe: meta.spec.name, err: (err as Error).message }, "cannot resume a spooled probe; the host will load it again");
      }
    }
    return resumed;
  }

  private async load(spec: ring.ProbeSpec | undefined): Promise<ring.LoadedProbe> {
    if (spec === undefined) throw new ProbeError(ring.ResultCode.RESULT_CODE_INVALID_SPEC, "load command without a probe spec");
    if (this.running.has(spec.name)) {
      throw new ProbeError(ring.ResultCode.RESULT_CODE_ALREADY_LOADED, `probe ${spec.name} is already loaded`);
    }
    const loaded = await this.engine.load(spec);
    let spool: ProbeSpool | undefined;
    if (this.o.spoolDir !== undefined) {
      try {
        spool = ProbeSpool.create(this.o.spoolDir, {
          spec,
          loadId: loaded.loadId,
          instance: loaded.instance,
          cpus: loaded.cpus,
          pageSize: loaded.pageSize,
          slots: this.o.windowPages,
        });
      } catch (err) {
        this.warnSpool(err);
      }
    }
    this.start(spec, loaded.loadId, loaded.cpus, loaded.pageSize, spool, new Map());
    this.log.info({ probe: spec.name, instance: loaded.instance, cpus: loaded.cpus, spool: spool !== undefined }, "probe loaded");
    return loaded;
  }

  private start(
    spec: ring.ProbeSpec,
    loadId: bigint,
    cpus: number,
    pageSize: number,
    spool: ProbeSpool | undefined,
    resend: ReadonlyMap<number, OutRun[]>,
    /** Adopted: the kernel's counters before any read by this process. */
    adoptedStats?: readonly ring.CpuStats[],
  ): void {
    const abort = new AbortController();
    const mode = spec.delivery === ring.DeliveryMode.DELIVERY_MODE_BULK ? "bulk" : "urgent";
    const perBatch = Math.max(1, Math.min(this.o.maxPagesPerMessage, this.o.windowPages));
    const rp: RunningProbe = { spec, loadId, abort, stopped: false, pumps: [], windows: [], sending: [], urgent: [], spool, pagesDropped: 0n, lastStats: "", active: true, statsAt: 0, adoptedChecks: [] };
    for (let cpu = 0; cpu < cpus; cpu++) {
      const old = resend.get(cpu) ?? [];
      // After a restart the host holds at least everything before the oldest spooled page.
      const w = new SendWindow(cpu, this.o.windowPages, old.length > 0 ? old[0]!.firstSeq - 1 : 0);
      for (const run of old) w.push(run);
      if (adoptedStats !== undefined) {
        // The predecessor sent each run before spooling it: the host may hold up to a
        // window of pages past the spool. New pages start beyond them.
        w.skipTo(w.nextSeq + this.o.windowPages);
        const st = adoptedStats.find((x) => x.cpu === cpu);
        if (st !== undefined) rp.adoptedChecks.push({ cpu, readEvents: st.readEvents, nextSeq: BigInt(w.nextSeq) });
      }
      rp.windows.push(w);
      rp.sending.push(false);
    }
    this.running.set(spec.name, rp);
    for (let cpu = 0; cpu < cpus; cpu++) {
      const opts = {
        signal: abort.signal,
        flushIntervalMs: spec.flushIntervalMs,
        pageSize,
        maxPagesPerBatch: perBatch,
        layout: this.engine.pageLayout(spec.name),
        urgentWait: this.o.urgentWait,
        ...(this.o.coalesceMaxMs === undefined ? {} : { adaptiveBatch: { ...DEFAULT_COALESCING, maxDelayMs: this.o.coalesceMaxMs } }),
      };
      const dir = this.engine.instanceDir(spec.name);
      if (mode === "urgent") rp.pumps.push(this.urgentPump(spec.name, dir, cpu, rp, opts));
      else rp.pumps.push(this.pump(spec.name, cpu, readPageRuns(dir, cpu, mode, opts), rp, perBatch));
      if (rp.windows[cpu]!.hasUnsent) this.kick(rp, cpu);
    }
  }

  /** Urgent mode: every page goes from the read's callback to the channel, synchronously when it can. */
  private async urgentPump(probe: string, dir: string, cpu: number, rp: RunningProbe, opts: Parameters<typeof startUrgentReader>[2]): Promise<void> {
    try {
      const reader = await startUrgentReader(dir, cpu, opts, (r) => this.take(rp, cpu, r));
      if (reader === undefined) return;
      rp.urgent[cpu] = reader;
      await reader.done;
    } catch (err) {
      if (!rp.abort.signal.aborted) this.log.error({ probe, cpu, err: (err as Error).message }, "page reader failed");
    }
  }

  /** A run read from the kernel: into the window, out, into the spool. Returns the window's room left, in pages. */
  private take(rp: RunningProbe, cpu: number, r: RunRead): number {
    rp.active = true;
    const w = rp.windows[cpu]!;
    const run: OutRun = { firstSeq: w.nextSeq, count: r.count, pageSize: r.pageSize, lastLength: r.lastLength, data: r.data };
    w.push(run);
    const readAt = this.tracing ? process.hrtime.bigint() : 0n;
    this.sendNow(rp, cpu);
    if (this.tracing) this.trace(rp.spec.name, cpu, run, readAt);
    // Out first, then into the spool: its two writes stay off the path of an urgent event.
    // Either order leaves a moment in which a killed frontend loses the page; this one is as short.
    if (rp.spool !== undefined) {
      try {
        rp.spool.write(cpu, run);
      } catch (err) {
        this.warnSpool(err);
        rp.spool = undefined;
      }
    }
    return w.room;
  }

  /** What the window has unsent goes out now if the transport can take it without waiting; else the async sender does it. */
  private sendNow(rp: RunningProbe, cpu: number): void {
    const client = this.client;
    if (rp.sending[cpu] === true || rp.stopped || client === undefined) return;
    const w = rp.windows[cpu]!;
    this.armStallCheck();
    while (w.hasUnsent) {
      const runs = w.take(this.o.maxPagesPerMessage, this.o.maxMessageBytes);
      let sent = false;
      try {
        sent = client.trySendDataNow(this.dataMessage(rp, cpu, runs));
      } catch (err) {
        w.unsend(runs);
        this.log.warn({ probe: rp.spec.name, cpu, err: (err as Error).message }, "could not send pages; they go out again later");
        return;
      }
      if (!sent) {
        if (this.tracing) this.log.trace({ probe: rp.spec.name, cpu }, "channel busy: sending asynchronously");
        w.unsend(runs);
        this.kick(rp, cpu);
        return;
      }
    }
  }

  private dataMessage(rp: RunningProbe, cpu: number, runs: readonly OutRun[]): Parameters<RingClient["sendData"]>[0] {
    const w = rp.windows[cpu]!;
    const skip = w.pendingSkip;
    return {
      probe: rp.spec.name,
      loadId: rp.loadId,
      runs: runs.map((r) => ({ cpu, firstSeq: r.firstSeq, count: r.count, pageSize: r.pageSize, lastLength: r.lastLength, data: r.data })),
      acked: [{ cpu, seq: w.acked, events: w.ackedEvents }],
      ...(skip === undefined ? {} : { skips: [{ cpu, from: skip.from, to: skip.to }] }),
      // A quarter of the window unacknowledged: ask for an ack now. Else the host lets acks
      // wait for company (each one wakes this agent), and a small window would stall.
      ackSoon: w.unacked >= w.capacity / 4,
    };
  }

  private trace(probe: string, cpu: number, run: OutRun, readAt: bigint): void {
    const data = run.data;
    // Page header timestamp (trace clock mono = hrtime's clock) plus the first record's
    // delta (a time-extend record first: its two words make the delta): kernel -> read -> sent.
    let ts = data.length >= 20 ? data.readBigUInt64LE(0) : 0n;
    if (data.length >= 20) {
      const hdr = data.readUInt32LE(16);
      if ((hdr & 31) === 30 && data.length >= 24) ts += (BigInt(data.readUInt32LE(20)) << 27n) | BigInt(hdr >>> 5);
      else ts += BigInt(hdr >>> 5);
    }
    this.log.trace({ probe, cpu, seq: run.firstSeq, pages: run.count, kernelToReadUs: Number(readAt - ts) / 1e3, readToSentUs: Number(process.hrtime.bigint() - readAt) / 1e3 }, "page run");
  }

  private async pump(probe: string, cpu: number, runs: AsyncIterable<RunRead>, rp: RunningProbe, perBatch: number): Promise<void> {
    const w = rp.windows[cpu]!;
    const signal = rp.abort.signal;
    const it = runs[Symbol.asyncIterator]();
    try {
      for (;;) {
        // Room first: the generator reads from the kernel only when pulled.
        await w.waitForRoom(perBatch, signal);
        if (signal.aborted) break;
        const r = await it.next();
        if (r.done === true) break;
        this.take(rp, cpu, r.value);
      }
    } catch (err) {
      if (!signal.aborted) this.log.error({ probe, cpu, err: (err as Error).message }, "page reader failed");
    } finally {
      await it.return?.();
    }
  }

  /** Starts the CPU's sender unless it is running: it sends until the window has nothing unsent. */
  private kick(rp: RunningProbe, cpu: number): void {
    if (rp.sending[cpu] === true || rp.stopped) return;
    this.armStallCheck();
    rp.sending[cpu] = true;
    void this.sendLoop(rp, cpu).finally(() => {
      rp.sending[cpu] = false;
    });
  }

  private async sendLoop(rp: RunningProbe, cpu: number): Promise<void> {
    const w = rp.windows[cpu]!;
    while (w.hasUnsent && !rp.stopped) {
      const client = this.client;
      if (client === undefined) return;
      // Whatever came in while the last message was being written goes out together.
      const runs = w.take(this.o.maxPagesPerMessage, this.o.maxMessageBytes);
      try {
        await client.sendData(this.dataMessage(rp, cpu, runs));
      } catch (err) {
        w.unsend(runs);
        this.log.warn({ probe: rp.spec.name, cpu, err: (err as Error).message }, "could not send pages; they go out again later");
        return;
      }
    }
  }

  /** Pages out with no ack progress for ackTimeoutMs go out again (go-back-N). */
  private checkStalls(): void {
    const now = Date.now();
    if (this.unacked === 0) {
      clearInterval(this.resendTimer);
      this.resendTimer = undefined;
      return;
    }
    for (const rp of this.running.values()) {
      rp.windows.forEach((w, cpu) => {
        if (w.stalled(now, this.o.ackTimeoutMs)) {
          this.log.debug({ probe: rp.spec.name, cpu, unacked: w.unacked }, "no ack: sending the window again");
          w.rewind();
          w.noteRetry(now);
        }
        if (w.hasUnsent) this.kick(rp, cpu);
      });
    }
  }

  private warnSpool(err: unknown): void {
    if (this.spoolWarned) return;
    this.spoolWarned = true;
    this.log.warn(
      { spoolDir: this.o.spoolDir, err: (err as Error).message },
      "cannot spool pages: a killed frontend would lose its unacknowledged pages",
    );
  }

  private async unload(probe: string): Promise<void> {
    const rp = this.running.get(probe);
    if (rp === undefined && !this.engine.loaded().includes(probe)) {
      throw new ProbeError(ring.ResultCode.RESULT_CODE_NOT_LOADED, `probe ${probe} is not loaded`);
    }
    rp?.abort.abort();
    if (rp !== undefined) rp.stopped = true;
    // The host detached first (two-phase unload): nobody wants what is still unacknowledged.
    for (const w of rp?.windows ?? []) w.clear();
    this.running.delete(probe);
    // A probe this process never read (left by an earlier one) has no reader to wake.
    await this.engine.unload(probe, { blockedReaders: rp !== undefined && !this.readsInLoop(rp) });
    if (rp !== undefined) await Promise.all(rp.pumps);
    rp?.spool?.remove();
    this.log.info({ probe }, "probe unloaded");
  }

  /** The kernel's counters per probe, sent when they changed since the last time. */
  private async sendStats(): Promise<void> {
    const client = this.client;
    if (client === undefined || !client.isConnected) return;
    const now = Date.now();
    for (const [probe, rp] of this.running) {
      // Nothing read since last time: the counters hardly moved (reading them costs an idle guest).
      if (!rp.active && now - rp.statsAt < 60_000) continue;
      rp.active = false;
      rp.statsAt = now;
      try {
        const readChecks = [...rp.adoptedChecks];
        let cpus: ring.CpuStats[];
        if (this.readsInLoop(rp)) {
          // Every read of these buffers runs on this thread, synchronously: between two of
          // them, each event the kernel handed out is in a page before the window's next seq.
          cpus = this.engine.statsNow(probe);
          for (const c of cpus) {
            const w = rp.windows[c.cpu];
            if (w !== undefined) readChecks.push({ cpu: c.cpu, readEvents: c.readEvents, nextSeq: BigInt(w.nextSeq) });
          }
        } else {
          cpus = await this.engine.stats(probe);
        }
        const key = cpus.map((c) => `${c.entries},${c.overrun},${c.droppedEvents},${c.readEvents}`).join(";") + `;${rp.pagesDropped}`;
        if (key === rp.lastStats) continue;
        rp.lastStats = key;
        await client.sendStats({ probe, cpus, pagesDropped: rp.pagesDropped, readChecks });
      } catch (err) {
        this.log.debug({ probe, err: (err as Error).message }, "stats not sent");
      }
    }
  }

  /** Applies FrontendOptions.nice to this process. */
  applyPriority(): void {
    const nice = this.o.nice;
    if (nice === undefined) return;
    try {
      setPriority(nice);
    } catch (err) {
      this.log.warn({ nice, err: (err as Error).message }, "cannot set the frontend's priority");
    }
  }

  /** Whether every read of the probe's buffers happens on the event loop's thread (urgent, epoll wait). */
  private readsInLoop(rp: RunningProbe): boolean {
    return rp.spec.delivery !== ring.DeliveryMode.DELIVERY_MODE_BULK && urgentReadsInLoop(this.o.urgentWait);
  }

  /** Unacknowledged pages across all probes (what a clean stop waits for). */
  get unacked(): number {
    let n = 0;
    for (const rp of this.running.values()) for (const w of rp.windows) n += w.unacked;
    return n;
  }

  /**
   * Stops. By default every probe is unloaded (a clean stop). With keepProbes the
   * probes stay in tracefs and the spools stay on, for the next frontend to adopt
   * (an upgrade): reading stops and the window gets up to `drainMs` to be acknowledged.
   */
  async close(opts: { keepProbes?: boolean; drainMs?: number } = {}): Promise<void> {
    clearInterval(this.statsTimer);
    if (opts.keepProbes === true) {
      for (const rp of this.running.values()) rp.abort.abort();
      const deadline = Date.now() + (opts.drainMs ?? 2_000);
      while (this.unacked > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      clearInterval(this.resendTimer);
      for (const rp of this.running.values()) {
        await Promise.all(rp.pumps);
        rp.spool?.close();
      }
      this.running.clear();
      return;
    }
    clearInterval(this.resendTimer);
    for (const probe of [...this.running.keys()]) await this.unload(probe).catch(() => undefined);
  }
}

function errorResult(err: unknown): Omit<ring.Result, "commandId"> {
  if (err instanceof ProbeError) return { code: err.resultCode, message: err.message, kernelLog: [...err.kernelLog] };
  if (isVesperError(err, ErrorCode.InvalidSpec)) {
    return { code: ring.ResultCode.RESULT_CODE_INVALID_SPEC, message: err.message, kernelLog: [] };
  }
  return { code: ring.ResultCode.RESULT_CODE_INTERNAL, message: err instanceof Error ? err.message : String(err), kernelLog: [] };
}
