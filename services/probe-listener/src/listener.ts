/**
 * probe-listener: turns the raw ftrace pages guests send into typed events.
 * For each (guest, probe) it holds the decoder built from the formats the guest
 * reported at load, takes each CPU's pages in sequence order, counts every loss
 * (the kernel's, from page headers; pages that never came, after a timeout) and
 * publishes events and loss records on vesper.events.<guest>.<probe> (JetStream).
 * Once a page's events are stored it acknowledges the page to the guest (DataAck),
 * which until then keeps it and sends it again after a timeout: a restart of the
 * listener, the bridge or NATS loses nothing.
 *
 * Everything here reads guest bytes: a bad message is counted and dropped, and
 * never disturbs another guest's events.
 */
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers as natsHeaders, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import {
  api,
  bus,
  decodeGuestMessage,
  DEFAULT_MAX_FRAME_BYTES,
  encodeHostMessage,
  ErrorCode,
  guestOfRingSubject,
  PROTOCOL_VERSION,
  ring,
  subjects,
  VesperError,
  type Logger,
} from "@vesper/protocol";
import { ensureEventsStream, KeyedSerial, serve, type LiveFeed, type ProbeStore } from "@vesper/host-common";
import { CommCache } from "./comm-cache.js";
import { EventPublisher } from "./event-publisher.js";
import { toApiEvent } from "./event-mapper.js";
import { buildDecoder } from "./decoder-factory.js";
import type { DecodedPage, PageDecoder, PageScan } from "./ftrace/index.js";
import { PAGES_HEADER } from "./record-reader.js";
import { CpuCursor } from "./cpu-cursor.js";

interface Attachment {
  readonly guest: string;
  readonly probe: string;
  readonly loadId: bigint;
  readonly decoder: PageDecoder;
  readonly cursors: Map<number, CpuCursor>;
  /** CPUs whose ack is due, sent together on the next tick. */
  readonly ackDue: Set<number>;
  ackResend: boolean;
  ackReplyTo: bigint;
  ackScheduled: boolean;
  ackTimer: NodeJS.Timeout | undefined;
  /** Pages stored and not yet acknowledged, and since when the first of them waits. */
  ackPages: number;
  ackDueSince: number;
  /** The timer is the short one (many pages wait). */
  ackSoon: boolean;
  /** Bulk probes: pages are stored as they are (bus.StoredPages), not decoded here. */
  readonly bulk: boolean;
  readonly spec: ring.ProbeSpec;
  readonly loaded: ring.LoadedProbe;
  events: number;
  kernelLost: bigint;
  /** Read checks (ProbeStats.read_checks) waiting for their CPU's pages to arrive, per CPU. */
  readonly readChecks: Map<number, ring.ReadCheck[]>;
}

export interface GuestCounters {
  messages: number;
  malformed: number;
  wrongGuest: number;
  unknownProbe: number;
  badPages: number;
  replayedPages: number;
  /** Pages after a gap, not taken (the guest sends again from the gap). */
  outOfOrderPages: number;
  /** Pages of another load of the probe than the one listened to. */
  staleLoadPages: number;
  oversize: number;
  overQuota: number;
  /** ProbeStats reports taken (the guest kernel's per-CPU counters for a probe). */
  statsReports: number;
  /** Read checks compared with the events received, and the events they found missing. */
  readChecks: number;
  readLost: bigint;
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
   * counted; the guest sends those pages again once the rate allows.
   */
  maxGuestBytesPerSec?: number;
  /**
   * How long pages after a gap are refused (the guest is asked to send again from the
   * gap) before the missing pages count as lost: a loss record, then the stream goes on.
   * Default 10 s.
   */
  gapTimeoutMs?: number;
  /**
   * Longest an ack waits for others to join it (default 500 ms): every ack wakes the guest.
   * When the guest asks (ack_soon), or ACK_SOON_PAGES pages wait, at most ackBusyDelayMs
   * (default 0: the next tick), so a fast guest's window never fills for want of acks;
   * resend requests do not wait at all. Well under the frontend's ack timeout (2 s).
   */
  ackDelayMs?: number;
  ackBusyDelayMs?: number;
  /** The events stream's in-process mirror for live watchers (a gateway in this process); see LiveFeed. */
  live?: LiveFeed;
}

