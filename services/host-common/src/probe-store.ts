/**
 * Which probes are loaded in which guest, kept in a JetStream KV bucket so that
 * host services can restart without losing it: the loader re-attaches and
 * reconciles guests from it, the listener re-learns every probe's formats.
 * Key: <guest>.<probe>; value: the AttachRequest the listener needs.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { Kvm, type KV } from "@nats-io/kv";
import { bus } from "@vesper/protocol";

export const PROBE_BUCKET = "vesper_probes";

export class ProbeStore {
  private constructor(private readonly kv: KV) {}

  static async open(nc: NatsConnection): Promise<ProbeStore> {
    const kv = await new Kvm(nc).create(PROBE_BUCKET, { history: 1 });
    return new ProbeStore(kv);
  }

  async put(entry: bus.AttachRequest): Promise<void> {
    await this.kv.put(key(entry.guest, entry.spec?.name ?? ""), bus.AttachRequest.encode(entry).finish());
  }

  async delete(guest: string, probe: string): Promise<void> {
    await this.kv.delete(key(guest, probe));
  }

  async get(guest: string, probe: string): Promise<bus.AttachRequest | undefined> {
    const e = await this.kv.get(key(guest, probe));
    if (e === null || e.operation !== "PUT" || e.value.length === 0) return undefined;
    return bus.AttachRequest.decode(e.value);
  }

  /** Every stored probe, optionally of one guest. */
  async list(guest?: string): Promise<bus.AttachRequest[]> {
    const out: bus.AttachRequest[] = [];
    const keys = await this.kv.keys(guest === undefined ? ">" : `${guest}.*`);
    for await (const k of keys) {
      const [g, p] = k.split(".");
      if (g === undefined || p === undefined) continue;
      const v = await this.get(g, p);
      if (v !== undefined) out.push(v);
    }
    return out;
  }
}

function key(guest: string, probe: string): string {
  return `${guest}.${probe}`;
}
