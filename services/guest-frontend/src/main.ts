/**
 * Guest frontend entry point. Started once at boot; protects itself from the OOM
 * killer and serves the ring until told to stop. Every file it needs at run time
 * is opened before the host can ask for anything, except tracefs and /proc.
 */
import { writeFile } from "node:fs/promises";
import { createLogger } from "@vesper/protocol";
import { loadFrontendConfig } from "./config.js";
import { startFrontend } from "./run-frontend.js";

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
  const running = await startFrontend(cfg, log);
  let stoppedBy: NodeJS.Signals | undefined;
  const stop = (sig: NodeJS.Signals): void => {
    if (stoppedBy !== undefined) return dieOf(sig); // a second signal: now, without waiting for the clean-up
    stoppedBy = sig;
    log.info({ sig, keepProbes: cfg.keepProbesOnExit }, cfg.keepProbesOnExit ? "stopping: probes stay for the next frontend" : "stopping: unloading every probe");
    void running.stop({ reason: sig });
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  await running.done;
  // Stopped and cleaned up: die of the signal, as a parent expects (status 128+n). A normal exit
  // would wait for libuv's pool threads, and one can stay blocked in the virtio-serial port's
  // read until the host next sends something: closing the fd does not end a read in progress.
  if (stoppedBy !== undefined) dieOf(stoppedBy);
}

/** Ends the process by the signal's default action (no exit handlers, no wait for pool threads). */
function dieOf(sig: NodeJS.Signals): void {
  process.removeAllListeners(sig);
  process.kill(process.pid, sig);
}

main().catch((err: unknown) => {
  log.fatal({ err }, "guest frontend failed");
  process.exit(1);
});
