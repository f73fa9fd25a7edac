/**
 * Many guest frontends in one process, for bench/scale (the issue allows several per process):
 * guests sg<first> .. sg<first + count - 1>, each with its own NATS connection, instance prefix
 * and probes on this host's kernel, exactly as dist/guest-frontend.mjs runs one.
 *
 *   UV_THREADPOOL_SIZE=... node --import tsx bench/scale/frontends.ts NATS_URL FIRST COUNT
 *
 * Prints "ready" once all are started; SIGTERM unloads every probe and exits.
 */
import { loadFrontendConfig, startFrontend, type RunningFrontend } from "@vesper/guest-frontend";
import { createLogger } from "@vesper/protocol";

const [natsUrl = "127.0.0.1:4222", firstArg = "0", countArg = "1"] = process.argv.slice(2);
const first = Number(firstArg);
const count = Number(countArg);
const log = createLogger("scale-frontends", process.env.VESPER_LOG_LEVEL ?? "warn");
const running: RunningFrontend[] = [];

async function main(): Promise<void> {
  for (let i = first; i < first + count; i++) {
    const cfg = loadFrontendConfig(
      ["--guest-id", `sg${i}`, "--transport", "nats", "--nats", natsUrl, "--instance-prefix", `vesper_s${i}`, "--no-oom-protect", "--spool-dir", ""],
      {},
    );
    running.push(await startFrontend(cfg, log.child({ guest: cfg.guestId })));
  }
  process.stdout.write("ready\n");
}

process.on("SIGTERM", () => {
  void Promise.allSettled(running.map((r) => r.stop())).then(() => process.exit(0));
});
main().catch((err: unknown) => {
  log.fatal({ err }, "frontends failed");
  process.exit(1);
});