const MAX_U64 = (1n << 64n) - 1n;

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
    outOfOrderPages: BigInt(c.outOfOrderPages),
    staleLoadPages: BigInt(c.staleLoadPages),
    oversize: BigInt(c.oversize),
    overQuota: BigInt(c.overQuota),
    statsReports: BigInt(c.statsReports),
    readChecks: BigInt(c.readChecks),
    readLost: c.readLost,
  });
}

/** Largest page a run may declare (ftrace pages are the kernel's page size, usually 4 KiB). */
const MAX_RUN_PAGE_SIZE = 64 * 1024;
/**
 * Stored pages waiting for an ack that make it go out after ackBusyDelayMs instead of
 * ackDelayMs, whatever the sender asked (ProbeData.ack_soon; a frontend asks once a quarter
 * of its window waits): a quarter of the frontend's default window.
 */
const ACK_SOON_PAGES = 256;
/** Data messages of one guest waiting for its earlier ones; past this the guest's newest are dropped (counted as over quota; the frontend sends unacknowledged pages again). */
const MAX_QUEUED_PER_GUEST = 1024;

/**
 * The pages of a data message: its single pages, then each run's, cut out of the run's
 * bytes without copying. A run whose sizes do not add up is dropped whole (its pages
 * counted as bad): its sequence numbers cannot be trusted either.
 */
export function pagesOf(data: ring.ProbeData, c: GuestCounters, onBad: (why: string) => void): ring.RawPage[] {
  if (data.runs.length === 0) return data.pages;
  const out = [...data.pages];
  for (const r of data.runs) {
    const ps = r.pageSize;
    const expected = (r.count - 1) * ps + r.lastLength;
    if (r.count < 1 || ps < 64 || ps > MAX_RUN_PAGE_SIZE || r.lastLength > ps || r.data.length !== expected || r.firstSeq < 1n) {
      c.badPages += Math.max(0, Math.min(r.count, 1 + Math.floor(r.data.length / Math.max(ps, 64))));
      onBad(`run at seq ${r.firstSeq}: ${r.count} pages of ${ps} bytes, last ${r.lastLength}, in ${r.data.length} bytes`);
      continue;
    }
    for (let i = 0; i < r.count; i++) {
      const end = i < r.count - 1 ? (i + 1) * ps : expected;
      out.push({ cpu: r.cpu, seq: r.firstSeq + BigInt(i), page: r.data.subarray(i * ps, end) });
    }
  }
  return out;
}

export class ProbeListener {
  private readonly attachments = new Map<string, Attachment>();
  private readonly counters = new Map<string, GuestCounters>();
  private readonly comms = new Map<string, CommCache>();
  private readonly subs: Subscription[] = [];
  private publisher!: EventPublisher;
  private lastWarn = new Map<string, number>();
  private readonly quotas = new Map<string, ByteQuota>();
  /** Each guest's data messages in order; guests side by side. */
  private readonly inOrder = new KeyedSerial();

  constructor(private readonly o: ProbeListenerOptions) {}

  async start(): Promise<void> {
    const { nc, log, store } = this.o;
    await ensureEventsStream(await jetstreamManager(nc), log);
    this.publisher = new EventPublisher(jetstream(nc), log, this.o.live);
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
        // One subscription serves every guest. A message waits only for its own guest's earlier
        // ones (their order is the pages' order): awaiting each JetStream round trip here made
        // 1,000 guests queue behind one another. Nothing a guest sends may end this loop.
        const { subject } = m;
        const bytes = m.data;
        if (this.inOrder.pending(subject) >= MAX_QUEUED_PER_GUEST) {
          this.dropBacklogged(subject, bytes.length);
          continue;
        }
        void this.inOrder.run(subject, () => this.onData(subject, bytes)).catch((err: unknown) =>
          this.warn("internal", { subject, err: (err as Error).message }, "data message failed"),
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
    // What is stored is acknowledged now rather than resent by the guest later.
    for (const a of this.attachments.values()) {
      clearTimeout(a.ackTimer);
      a.ackTimer = undefined;
      this.sendAck(a);
    }
  }

  counts(guest: string): GuestCounters {
    let c = this.counters.get(guest);
    if (c === undefined) {
      c = { messages: 0, malformed: 0, wrongGuest: 0, unknownProbe: 0, badPages: 0, replayedPages: 0, outOfOrderPages: 0, staleLoadPages: 0, oversize: 0, overQuota: 0, statsReports: 0, readChecks: 0, readLost: 0n };
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
      cursors: new Map(),
      ackDue: new Set(),
      ackResend: false,
      ackReplyTo: 0n,
      ackScheduled: false,
      ackTimer: undefined,
      ackPages: 0,
      ackDueSince: 0,
      ackSoon: false,
      bulk: spec.delivery === ring.DeliveryMode.DELIVERY_MODE_BULK,
      spec,
      loaded,
      events: 0,
      kernelLost: 0n,
      readChecks: new Map(),
    });
    this.o.log.info({ guest: req.guest, probe: spec.name, formats: loaded.formats.length }, "listening to probe");
  }

