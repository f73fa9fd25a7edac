/**
 * One guest frontend, wired: tracefs and its probe engine, the probes an earlier run
 * left (adopted from their spool, or cleaned up), the transport and the ring client.
 * main.ts runs one per guest; a test or a benchmark may run several in one process.
 */
import type { Logger } from "@vesper/protocol";
import type { FrontendConfig } from "./config.js";
import { Frontend } from "./frontend.js";
import { RingClient } from "./ring-client.js";
import { ProbeSpool } from "./spool.js";
import { ProbeEngine, Tracefs } from "./tracefs/index.js";
import { openTransport } from "./transports/open-transport.js";

export interface RunningFrontend {
  /** Settles when the ring client stops (after stop(), or when the transport ends). */
  readonly done: Promise<void>;
  /**
   * Unloads every probe (or leaves them for the next frontend), says Goodbye so the host
   * does not take the silence for a lost agent, and closes the channel.
   */
  stop(opts?: { keepProbes?: boolean; reason?: string }): Promise<void>;
}

export async function startFrontend(cfg: FrontendConfig, log: Logger): Promise<RunningFrontend> {
  const tracefs = await Tracefs.open({ root: cfg.tracefsRoot, instancePrefix: cfg.instancePrefix });
  const engine = new ProbeEngine(tracefs, log);
  const frontend = new Frontend(tracefs, engine, log, {
    statsIntervalMs: cfg.statsIntervalMs,
    spoolDir: cfg.spoolDir,
    windowPages: cfg.windowPages,
    ackTimeoutMs: cfg.ackTimeoutMs,
    urgentWait: cfg.urgentWait,
    coalesceMaxMs: cfg.coalesceMaxMs,
    ...(cfg.nice === undefined ? {} : { nice: cfg.nice }),
    maxPagesPerMessage: 64,
    // Room for the message's own fields under the frame limit.
    maxMessageBytes: cfg.maxFrameBytes - 4096,
  });
  frontend.applyPriority();
  if (cfg.spoolDir !== undefined) {
    const spools = ProbeSpool.recover(cfg.spoolDir, (probe, err) => log.warn({ probe, err: err.message }, "discarding an unreadable spool"));
    const resumed = await frontend.adopt(spools);
    if (resumed.length > 0) log.info({ resumed }, "adopted the probes an earlier run left");
  }
  const stale = await engine.cleanupStale();
  if (stale.length > 0) log.warn({ removed: stale }, "removed probes left by an earlier run");
  const transport = await openTransport(cfg, log);
  const client = new RingClient(transport, frontend, log, { guestId: cfg.guestId });
  frontend.attach(client);
  const abort = new AbortController();
  log.info({ guest: cfg.guestId, transport: cfg.transport, tracefs: tracefs.root }, "guest frontend started");
  const done = client.run(abort.signal).finally(() => transport.close());
  return {
    done,
    stop: async (opts = {}) => {
      const keepProbes = opts.keepProbes ?? cfg.keepProbesOnExit;
      // No new Hello (and no new probe) while the probes are unloaded: a Hello now would make
      // the host load them again.
      client.beginClose();
      await frontend.close({ keepProbes });
      await client.goodbye({ reason: opts.reason ?? "stopped", probesKept: keepProbes }).catch((err: unknown) =>
        log.warn({ err: (err as Error).message }, "could not say goodbye to the host"),
      );
      abort.abort();
      await done.catch(() => undefined);
    },
  };
}
