/**
 * probe-listener: turns the raw ftrace pages guests send into typed events.
 * For each (guest, probe) it holds the decoder built from the formats the guest
 * reported at load, checks per-CPU page order, counts every loss (the kernel's,
 * from page headers, and the transport's, from sequence gaps) and publishes
 * events and loss records on vesper.events.<guest>.<probe> (JetStream).
 *
 * Everything here reads guest bytes: a bad message is counted and dropped, and
 * never disturbs another guest's events.
 */
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import {
  api,
  bus,
  decodeGuestMessage,
  DEFAULT_MAX_FRAME_BYTES,
  ErrorCode,
  guestOfRingSubject,
  ring,
  subjects,
  VesperError,
  type Logger,
} from "@vesper/protocol";
import { ensureEventsStream, EventBatchWriter, serve, type ProbeStore } from "@vesper/host-common";
import { CommCache } from "./comm-cache.js";
import { EventPublisher } from "./event-publisher.js";
import { toApiEvent } from "./event-mapper.js";
import { PageDecoder, parseEventFormat, parseHeaderPage } from "./ftrace/index.js";
import { PageSequencer } from "./page-sequencer.js";

interface Attachment {
  readonly guest: string;
  readonly probe: string;
  readonly loadId: bigint;
  readonly decoder: PageDecoder;
  readonly sequencer: PageSequencer;
  /** Bulk probes: one JetStream message per data message (a batch of records), see events-batch.ts. */
  readonly batched: boolean;
  events: number;
  kernelLost: bigint;
}

export interface GuestCounters {
  messages: number;
  malformed: number;
  wrongGuest: number;
  unknownProbe: number;
  badPages: number;
  replayedPages: number;
  oversize: number;
  overQuota: number;
}

export interface ProbeListenerOptions {
  nc: NatsConnection;
  store: ProbeStore;
  log: Logger;
  /** Data messages above this many bytes are dropped unread (default: the frame limit, 512 KiB). */
  maxMessageBytes?: number;
  /**
   * Per-guest quota on data bytes per second, with a burst of one second's worth
   * (default 64 MiB/s; 0: none). What is over it is dropped before decoding and
   * counted; the page sequence gap then shows as a loss record downstream.
   */
  maxGuestBytesPerSec?: number;
}

/** A token bucket of bytes. */
class ByteQuota {
  private tokens: number;
  private at = Date.now();
  constructor(private readonly perSec: number) {
    this.tokens = perSec;
  }
  take(n: number, now = Date.now()): boolean {
    this.tokens = Math.min(this.perSec, this.tokens + ((now - this.at) * this.perSec) / 1000);
    this.at = now;
    if (n > this.tokens) return false;
    this.tokens -= n;
    return true;
  }
}

/** A guest's data-path counters as the API reports them. */
export function toGuestDrops(c: GuestCounters): api.GuestDrops {
  return api.GuestDrops.fromPartial({
    dataMessages: BigInt(c.messages),
    dataMalformed: BigInt(c.malformed),
    dataWrongGuest: BigInt(c.wrongGuest),
    unknownProbe: BigInt(c.unknownProbe),
    badPages: BigInt(c.badPages),
    replayedPages: BigInt(c.replayedPages),
    oversize: BigInt(c.oversize),
    overQuota: BigInt(c.overQuota),
  });
}

