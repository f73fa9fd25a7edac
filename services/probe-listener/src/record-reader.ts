/**
 * Reads the records of the events stream, whatever their form: one decoded event or
 * loss per message (urgent probes), or stored pages (bulk probes, NATS header
 * Vesper-Pages), which it decodes here with the formats they carry. Every reader of
 * the stream (the gateway's WatchEvents, the rules service) goes through one of these;
 * keep one per consumer: it remembers decoders, comms and the pages already seen.
 */
import type { MsgHdrs } from "@nats-io/transport-node";
import { api, bus } from "@vesper/protocol";
import { CommCache } from "./comm-cache.js";
import { toApiEvent } from "./event-mapper.js";
import type { PageDecoder } from "./ftrace/index.js";
import { buildDecoder } from "./decoder-factory.js";

/** Header of a stored-pages message; its value is the number of events in it. */
export const PAGES_HEADER = "Vesper-Pages";

export interface RecordReaderStats {
  /** Stored pages skipped because this reader had them already (a page stored twice after a restart). */
  duplicatePages: number;
  /** Stored pages that did not decode (never expected: the listener checked them). */
  badPages: number;
}

export class EventRecordReader {
  readonly stats: RecordReaderStats = { duplicatePages: 0, badPages: 0 };
  private readonly decoders = new Map<string, PageDecoder | Error>();
  private readonly comms = new Map<string, CommCache>();
  private readonly lastSeq = new Map<string, bigint>();

  constructor(private readonly maxDecoders = 256) {}

  /** The records of one events-stream message. Throws on bytes that are no record at all. */
  records(data: Uint8Array, headers?: MsgHdrs): api.WatchEventsResponse[] {
    const n = headers?.get(PAGES_HEADER);
    if (n === undefined || n === "") return [api.WatchEventsResponse.decode(data)];
    return this.pages(bus.StoredPages.decode(data));
  }

  private pages(sp: bus.StoredPages): api.WatchEventsResponse[] {
    const out: api.WatchEventsResponse[] = [];
    const { guest, probe, cpu, spec, loaded } = sp;
    if (spec === undefined || loaded === undefined) throw new Error("stored pages without their load");
    const decoder = this.decoder(guest, probe, spec, loaded);
    let comms = this.comms.get(guest);
    if (comms === undefined) this.comms.set(guest, (comms = new CommCache()));
    const seen = `${guest}/${probe}/${loaded.loadId}/${cpu}`;
    for (const p of sp.pages) {
      const last = this.lastSeq.get(seen);
      if (last !== undefined && p.seq <= last) {
        this.stats.duplicatePages++;
        continue;
      }
      this.lastSeq.set(seen, p.seq);
      if (p.pagesLostBefore > 0n) {
        out.push({ kind: { $case: "loss", value: { guest, probe, cpu, kernelLost: 0n, pagesLost: p.pagesLostBefore, readLost: 0n } }, streamSeq: 0n });
      }
      let page: ReturnType<PageDecoder["decode"]>;
      try {
        page = decoder.decode(p.data);
      } catch {
        this.stats.badPages++;
        continue;
      }
      const kernelLost = page.missedEvents > 0 ? BigInt(page.missedEvents) : 0n;
      if (page.missedEvents !== 0) {
        out.push({ kind: { $case: "loss", value: { guest, probe, cpu, kernelLost: page.missedEvents < 0 ? 1n : kernelLost, pagesLost: 0n, readLost: 0n } }, streamSeq: 0n });
      }
      const ctx = { guest, probe, cpu, pageSeq: p.seq, receivedUnixNs: sp.receivedUnixNs };
      page.events.forEach((ev, index) => {
        out.push({ kind: { $case: "event", value: toApiEvent(ev, index, index === 0 ? kernelLost : 0n, ctx, comms) }, streamSeq: 0n });
      });
    }
    return out;
  }

  private decoder(guest: string, probe: string, spec: NonNullable<bus.StoredPages["spec"]>, loaded: NonNullable<bus.StoredPages["loaded"]>): PageDecoder {
    const key = `${guest}/${probe}/${loaded.loadId}`;
    let d = this.decoders.get(key);
    if (d === undefined) {
      try {
        d = buildDecoder(spec, loaded);
      } catch (err) {
        d = err as Error;
      }
      if (this.decoders.size >= this.maxDecoders) this.decoders.delete(this.decoders.keys().next().value!);
      this.decoders.set(key, d);
    }
    if (d instanceof Error) throw d;
    return d;
  }
}
