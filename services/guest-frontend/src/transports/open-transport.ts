/** The one place that knows which guest channel is in use. */
import type { Logger } from "@vesper/protocol";
import type { FrontendConfig } from "../config.js";
import { NatsGuestTransport } from "./nats.js";
import type { GuestTransport } from "./transport.js";
import { findVirtioPort, VirtioSerialTransport } from "./virtio-serial.js";

export async function openTransport(cfg: FrontendConfig, log: Logger): Promise<GuestTransport> {
  if (cfg.transport === "nats") {
    return NatsGuestTransport.open(
      { servers: cfg.natsUrl, guestId: cfg.guestId, user: cfg.natsUser, pass: cfg.natsPass, token: cfg.natsToken },
      log,
    );
  }
  return VirtioSerialTransport.open(await findVirtioPort(cfg.portName), log, cfg.maxFrameBytes);
}