/** Builds a decoder from what a guest reported; throws VesperError(MALFORMED) on lies. */
export function buildDecoder(spec: ring.ProbeSpec, loaded: ring.LoadedProbe): PageDecoder {
  try {
    const formats = loaded.formats.map((f) => parseEventFormat(f.format, f.system));
    const header = parseHeaderPage(loaded.headerPage);
    const waitStatusFields = new Map<string, string>();
    for (const k of spec.kprobes) {
      if (k.waitStatusArg === "") continue;
      // The guest picks the kprobe group (its prefix may differ); match by event name.
      const f = loaded.formats.find((x) => x.name === k.name && x.system.endsWith(`_${spec.name}`));
      if (f !== undefined) waitStatusFields.set(`${f.system}/${f.name}`, k.waitStatusArg);
    }
    return new PageDecoder(formats, header, { waitStatusFields });
  } catch (err) {
    throw new VesperError(ErrorCode.Malformed, `the guest's event formats for ${spec.name} do not parse: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

export class ProbeListener {
  private readonly attachments = new Map<string, Attachment>();
  private readonly counters = new Map<string, GuestCounters>();
  private readonly comms = new Map<string, CommCache>();
  private readonly subs: Subscription[] = [];
  private publisher!: EventPublisher;
  private lastWarn = new Map<string, number>();
  private readonly quotas = new Map<string, ByteQuota>();

  constructor(private readonly o: ProbeListenerOptions) {}

  async start(): Promise<void> {
    const { nc, log, store } = this.o;
    await ensureEventsStream(await jetstreamManager(nc), log);
    this.publisher = new EventPublisher(jetstream(nc), log);
    // Probes stay loaded across our restarts: learn them back from the store first.
    for (const entry of await store.list()) {
      try {
        this.attach(entry);
      } catch (err) {
        log.error({ guest: entry.guest, probe: entry.spec?.name, err: (err as Error).message }, "cannot re-attach stored probe");
      }
    }
    const data = nc.subscribe(subjects.allRingUpData);
    this.subs.push(data);
    void (async () => {
      for await (const m of data) {
        // Nothing a guest sends may end this loop: it serves every guest.
        await this.onData(m.subject, m.data).catch((err: unknown) =>
          this.warn("internal", { subject: m.subject, err: (err as Error).message }, "data message failed"),
        );
      }
    })();
    const ok = (o: { ok: unknown } | { error: bus.BusError }) => ("error" in o ? { error: o.error } : {});
    this.subs.push(
      serve(nc, subjects.listenerAttach, bus.AttachRequest, bus.AttachResponse, ok, async (r) => this.attach(r), log),
      serve(nc, subjects.listenerDetach, bus.DetachRequest, bus.DetachResponse, ok, async (r) => this.detach(r.guest, r.probe), log),
      serve(
        nc,
        subjects.listenerStats,
        bus.ListenerStatsRequest,
        bus.ListenerStatsReply,
        (o) => ("error" in o ? { error: o.error, guests: {} } : { guests: o.ok as Record<string, api.GuestDrops> }),
        async (r) => this.stats(r.guest),
        log,
      ),
    );
    log.info({ attached: this.attachments.size }, "probe-listener started");
  }

  async stop(): Promise<void> {
    for (const s of this.subs) s.unsubscribe();
    await this.publisher.flush();
  }

  counts(guest: string): GuestCounters {
    let c = this.counters.get(guest);
    if (c === undefined) {
      c = { messages: 0, malformed: 0, wrongGuest: 0, unknownProbe: 0, badPages: 0, replayedPages: 0, oversize: 0, overQuota: 0 };
      this.counters.set(guest, c);
    }
    return c;
  }

  /** Data-path drop counters per guest (one guest, or all when `guest` is empty). */
  stats(guest = ""): Record<string, api.GuestDrops> {
    const out: Record<string, api.GuestDrops> = {};
    for (const [g, c] of this.counters) if (guest === "" || g === guest) out[g] = toGuestDrops(c);
    return out;
  }

  attach(req: bus.AttachRequest): void {
    const spec = req.spec;
    const loaded = req.loaded;
    if (spec === undefined || loaded === undefined) throw new VesperError(ErrorCode.InvalidArgument, "attach needs a spec and the loaded probe");
    const decoder = buildDecoder(spec, loaded);
    this.attachments.set(`${req.guest}/${spec.name}`, {
      guest: req.guest,
      probe: spec.name,
      loadId: loaded.loadId,
      decoder,
      sequencer: new PageSequencer(),
      batched: spec.delivery === ring.DeliveryMode.DELIVERY_MODE_BULK,
      events: 0,
      kernelLost: 0n,
    });
    this.o.log.info({ guest: req.guest, probe: spec.name, formats: loaded.formats.length }, "listening to probe");
  }

  detach(guest: string, probe: string): void {
    const a = this.attachments.get(`${guest}/${probe}`);
    this.attachments.delete(`${guest}/${probe}`);
    this.o.log.info({ guest, probe, events: a?.events, kernelLost: String(a?.kernelLost ?? 0n) }, "stopped listening to probe");
  }

  private warn(key: string, obj: object, msg: string): void {
    // At most one line per second per kind and guest: a flood must not become a log flood.
    const now = Date.now();
    if ((this.lastWarn.get(key) ?? 0) + 1000 > now) return;
    this.lastWarn.set(key, now);
    this.o.log.warn(obj, msg);
  }

  private async onData(subject: string, bytes: Uint8Array): Promise<void> {
    const guest = guestOfRingSubject(subject);
    if (guest === undefined) return;
    const c = this.counts(guest);
    c.messages++;
    const maxBytes = this.o.maxMessageBytes ?? DEFAULT_MAX_FRAME_BYTES;
    if (bytes.length > maxBytes) {
      c.oversize++;
      this.warn(`${guest}/oversize`, { guest, bytes: bytes.length, limit: maxBytes, dropped: c.oversize }, "dropping oversize data message");
      return;
    }
    const perSec = this.o.maxGuestBytesPerSec ?? 64 * 1024 * 1024;
    if (perSec > 0) {
      let q = this.quotas.get(guest);
      if (q === undefined) this.quotas.set(guest, (q = new ByteQuota(perSec)));
      if (!q.take(bytes.length)) {
        c.overQuota++;
        this.warn(`${guest}/quota`, { guest, bytesPerSec: perSec, dropped: c.overQuota }, "guest over its data quota: dropping");
        return;
      }
    }
    let msg: ring.GuestMessage;
    try {
      msg = decodeGuestMessage(bytes);
    } catch (err) {
      c.malformed++;
      this.warn(`${guest}/malformed`, { guest, err: (err as Error).message, dropped: c.malformed }, "dropping malformed data message");
      return;
    }
    if (msg.guestId !== guest) {
      c.wrongGuest++;
      this.warn(`${guest}/wrong`, { guest, claimed: msg.guestId, dropped: c.wrongGuest }, "dropping data that claims another guest");
      return;
    }
    const body = msg.body;
    if (body?.$case === "data") await this.onPages(guest, body.value, c);
    else if (body?.$case === "stats") this.onStats(guest, body.value);
  }

  private async onPages(guest: string, data: ring.ProbeData, c: GuestCounters): Promise<void> {
    const a = this.attachments.get(`${guest}/${data.probe}`);
    if (a === undefined) {
      c.unknownProbe++;
      this.warn(`${guest}/unknown`, { guest, probe: data.probe, dropped: c.unknownProbe }, "dropping pages of a probe nobody listens to");
      return;
    }
    let comms = this.comms.get(guest);
    if (comms === undefined) this.comms.set(guest, (comms = new CommCache()));
    const subject = subjects.events(guest, a.probe);
    const batch = a.batched ? new EventBatchWriter() : undefined;
    let batchId = "";
    for (const p of data.pages) {
      const verdict = a.sequencer.check(p.cpu, p.seq);
      if (!verdict.accept) {
        c.replayedPages++;
        this.warn(`${guest}/replay`, { guest, probe: a.probe, cpu: p.cpu, seq: String(p.seq) }, "dropping replayed page");
        continue;
      }
      let page: ReturnType<PageDecoder["decode"]>;
      try {
        page = a.decoder.decode(p.page);
      } catch (err) {
        // A page too short for its header, or not a page at all: drop it, count it.
        c.badPages++;
        this.warn(`${guest}/badpage`, { guest, probe: a.probe, cpu: p.cpu, err: (err as Error).message, dropped: c.badPages }, "dropping undecodable page");
        continue;
      }
      if (page.errors.length > 0) {
        c.badPages++;
        this.warn(`${guest}/badpage`, { guest, probe: a.probe, cpu: p.cpu, errors: page.errors.slice(0, 3) }, "page had bad records");
      }
      const kernelLost = page.missedEvents > 0 ? BigInt(page.missedEvents) : 0n;
      const unknownLoss = page.missedEvents < 0;
      if (verdict.pagesLost > 0n || kernelLost > 0n || unknownLoss) {
        a.kernelLost += kernelLost;
        const loss: api.Loss = { guest, probe: a.probe, cpu: p.cpu, kernelLost: unknownLoss ? 1n : kernelLost, pagesLost: verdict.pagesLost };
        if (batch !== undefined) {
          if (batchId === "") batchId = `${a.loadId}.${p.cpu}.${p.seq}.b`;
          batch.add({ kind: { $case: "loss", value: loss }, streamSeq: 0n });
        } else await this.publisher.publish(
          subject,
          api.WatchEventsResponse.encode({ kind: { $case: "loss", value: loss }, streamSeq: 0n }).finish(),
          `${guest}.${a.probe}.${a.loadId}.${p.cpu}.${p.seq}.loss`,
        );
      }
      const receivedUnixNs = BigInt(Date.now()) * 1_000_000n;
      const ctx = { guest, probe: a.probe, cpu: p.cpu, pageSeq: p.seq, receivedUnixNs };
      let index = 0;
      for (const ev of page.events) {
        const lostBefore = index === 0 ? kernelLost : 0n;
        const event = toApiEvent(ev, index, lostBefore, ctx, comms);
        if (batch !== undefined) {
          if (batchId === "") batchId = `${a.loadId}.${p.cpu}.${p.seq}.b`;
          batch.add({ kind: { $case: "event", value: event }, streamSeq: 0n });
          index++;
          a.events++;
          continue;
        }
        await this.publisher.publish(
          subject,
          api.WatchEventsResponse.encode({ kind: { $case: "event", value: event }, streamSeq: 0n }).finish(),
          `${guest}.${a.probe}.${a.loadId}.${p.cpu}.${p.seq}.${index}`,
        );
        index++;
        a.events++;
      }
    }
    if (batch !== undefined && batch.count > 0) {
      const { data: bytes, headers } = batch.finish();
      await this.publisher.publish(subject, bytes, batchId, headers);
    }
  }

  private onStats(guest: string, stats: ring.ProbeStats): void {
    const a = this.attachments.get(`${guest}/${stats.probe}`);
    if (a === undefined) return;
    const overrun = stats.cpus.reduce((n, s) => n + s.overrun + s.droppedEvents, 0n);
    if (overrun > 0n || stats.pagesDropped > 0n) {
      this.warn(`${guest}/stats`, { guest, probe: stats.probe, kernelOverrun: String(overrun), pagesDropped: String(stats.pagesDropped) }, "guest reports losses");
    }
  }
}
