/**
 * qemu-bridge: the host side of the virtio-serial transport. Keeps one
 * ChannelLink per guest socket it finds, and notices guests coming and going.
 */
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { DEFAULT_MAX_FRAME_BYTES, type Logger } from "@vesper/protocol";
import { ChannelLink } from "./channel-link.js";
import { discoverChannels } from "./guest-discovery.js";
import { VmmWatcher } from "./vmm-events.js";

export interface QemuBridgeOptions {
  nc: NatsConnection;
  log: Logger;
  /** Directories holding `<guest>.sock` chardev sockets. */
  socketDirs: string[];
  /** libvirt's channel target directory, or undefined to not look there. */
  libvirtDir?: string | undefined;
  scanIntervalMs?: number;
  maxFrameBytes?: number;
  /**
   * Directories holding `<guest>.qmp` QMP sockets to watch for VMM events (probe
   * `vmm`). Default: `<dir>/../vmm` for each socket dir. [] turns it off.
   */
  qmpDirs?: string[] | undefined;
}

export class QemuBridge {
  private readonly links = new Map<string, ChannelLink>();
  private timer: NodeJS.Timeout | undefined;
  private scanning: Promise<void> | undefined;
  private readonly vmm: VmmWatcher;

  constructor(private readonly o: QemuBridgeOptions) {
    this.vmm = new VmmWatcher(o.nc, o.log, o.qmpDirs ?? o.socketDirs.map((d) => join(d, "..", "vmm")));
  }

  async start(): Promise<void> {
    await this.scan();
    this.timer = setInterval(() => {
      this.scanning ??= this.scan().finally(() => (this.scanning = undefined));
    }, this.o.scanIntervalMs ?? 500);
    this.o.log.info({ socketDirs: this.o.socketDirs, libvirtDir: this.o.libvirtDir, qmpDirs: this.vmm.qmpDirs }, "qemu-bridge started");
  }

  /** Guests whose channel socket is present, and whether a link is up. */
  guests(): Array<{ guest: string; path: string; connected: boolean }> {
    return [...this.links.values()].map((l) => ({ guest: l.channel.guest, path: l.channel.path, connected: l.isConnected }));
  }

  /** Guests whose QMP socket is watched for VMM events. */
  vmmGuests(): Array<{ guest: string; path: string }> {
    return this.vmm.guests();
  }

  private async scan(): Promise<void> {
    await this.vmm.scan().catch((err: unknown) => this.o.log.warn({ err: (err as Error).message }, "scanning QMP sockets failed"));
    const found = await discoverChannels(this.o.socketDirs, this.o.libvirtDir);
    const seen = new Set<string>();
    for (const ch of found) {
      if (seen.has(ch.guest)) {
        this.o.log.warn({ guest: ch.guest, path: ch.path }, "two channel sockets for one guest id; ignoring the second");
        continue;
      }
      seen.add(ch.guest);
      const existing = this.links.get(ch.guest);
      if (existing !== undefined && existing.channel.path === ch.path) continue;
      existing?.stop();
      const link = new ChannelLink(ch, this.o.nc, this.o.log, this.o.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES);
      this.links.set(ch.guest, link);
      this.o.log.info({ guest: ch.guest, path: ch.path, source: ch.source }, "guest appeared");
      link.start();
    }
    for (const [guest, link] of this.links) {
      if (seen.has(guest)) continue;
      this.o.log.info({ guest }, "guest went away");
      link.stop();
      this.links.delete(guest);
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.scanning;
    this.vmm.stop();
    for (const l of this.links.values()) l.stop();
    this.links.clear();
  }
}
