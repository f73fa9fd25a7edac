/**
 * Starts the chosen host services. In one process (the default for a single
 * host) each service still has its own NATS connection and talks to the others
 * only over the bus, exactly as when they run as separate processes.
 */
import { connectNats, ProbeStore } from "@vesper/host-common";
import { startGateway } from "@vesper/gateway";
import { ProbeLibrary, ProbeLoader } from "@vesper/probe-loader";
import { ProbeListener } from "@vesper/probe-listener";
import { QemuBridge } from "@vesper/qemu-bridge";
import { createLogger } from "@vesper/protocol";
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
  try {
    if (has("listener")) {
      const log = createLogger("probe-listener");
      const nc = await connect("probe-listener");
      const listener = new ProbeListener({ nc, log, store: await ProbeStore.open(nc) });
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
      const bridge = new QemuBridge({ nc, log, socketDirs: cfg.socketDirs, libvirtDir: cfg.libvirtDir });
      await bridge.start();
      stops.push(async () => {
        await bridge.stop();
        await nc.drain();
      });
    }
    if (has("gateway")) {
      const log = createLogger("gateway");
      const nc = await connect("gateway");
      const gw = await startGateway({ nc, log, listen: cfg.listen, loaderTimeoutMs: cfg.commandTimeoutMs + 5_000 });
      grpcAddress = gw.address;
      stops.push(async () => {
        await gw.close();
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
