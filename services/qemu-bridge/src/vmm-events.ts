/**
 * VMM-level signals, with no guest cooperation: one QMP connection per guest,
 * its events published as Vesper events of guest G, probe `vmm`, on
 * vesper.events.<G>.vmm (JetStream), as api.WatchEventsResponse:
 *   event  "qmp/<QMP event>", e.g. qmp/GUEST_PANICKED, qmp/SHUTDOWN, qmp/STOP,
 *          qmp/RESUME, qmp/RESET, qmp/WATCHDOG (every QMP event is passed on);
 *          "qmp/QEMU_EXITED" when the monitor socket closes after a handshake
 *   fields the QMP event's data, flattened ("info.type"); numbers as int,
 *          strings and booleans as str
 *   ts     QEMU's event timestamp (host wall clock), unix ns; received_unix_ns
 *          when the bridge got it; pid 0, comm "".
 *   msgID  vmm:<G>:<event>:<qemu seconds>.<micros>, so two bridges watching the
 *          same QEMU store each event once.
 *
 * Where the sockets are: `<dir>/<guest>.qmp` in each QMP directory; by default
 * `<socket dir>/../vmm` for each channel socket directory. QEMU serves one QMP
 * client per monitor, so Vesper needs a monitor of its own: start QEMU with a
 * second `-qmp unix:<run>/vmm/<guest>.qmp,server=on,wait=off` (the test
 * harness keeps `<run>/qmp/<guest>.qmp` for itself). libvirt owns its domains'
 * monitors: there, use libvirt's lifecycle events (`virsh event --loop
 * --event lifecycle` reports "Crashed Panicked") or `virsh qemu-monitor-event`;
 * this bridge does not subscribe to libvirt (not implemented).
 */
import { readdir, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { jetstream, jetstreamManager, type JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { ensureEventsStream } from "@vesper/host-common";
import { api, GUEST_ID_RE, subjects, type Logger } from "@vesper/protocol";
import { flattenQmpData, QmpClient, type QmpEvent } from "./qmp-client.js";

export const VMM_PROBE = "vmm";
const RETRY_MS = 1_000;

export async function discoverQmpSockets(dirs: readonly string[]): Promise<Array<{ guest: string; path: string }>> {
  const out: Array<{ guest: string; path: string }> = [];
  for (const dir of dirs) {
    for (const f of await readdir(dir).catch(() => [] as string[])) {
      if (!f.endsWith(".qmp")) continue;
      const guest = basename(f, ".qmp");
      const path = join(dir, f);
      if (!GUEST_ID_RE.test(guest)) continue;
      const st = await stat(path).catch(() => undefined);
      if (st?.isSocket() === true) out.push({ guest, path });
    }
  }
  return out;
}

/** The api.Event a QMP event becomes. */
export function qmpToEvent(guest: string, ev: QmpEvent, receivedUnixNs: bigint): api.Event {
  const fields: Record<string, api.FieldValue> = {};
  for (const [k, v] of Object.entries(flattenQmpData(ev.data))) {
    fields[k] =
      typeof v === "number" && Number.isSafeInteger(v)
        ? { kind: { $case: "int", value: BigInt(v) } }
        : { kind: { $case: "str", value: String(v) } };
  }
  const ts = BigInt(ev.timestamp.seconds) * 1_000_000_000n + BigInt(ev.timestamp.microseconds) * 1_000n;
  return {
    guest,
    probe: VMM_PROBE,
    event: `qmp/${ev.event}`,
    cpu: 0,
    ts,
    receivedUnixNs,
    pid: 0,
    comm: "",
    fields,
    pageSeq: 0n,
    index: 0,
    lostBefore: 0n,
  };
}

class VmmLink {
  private client: QmpClient | undefined;
  private retry: NodeJS.Timeout | undefined;
  private stopped = false;
  private loggedWait = false;

  constructor(
    readonly guest: string,
    readonly path: string,
    private readonly publish: (ev: api.Event, msgID: string) => void,
    private readonly log: Logger,
  ) {}

  start(): void {
    if (this.stopped) return;
    const c = new QmpClient(this.path, {
      onReady: () => {
        this.loggedWait = false;
        this.log.info({ guest: this.guest, path: this.path }, "QMP connected: watching VMM events");
      },
      onEvent: (ev) => {
        const msgID = `vmm:${this.guest}:${ev.event}:${ev.timestamp.seconds}.${String(ev.timestamp.microseconds).padStart(6, "0")}`;
        this.log.info({ guest: this.guest, event: ev.event, data: ev.data }, "QMP event");
        this.publish(qmpToEvent(this.guest, ev, BigInt(Date.now()) * 1_000_000n), msgID);
      },
      onClose: ({ ready, reason }) => {
        if (ready) {
          const now = Date.now();
          this.log.warn({ guest: this.guest, reason }, "QMP socket closed: QEMU exited");
          this.publish(
            qmpToEvent(this.guest, { event: "QEMU_EXITED", data: { reason }, timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 } }, BigInt(now) * 1_000_000n),
            `vmm:${this.guest}:QEMU_EXITED:${now}`,
          );
        } else if (!this.loggedWait) {
          this.loggedWait = true;
          this.log.debug({ guest: this.guest, reason }, "QMP not available yet; retrying");
        }
        if (!this.stopped) {
          this.retry = setTimeout(() => this.start(), RETRY_MS);
          this.retry.unref();
        }
      },
    });
    this.client = c;
    c.start();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    this.client?.stop();
  }

  /**
   * The socket file went away. QEMU unlinks it as it exits, maybe before we read
   * the connection's close: keep a live connection so its close still reports
   * QEMU_EXITED, but do not reconnect.
   */
  gone(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    if (this.client?.isReady !== true) this.client?.stop();
  }
}

export class VmmWatcher {
  private readonly links = new Map<string, VmmLink>();
  private readonly js: JetStreamClient;
  private stream: Promise<unknown> | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly log: Logger,
    readonly qmpDirs: readonly string[],
  ) {
    this.js = jetstream(nc);
  }

  guests(): Array<{ guest: string; path: string }> {
    return [...this.links.values()].map((l) => ({ guest: l.guest, path: l.path }));
  }

  async scan(): Promise<void> {
    const found = await discoverQmpSockets(this.qmpDirs);
    const seen = new Set<string>();
    for (const q of found) {
      if (seen.has(q.guest)) continue;
      seen.add(q.guest);
      const existing = this.links.get(q.guest);
      if (existing !== undefined && existing.path === q.path) continue;
      existing?.stop();
      const link = new VmmLink(q.guest, q.path, (ev, id) => this.publish(ev, id), this.log);
      this.links.set(q.guest, link);
      link.start();
    }
    for (const [guest, link] of this.links) {
      if (seen.has(guest)) continue;
      link.gone();
      this.links.delete(guest);
    }
  }

  private publish(ev: api.Event, msgID: string): void {
    const res: api.WatchEventsResponse = { kind: { $case: "event", value: ev }, streamSeq: 0n };
    this.stream ??= jetstreamManager(this.nc).then((jsm) => ensureEventsStream(jsm, this.log));
    void this.stream
      .then(() => this.js.publish(subjects.events(ev.guest, VMM_PROBE), api.WatchEventsResponse.encode(res).finish(), { msgID }))
      .catch((err: unknown) => {
        this.stream = undefined;
        this.log.error({ guest: ev.guest, event: ev.event, err: (err as Error).message }, "publishing a VMM event failed");
      });
  }

  stop(): void {
    for (const l of this.links.values()) l.stop();
    this.links.clear();
  }
}
