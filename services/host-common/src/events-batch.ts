/**
 * Event batches on the events stream. Urgent probes publish one api.WatchEventsResponse per
 * JetStream message (lowest latency). Bulk probes publish one message per guest data message,
 * carrying many records: header `Vesper-Batch: <count>`, payload = the records, each
 * length-delimited (varint length + WatchEventsResponse bytes). One publish and one ack per
 * batch instead of per event is what lets the listener keep up with millions of events/s.
 * Every reader of the stream should go through `recordsOf`.
 */
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/transport-node";
import { api } from "@vesper/protocol";

export const BATCH_HEADER = "Vesper-Batch";

export class EventBatchWriter {
  private w = new BinaryWriter();
  count = 0;

  add(res: api.WatchEventsResponse): void {
    api.WatchEventsResponse.encode(res, this.w.fork()).join();
    this.count++;
  }

  /** The payload and headers of the batch; resets the writer. */
  finish(): { data: Uint8Array; headers: MsgHdrs } {
    const data = this.w.finish();
    const h = natsHeaders();
    h.set(BATCH_HEADER, String(this.count));
    this.w = new BinaryWriter();
    this.count = 0;
    return { data, headers: h };
  }
}

/** The records of one events-stream message (a batch or a single record). Throws on garbage. */
export function recordsOf(data: Uint8Array, headers?: MsgHdrs): api.WatchEventsResponse[] {
  if (headers?.get(BATCH_HEADER) === undefined || headers.get(BATCH_HEADER) === "") return [api.WatchEventsResponse.decode(data)];
  const r = new BinaryReader(data);
  const out: api.WatchEventsResponse[] = [];
  while (r.pos < r.len) out.push(api.WatchEventsResponse.decode(r, r.uint32()));
  return out;
}
