/** `vesper-host`: runs Vesper's host services until SIGINT/SIGTERM. */
import { createLogger, isVesperError } from "@vesper/protocol";
import { loadHostConfig } from "./config.js";
import { startHost } from "./host.js";

const log = createLogger("vesper-host");

/** The NATS URL without its password, for the log. */
function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]+):[^@/]*@/g, "//$1:***@");
}

async function main(): Promise<void> {
  const cfg = loadHostConfig(process.argv.slice(2));
  const host = await startHost(cfg);
  log.info({ services: cfg.services, grpc: host.grpcAddress, nats: redactUrl(cfg.natsUrl) }, "vesper-host ready");
  let stopping = false;
  const stop = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ sig }, "stopping");
    void host.stop().then(() => process.exit(0));
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
}

main().catch((err: unknown) => {
  const msg = isVesperError(err) ? `${err.code}: ${err.message}` : err instanceof Error ? err.message : String(err);
  process.stderr.write(`vesper-host: ${msg}\n`);
  if (!isVesperError(err)) log.error({ err }, "failed to start");
  process.exit(1);
});
