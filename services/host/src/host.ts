/**
 * Starts the chosen host services. In one process (the default for a single
 * host) each service still has its own NATS connection and talks to the others
 * only over the bus, exactly as when they run as separate processes. The one
 * exception is opt-in: a gateway next to the listener serves live watches from the
 * listener's LiveFeed, records before they are stored.
 */
import { connectNats, LiveFeed, ProbeStore } from "@vesper/host-common";
import { isLoopbackListen, loadTokensFile, startGateway, tokenAuthorizer, type AuthorizeFn } from "@vesper/gateway";
import { ProbeLibrary, ProbeLoader } from "@vesper/probe-loader";
import { ProbeListener } from "@vesper/probe-listener";
import { QemuBridge } from "@vesper/qemu-bridge";
import { RulesService } from "@vesper/failover";
import { createLogger, ErrorCode, VesperError } from "@vesper/protocol";
import type { HostConfig } from "./config.js";

export interface RunningHost {
  /** The gateway's gRPC address, when the gateway runs here. */
  grpcAddress: string | undefined;
  stop(): Promise<void>;
}

export async function startHost(cfg: HostConfig): Promise<RunningHost> {
  const stops: Array<() => Promise<void>> = [];
  const has = (s: HostConfig["services"][number]): boolean => cfg.services.includes(s);
  const connect = (name: string) => connectNats({ name: `vesper-${name}`, servers: cfg.natsUrl, log: createLogger(name) });
  let grpcAddress: string | undefined;
  const live = has("listener") && has("gateway") ? new LiveFeed() : undefined;
  try {
    if (has("listener")) {
      const log = createLogger("probe-listener");
      const nc = await connect("probe-listener");
      const listener = new ProbeListener({ nc, log, store: await ProbeStore.open(nc), maxGuestBytesPerSec: cfg.guestMaxBytesPerSec, live });
      await listener.start();
      stops.push(async () => {
        await listener.stop();
        await nc.drain();
      });
    }
    if (has("loader")) {
      const log = createLogger("probe-loader");
      const nc = await connect("probe-loader");
      const library = await ProbeLibrary.load(cfg.probeDir, log);
      const loader = new ProbeLoader({
        nc,
        log,
        library,
        store: await ProbeStore.open(nc),
        idleHoldMs: cfg.idleHoldMs,
        commandTimeoutMs: cfg.commandTimeoutMs,
        ...(cfg.agentLostMs !== undefined ? { agentLostMs: cfg.agentLostMs } : {}),
      });
      loader.start();
      stops.push(async () => {
        await loader.stop();
        await nc.drain();
      });
    }
    if (has("bridge")) {
      const log = createLogger("qemu-bridge");
      const nc = await connect("qemu-bridge");
      const bridge = new QemuBridge({ nc, log, socketDirs: cfg.socketDirs, libvirtDir: cfg.libvirtDir, qmpDirs: cfg.qmpDirs });
      await bridge.start();
      stops.push(async () => {
        await bridge.stop();
        await nc.drain();
      });
    }
    if (has("gateway")) {
      const log = createLogger("gateway");
      let authorize: AuthorizeFn | undefined;
      if (cfg.tokensFile !== undefined) {
        const clients = loadTokensFile(cfg.tokensFile);
        authorize = tokenAuthorizer(clients);
        log.info({ tokensFile: cfg.tokensFile, clients: clients.map((c) => c.name) }, "gRPC calls need a bearer token");
      } else if (!isLoopbackListen(cfg.listen)) {
        throw new VesperError(
          ErrorCode.InvalidArgument,
          `refusing to serve the gRPC API on ${cfg.listen} without authentication: give --tokens FILE (env VESPER_TOKENS_FILE) or listen on loopback`,
        );
      } else {
        log.warn({ listen: cfg.listen }, "no tokens file (--tokens / VESPER_TOKENS_FILE): the gRPC API is unauthenticated and listens on loopback only");
      }
      const nc = await connect("gateway");
      const gw = await startGateway({ nc, log, listen: cfg.listen, loaderTimeoutMs: cfg.commandTimeoutMs + 5_000, authorize, live });
      grpcAddress = gw.address;
      stops.push(async () => {
        await gw.close();
        await nc.drain();
      });
    }
    if (has("rules")) {
      // Also without a rules file: rules added through the API (KV vesper_rules) need it.
      const log = createLogger("rules");
      const nc = await connect("rules");
      // VESPER_RULES_DURABLE: a separate durable consumer, for hosts that share one NATS server (tests).
      const durable = process.env.VESPER_RULES_DURABLE || undefined;
      if (cfg.rulesAllowExec) log.warn("--rules-allow-exec: rules added through the API may run commands as this process's user");
      const rules = new RulesService({ nc, log, rulesFile: cfg.rulesFile, stateDir: cfg.stateDir, durable, allowApiExec: cfg.rulesAllowExec });
      await rules.start();
      stops.push(async () => {
        await rules.stop();
        await nc.drain();
      });
    }
  } catch (err) {
    for (const s of stops.reverse()) await s().catch(() => undefined);
    throw err;
  }
  return {
    grpcAddress,
    async stop() {
      for (const s of stops.reverse()) await s().catch(() => undefined);
    },
  };
}
