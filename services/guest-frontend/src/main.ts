/**
 * Guest frontend entry point. Started once at boot; protects itself from the
 * OOM killer, adopts the probes an earlier run left (their spool says which) and
 * cleans up the rest of what it left in tracefs, and serves the ring until told to stop. Every file it needs at run time is opened before the host
 * can ask for anything, except tracefs and /proc.
 */
import { writeFile } from "node:fs/promises";
import { createLogger } from "@vesper/protocol";
import { loadFrontendConfig } from "./config.js";
import { Frontend } from "./frontend.js";
import { RingClient } from "./ring-client.js";
import { ProbeSpool } from "./spool.js";
import { ProbeEngine, Tracefs } from "./tracefs/index.js";
import { openTransport } from "./transports/open-transport.js";

// Each blocking tracefs or port read holds a libuv pool thread; set before first use.
process.env.UV_THREADPOOL_SIZE ??= "64";

const log = createLogger("guest-frontend");

async function main(): Promise<void> {
  const cfg = loadFrontendConfig(process.argv.slice(2));
  if (cfg.oomProtect) {
    await writeFile("/proc/self/oom_score_adj", "-1000").catch((err: unknown) =>
      log.warn({ err: (err as Error).message }, "cannot protect the frontend from the OOM killer"),
    );
  }
  const tracefs = await Tracefs.open({ root: cfg.tracefsRoot, instancePrefix: cfg.instancePrefix });
  const engine = new ProbeEngine(tracefs, log);
  const frontend = new Frontend(tracefs, engine, log, {
    statsIntervalMs: cfg.statsIntervalMs,
    spoolDir: cfg.spoolDir,
    windowPages: cfg.windowPages,
    ackTimeoutMs: cfg.ackTimeoutMs,
    maxPagesPerMessage: 32,
    // Room for the message's own fields under the frame limit.
    maxMessageBytes: cfg.maxFrameBytes - 4096,
  });
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
  const stop = (sig: string): void => {
    log.info({ sig, keepProbes: cfg.keepProbesOnExit }, cfg.keepProbesOnExit ? "stopping: probes stay for the next frontend" : "stopping: unloading every probe");
    void frontend.close({ keepProbes: cfg.keepProbesOnExit }).finally(() => abort.abort());
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  log.info({ guest: cfg.guestId, transport: cfg.transport, tracefs: tracefs.root }, "guest frontend started");
  await client.run(abort.signal);
  await transport.close();
}

main().catch((err: unknown) => {
  log.fatal({ err }, "guest frontend failed");
  process.exit(1);
});
