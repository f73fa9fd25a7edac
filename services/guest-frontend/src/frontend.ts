/**
 * The guest frontend: executes the host's commands with the tracefs probe engine
 * and pumps each loaded probe's per-CPU pages to the host. Pages are shipped as
 * the kernel wrote them (the host decodes); each carries a per-probe, per-CPU
 * sequence number so the host can tell a lost page from a quiet CPU.
 *
 * Backpressure: a pump reads the next page only after the transport took the
 * last one, so when the host is slow the kernel ring keeps the events or counts
 * what it overwrites; nothing piles up unseen in this process.
 */
import { randomBytes } from "node:crypto";
import { ErrorCode, isVesperError, PROTOCOL_VERSION, ring, type Logger } from "@vesper/protocol";
import type { CommandHandler, RingClient } from "./ring-client.js";
import { ProbeError, readPageBatches, type PageRead, type ProbeEngine, type Tracefs } from "./tracefs/index.js";

const AGENT_VERSION = "0.1.0";
void PROTOCOL_VERSION;

interface RunningProbe {
  readonly spec: ring.ProbeSpec;
  readonly abort: AbortController;
  readonly pumps: Promise<void>[];
  pagesDropped: bigint;
}

export class Frontend implements CommandHandler {
  private readonly running = new Map<string, RunningProbe>();
  private client: RingClient | undefined;
  private statsTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly tracefs: Tracefs,
    private readonly engine: ProbeEngine,
    private readonly log: Logger,
    private readonly statsIntervalMs: number,
  ) {}

  attach(client: RingClient): void {
    this.client = client;
    this.statsTimer = setInterval(() => void this.sendStats(), this.statsIntervalMs);
    this.statsTimer.unref();
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

  private async load(spec: ring.ProbeSpec | undefined): Promise<ring.LoadedProbe> {
    if (spec === undefined) throw new ProbeError(ring.ResultCode.RESULT_CODE_INVALID_SPEC, "load command without a probe spec");
    if (this.running.has(spec.name)) {
      throw new ProbeError(ring.ResultCode.RESULT_CODE_ALREADY_LOADED, `probe ${spec.name} is already loaded`);
    }
    const loaded = await this.engine.load(spec);
    loaded.loadId = randomBytes(8).readBigUInt64BE();
    const abort = new AbortController();
    const mode = spec.delivery === ring.DeliveryMode.DELIVERY_MODE_BULK ? "bulk" : "urgent";
    const rp: RunningProbe = { spec, abort, pumps: [], pagesDropped: 0n };
    for (let cpu = 0; cpu < loaded.cpus; cpu++) {
      const pages = readPageBatches(this.engine.instanceDir(spec.name), cpu, mode, {
        signal: abort.signal,
        flushIntervalMs: spec.flushIntervalMs,
        pageSize: loaded.pageSize,
      });
      rp.pumps.push(this.pump(spec.name, cpu, pages, rp));
    }
    this.running.set(spec.name, rp);
    this.log.info({ probe: spec.name, instance: loaded.instance, cpus: loaded.cpus, mode }, "probe loaded");
    return loaded;
  }

  private async pump(probe: string, cpu: number, batches: AsyncIterable<PageRead[]>, rp: RunningProbe): Promise<void> {
    let seq = 0n;
    try {
      for await (const batch of batches) {
        // Bulk mode: several pages per message (one frame, one write); urgent: one.
        const pages = batch.map(({ page }) => ({ cpu, seq: ++seq, page }));
        const client = this.client;
        if (client === undefined) {
          rp.pagesDropped += BigInt(pages.length);
          continue;
        }
        try {
          await client.sendData({ probe, pages });
        } catch (err) {
          rp.pagesDropped += BigInt(pages.length);
          this.log.warn({ probe, cpu, err: (err as Error).message }, "could not ship a page; counted as dropped");
        }
      }
    } catch (err) {
      if (!rp.abort.signal.aborted) this.log.error({ probe, cpu, err: (err as Error).message }, "page reader failed");
    }
  }

  private async unload(probe: string): Promise<void> {
    const rp = this.running.get(probe);
    if (rp === undefined && !this.engine.loaded().includes(probe)) {
      throw new ProbeError(ring.ResultCode.RESULT_CODE_NOT_LOADED, `probe ${probe} is not loaded`);
    }
    rp?.abort.abort();
    this.running.delete(probe);
    // The engine turns tracing off first, which wakes readers blocked in read().
    await this.engine.unload(probe);
    if (rp !== undefined) await Promise.all(rp.pumps);
    this.log.info({ probe }, "probe unloaded");
  }

  private async sendStats(): Promise<void> {
    const client = this.client;
    if (client === undefined || !client.isConnected) return;
    for (const [probe, rp] of this.running) {
      try {
        const cpus = await this.engine.stats(probe);
        await client.sendStats({ probe, cpus, pagesDropped: rp.pagesDropped });
      } catch (err) {
        this.log.debug({ probe, err: (err as Error).message }, "stats not sent");
      }
    }
  }

  async close(): Promise<void> {
    clearInterval(this.statsTimer);
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