  detach(guest: string, probe: string): void {
    const a = this.attachments.get(`${guest}/${probe}`);
    if (a !== undefined) clearTimeout(a.ackTimer);
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

  private dropBacklogged(subject: string, bytes: number): void {
    const guest = guestOfRingSubject(subject);
    if (guest === undefined) return;
    const c = this.counts(guest);
    c.messages++;
    c.overQuota++;
    this.warn(`${guest}/backlog`, { guest, bytes, queued: MAX_QUEUED_PER_GUEST, dropped: c.overQuota }, "guest's data backlog is full: dropping (its frontend sends unacknowledged pages again)");
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
    if (body?.$case === "data") await this.onPages(guest, body.value, msg.seq, c);
    else if (body?.$case === "stats") await this.onStats(guest, body.value, c);
  }

  private async onPages(guest: string, data: ring.ProbeData, msgSeq: bigint, c: GuestCounters): Promise<void> {
    const a = this.attachments.get(`${guest}/${data.probe}`);
    if (a === undefined) {
      c.unknownProbe++;
      this.warn(`${guest}/unknown`, { guest, probe: data.probe, dropped: c.unknownProbe }, "dropping pages of a probe nobody listens to");
      return;
    }
    if (data.loadId !== a.loadId) {
      // Pages of an earlier (or later) load: other formats, another sequence. Not acked.
      c.staleLoadPages += data.pages.length + data.runs.reduce((n, r) => n + r.count, 0);
      this.warn(`${guest}/staleload`, { guest, probe: a.probe, loadId: String(data.loadId), listening: String(a.loadId) }, "dropping pages of another load");
      return;
    }
    const subject = subjects.events(guest, a.probe);
    const pages = pagesOf(data, c, (why) => this.warn(`${guest}/badrun`, { guest, probe: a.probe, why }, "dropping a malformed page run"));
    const hints = new Map(data.acked.map((x) => [x.cpu, x] as const));
    const skips = new Map(data.skips.map((x) => [x.cpu, x] as const));
    // Per CPU: the stream acks this message's pages wait for, its newest page taken, and
    // (bulk) the pages to store.
    const taken = new Map<number, { stored: Promise<void>[]; last: bigint; pages: number; keep: bus.StoredPage[]; events: number }>();
    const now = Date.now();
    const gapTimeoutMs = this.o.gapTimeoutMs ?? 10_000;
    const receivedUnixNs = BigInt(now) * 1_000_000n;
    for (const p of pages) {
      const cur = this.cursor(a, p.cpu, hints.get(p.cpu));
      if (skips.size > 0) this.skip(a, cur, skips.get(p.cpu), msgSeq);
      const verdict = cur.offer(p.seq, now, gapTimeoutMs);
      if (verdict.kind === "duplicate") {
        // Sent again after an ack went missing: the ack says how far the host is.
        c.replayedPages++;
        this.dueAck(a, p.cpu, msgSeq, false);
        continue;
      }
      if (verdict.kind === "ahead") {
        c.outOfOrderPages++;
        this.warn(`${guest}/gap`, { guest, probe: a.probe, cpu: p.cpu, seq: String(p.seq), expected: String(cur.next) }, "page after a gap: asking the guest to send again");
        this.dueAck(a, p.cpu, msgSeq, true);
        continue;
      }
      let t = taken.get(p.cpu);
      if (t === undefined) taken.set(p.cpu, (t = { stored: [], last: p.seq, pages: 0, keep: [], events: 0 }));
      t.last = p.seq;
      t.pages++;
      if (verdict.pagesLost > 0n) {
        this.o.log.warn({ guest, probe: a.probe, cpu: p.cpu, pagesLost: String(verdict.pagesLost) }, "pages never came: reported as lost");
      }
      if (a.bulk) this.takeBulkPage(a, c, cur, p, verdict.pagesLost, t);
      else await this.publishUrgentPage(a, c, cur, p, verdict.pagesLost, receivedUnixNs, subject, t.stored);
    }
    // A message with no page (or none past the skip) still moves a cursor past its skip.
    for (const sk of skips.values()) this.skip(a, this.cursor(a, sk.cpu, hints.get(sk.cpu)), sk, msgSeq);
    for (const [cpu, t] of taken) {
      if (t.keep.length > 0) {
        const sp: bus.StoredPages = { guest, probe: a.probe, cpu, receivedUnixNs, spec: a.spec, loaded: a.loaded, pages: t.keep };
        const h = natsHeaders();
        h.set(PAGES_HEADER, String(t.events));
        const first = t.keep[0]!.seq;
        const r = await this.publisher.publish(subject, bus.StoredPages.encode(sp).finish(), `${guest}.${a.probe}.${a.loadId}.${cpu}.${first}-${t.last}.p`, h);
        t.stored.push(r.stored);
      }
      this.cursor(a, cpu, undefined).whenStored(t.last, Promise.all(t.stored).then(() => undefined), (ok) => {
        if (ok) this.dueAck(a, cpu, msgSeq, false, t.pages, data.ackSoon);
        else this.warn(`${guest}/store`, { guest, probe: a.probe, cpu }, "events not stored: the guest sends those pages again");
      });
    }
    if (a.readChecks.size > 0) for (const cpu of new Set([...taken.keys(), ...skips.keys()])) await this.runReadChecks(a, c, cpu);
  }

  /** The guest adopted the load: a cursor inside the skipped seqs goes on after them (and says so in an ack). */
  private skip(a: Attachment, cur: CpuCursor, sk: ring.SeqSkip | undefined, msgSeq: bigint): void {
    if (sk === undefined || sk.to <= sk.from || !cur.skip(sk.from, sk.to)) return;
    this.o.log.info({ guest: a.guest, probe: a.probe, cpu: sk.cpu, from: String(sk.from), to: String(sk.to) }, "guest resumed its load after a restart: going on at its new seq");
    this.dueAck(a, sk.cpu, msgSeq, false, 0, true);
  }

  /**
   * Read checks of one CPU whose pages are all here: the kernel handed out `read_events`
   * events in pages before `next_seq`; what did not arrive is reported lost (a Loss with
   * read_lost), once: those events then count as accounted for.
   */
  private async runReadChecks(a: Attachment, c: GuestCounters, cpu: number): Promise<void> {
    const checks = a.readChecks.get(cpu);
    const cur = a.cursors.get(cpu);
    if (checks === undefined || cur === undefined) return;
    const waiting: ring.ReadCheck[] = [];
    for (const ch of checks) {
      if (cur.next < ch.nextSeq) {
        waiting.push(ch); // its pages are still coming
        continue;
      }
      const got = cur.eventsUpTo(ch.nextSeq - 1n);
      if (got === undefined) {
        this.o.log.debug({ guest: a.guest, probe: a.probe, cpu, nextSeq: String(ch.nextSeq) }, "read check not comparable (count unknown or too old)");
        continue;
      }
      c.readChecks++;
      const missing = ch.readEvents - got;
      if (missing <= 0n) continue;
      cur.account(ch.nextSeq - 1n, missing);
      c.readLost += missing;
      this.o.log.warn({ guest: a.guest, probe: a.probe, cpu, readLost: String(missing), nextSeq: String(ch.nextSeq) }, "events the guest read never arrived: reported as lost");
      const loss: api.Loss = { guest: a.guest, probe: a.probe, cpu, kernelLost: 0n, pagesLost: 0n, readLost: missing };
      await this.publisher.publish(
        subjects.events(a.guest, a.probe),
        api.WatchEventsResponse.encode({ kind: { $case: "loss", value: loss }, streamSeq: 0n }).finish(),
        `${a.guest}.${a.probe}.${a.loadId}.${cpu}.${ch.nextSeq}.${ch.readEvents}.readloss`,
      );
    }
    if (waiting.length > 0) a.readChecks.set(cpu, waiting);
    else a.readChecks.delete(cpu);
  }

  /**
   * A bulk page: every record checked (scan), the losses counted, the page kept as it
   * is for the stored-pages record (readers decode it; the listener builds no events).
   */
  private takeBulkPage(a: Attachment, c: GuestCounters, cur: CpuCursor, p: ring.RawPage, pagesLost: bigint, t: { keep: bus.StoredPage[]; events: number }): void {
    let scan: PageScan;
    try {
      scan = a.decoder.scan(p.page);
    } catch (err) {
      // Shorter than a page header: not kept (counted), but a loss before it still is.
      c.badPages++;
      this.warn(`${a.guest}/badpage`, { guest: a.guest, probe: a.probe, cpu: p.cpu, err: (err as Error).message, dropped: c.badPages }, "dropping undecodable page");
      if (pagesLost > 0n) t.keep.push({ seq: p.seq, data: Buffer.alloc(0), pagesLostBefore: pagesLost });
      cur.count(p.seq, undefined);
      return;
    }
    cur.count(p.seq, scan.bad > 0 ? undefined : scan.events);
    if (scan.bad > 0) {
      c.badPages++;
      this.warn(`${a.guest}/badpage`, { guest: a.guest, probe: a.probe, cpu: p.cpu, bad: scan.bad, first: scan.firstError }, "page had bad records");
    }
    if (scan.missedEvents > 0) a.kernelLost += BigInt(scan.missedEvents);
    a.events += scan.events;
    t.events += scan.events;
    t.keep.push({ seq: p.seq, data: p.page, pagesLostBefore: pagesLost });
  }

  /** An urgent page: decoded here, one stream record per event (and per loss), at once. */
  private async publishUrgentPage(
    a: Attachment,
    c: GuestCounters,
    cur: CpuCursor,
    p: ring.RawPage,
    pagesLost: bigint,
    receivedUnixNs: bigint,
    subject: string,
    stored: Promise<void>[],
  ): Promise<void> {
    const guest = a.guest;
    let comms = this.comms.get(guest);
    if (comms === undefined) this.comms.set(guest, (comms = new CommCache()));
    let page: DecodedPage;
    let decodable = true;
    try {
      page = a.decoder.decode(p.page);
    } catch (err) {
      // A page too short for its header, or not a page at all: dropped and counted (and
      // acked: it is handled). A loss before it is still reported. Its events are unknown.
      decodable = false;
      c.badPages++;
      this.warn(`${guest}/badpage`, { guest, probe: a.probe, cpu: p.cpu, err: (err as Error).message, dropped: c.badPages }, "dropping undecodable page");
      page = { timestamp: 0n, events: [], missedEvents: 0, errors: [] };
    }
    // Counted before the awaits below (the next page of this CPU is taken after them).
    cur.count(p.seq, decodable && page.errors.length === 0 ? page.events.length : undefined);
    if (page.errors.length > 0) {
      c.badPages++;
      this.warn(`${guest}/badpage`, { guest, probe: a.probe, cpu: p.cpu, errors: page.errors.slice(0, 3) }, "page had bad records");
    }
    const kernelLost = page.missedEvents > 0 ? BigInt(page.missedEvents) : 0n;
    const unknownLoss = page.missedEvents < 0;
    if (pagesLost > 0n || kernelLost > 0n || unknownLoss) {
      a.kernelLost += kernelLost;
      const loss: api.Loss = { guest, probe: a.probe, cpu: p.cpu, kernelLost: unknownLoss ? 1n : kernelLost, pagesLost, readLost: 0n };
      const r = await this.publisher.publish(
        subject,
        api.WatchEventsResponse.encode({ kind: { $case: "loss", value: loss }, streamSeq: 0n }).finish(),
        `${guest}.${a.probe}.${a.loadId}.${p.cpu}.${p.seq}.loss`,
      );
      stored.push(r.stored);
    }
    const ctx = { guest, probe: a.probe, cpu: p.cpu, pageSeq: p.seq, receivedUnixNs };
    let index = 0;
    for (const ev of page.events) {
      const event = toApiEvent(ev, index, index === 0 ? kernelLost : 0n, ctx, comms);
      const r = await this.publisher.publish(
        subject,
        api.WatchEventsResponse.encode({ kind: { $case: "event", value: event }, streamSeq: 0n }).finish(),
        `${guest}.${a.probe}.${a.loadId}.${p.cpu}.${p.seq}.${index}`,
      );
      stored.push(r.stored);
      index++;
      a.events++;
    }
  }

  private cursor(a: Attachment, cpu: number, hint: ring.CpuSeq | undefined): CpuCursor {
    let cur = a.cursors.get(cpu);
    // A new cursor starts where the guest says the host got to (a restarted listener
    // learns its predecessor's progress, and its event count, from it; a lie only hurts
    // that guest's accounting).
    if (cur === undefined) {
      const seq = hint?.seq ?? 0n;
      a.cursors.set(cpu, (cur = new CpuCursor(seq, seq === 0n ? 0n : hint?.events)));
    }
    return cur;
  }

  /**
   * Acks are coalesced: all due CPUs of the probe in one message, sent when the first of
   * them has waited ackDelayMs, or ackBusyDelayMs once many pages wait (every ack wakes the
   * guest, which under emulation costs it milliseconds; its window holds far more than that
   * much data). A resend request goes out at once.
   */
  private dueAck(a: Attachment, cpu: number, replyTo: bigint, resend: boolean, pages = 0, asked = false): void {
    if (a.ackDue.size === 0) a.ackDueSince = Date.now();
    a.ackDue.add(cpu);
    a.ackPages += pages;
    if (resend) a.ackResend = true;
    if (replyTo > a.ackReplyTo) a.ackReplyTo = replyTo;
    if (resend) {
      clearTimeout(a.ackTimer);
      a.ackTimer = undefined;
      if (!a.ackScheduled) {
        a.ackScheduled = true;
        setImmediate(() => this.sendAck(a));
      }
      return;
    }
    if (a.ackScheduled) return;
    const soon = asked || a.ackPages >= ACK_SOON_PAGES;
    if (a.ackTimer !== undefined && (a.ackSoon || !soon)) return;
    clearTimeout(a.ackTimer);
    a.ackSoon = soon;
    const wait = soon ? (this.o.ackBusyDelayMs ?? 0) : (this.o.ackDelayMs ?? 500);
    a.ackTimer = setTimeout(() => {
      a.ackTimer = undefined;
      this.sendAck(a);
    }, Math.max(0, a.ackDueSince + wait - Date.now()));
  }

  private sendAck(a: Attachment): void {
    a.ackScheduled = false;
    if (this.attachments.get(`${a.guest}/${a.probe}`) !== a || a.ackDue.size === 0) return;
    const cpus = [...a.ackDue].map((cpu) => {
      const cur = a.cursors.get(cpu);
      const events = cur?.eventsDurable;
      // A guest's hint can make the count anything: past uint64 it is not sent.
      return { cpu, seq: cur?.durable ?? 0n, events: events !== undefined && events <= MAX_U64 ? events : undefined };
    });
    const ack: ring.DataAck = { probe: a.probe, loadId: a.loadId, cpus, resend: a.ackResend };
    a.ackDue.clear();
    a.ackResend = false;
    a.ackPages = 0;
    const msg: ring.HostMessage = { version: PROTOCOL_VERSION, guestId: a.guest, replyTo: a.ackReplyTo, body: { $case: "ack", value: ack } };
    try {
      this.o.nc.publish(subjects.ringDown(a.guest), encodeHostMessage(msg));
    } catch (err) {
      // NATS is away: the guest's ack timeout sends the pages again, and they are acked then.
      this.warn(`${a.guest}/ack`, { guest: a.guest, err: (err as Error).message }, "cannot send an ack");
    }
  }

  private async onStats(guest: string, stats: ring.ProbeStats, c: GuestCounters): Promise<void> {
    const a = this.attachments.get(`${guest}/${stats.probe}`);
    if (a === undefined) return;
    c.statsReports++;
    for (const ch of stats.readChecks) {
      if (ch.cpu >= a.loaded.cpus) continue; // not a CPU of this load
      // A few per CPU at most: an older one still waiting is superseded (its pages come first).
      const list = a.readChecks.get(ch.cpu) ?? [];
      if (list.some((x) => x.nextSeq === ch.nextSeq && x.readEvents === ch.readEvents)) continue;
      list.push(ch);
      if (list.length > 4) list.shift();
      a.readChecks.set(ch.cpu, list);
    }
    for (const cpu of new Set(stats.readChecks.map((x) => x.cpu))) await this.runReadChecks(a, c, cpu);
    const overrun = stats.cpus.reduce((n, s) => n + s.overrun + s.droppedEvents, 0n);
    if (overrun > 0n || stats.pagesDropped > 0n) {
      this.warn(`${guest}/stats`, { guest, probe: stats.probe, kernelOverrun: String(overrun), pagesDropped: String(stats.pagesDropped) }, "guest reports losses");
    }
  }
}
