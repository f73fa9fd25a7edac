/**
 * Test helpers: a real, private nats-server (the fake loader below must not meet a real
 * probe-loader on the machine's shared NATS), a fake probe-loader and rules service, event publishing.
 */
import { randomBytes } from "node:crypto";
import { connect, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";
import { serve } from "@vesper/host-common";
import { api, bus, createLogger, subjects, type Logger } from "@vesper/protocol";

import { NatsServer } from "../../../test/harness/nats-server.js";

let server: NatsServer | undefined;
let url: string | undefined;

/** Starts the private server once per test file; its URL is then used by connectNats(). */
export async function privateNatsUrl(): Promise<string> {
  if (url === undefined) {
    server = await NatsServer.start();
    url = server.url;
  }
  return url;
}

export async function stopPrivateNats(): Promise<void> {
  await server?.stop();
  server = undefined;
  url = undefined;
}
export const quietLog: Logger = createLogger("test", process.env.VESPER_LOG_LEVEL ?? "silent");

export function uniq(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

export async function connectNats(): Promise<NatsConnection> {
  return connect({ servers: await privateNatsUrl(), name: "vesper-test" });
}

export interface FakeLoaderHandlers {
  insmod?: (req: api.VirtInsmodRequest) => Promise<api.VirtInsmodResponse>;
  rmmod?: (req: api.VirtRmmodRequest) => Promise<api.VirtRmmodResponse>;
  guests?: () => Promise<api.ListGuestsResponse>;
  probes?: () => Promise<api.ListProbesResponse>;
}

/** A probe-loader stand-in answering on the loader subjects, built on host-common's `serve`. */
export async function fakeLoader(nc: NatsConnection, h: FakeLoaderHandlers): Promise<{ stop(): Promise<void> }> {
  const subs: Subscription[] = [];
  const reply = <R>(o: { ok: R } | { error: bus.BusError }) =>
    "ok" in o ? { response: o.ok } : { error: o.error };
  if (h.insmod) {
    subs.push(serve(nc, subjects.loaderInsmod, api.VirtInsmodRequest, bus.InsmodReply, reply, h.insmod, quietLog));
  }
  if (h.rmmod) {
    subs.push(serve(nc, subjects.loaderRmmod, api.VirtRmmodRequest, bus.RmmodReply, reply, h.rmmod, quietLog));
  }
  if (h.guests) {
    const g = h.guests;
    subs.push(serve(nc, subjects.loaderGuests, api.ListGuestsRequest, bus.GuestsReply, reply, () => g(), quietLog));
  }
  if (h.probes) {
    const p = h.probes;
    subs.push(serve(nc, subjects.loaderProbes, api.ListProbesRequest, bus.ProbesReply, reply, () => p(), quietLog));
  }
  await nc.flush();
  return {
    async stop() {
      for (const s of subs) s.unsubscribe();
      await nc.flush();
    },
  };
}

export interface FakeRulesHandlers {
  list?: () => Promise<api.ListRulesResponse>;
  add?: (req: api.AddRuleRequest) => Promise<api.AddRuleResponse>;
  remove?: (req: api.RemoveRuleRequest) => Promise<api.RemoveRuleResponse>;
}

/** A rules-service stand-in answering on vesper.svc.rules.*, built on host-common's `serve`. */
export async function fakeRules(nc: NatsConnection, h: FakeRulesHandlers): Promise<{ stop(): Promise<void> }> {
  const subs: Subscription[] = [];
  const reply = <R>(o: { ok: R } | { error: bus.BusError }) => ("ok" in o ? { response: o.ok } : { error: o.error });
  if (h.list) {
    const l = h.list;
    subs.push(serve(nc, subjects.rulesList, api.ListRulesRequest, bus.RulesReply, reply, () => l(), quietLog));
  }
  if (h.add) subs.push(serve(nc, subjects.rulesAdd, api.AddRuleRequest, bus.AddRuleReply, reply, h.add, quietLog));
  if (h.remove) subs.push(serve(nc, subjects.rulesRemove, api.RemoveRuleRequest, bus.RemoveRuleReply, reply, h.remove, quietLog));
  await nc.flush();
  return {
    async stop() {
      for (const s of subs) s.unsubscribe();
      await nc.flush();
    },
  };
}

export function makeEvent(guest: string, probe: string, event: string, extra: Partial<api.Event> = {}): api.WatchEventsResponse {
  return {
    kind: {
      $case: "event",
      value: api.Event.fromPartial({
        guest,
        probe,
        event,
        cpu: 1,
        ts: 123_456_789_012n,
        receivedUnixNs: 1_700_000_000_123_000_000n,
        pid: 42,
        comm: "nginx",
        fields: {
          code: { kind: { $case: "int", value: -11n } },
          big: { kind: { $case: "uint", value: 18_446_744_073_709_551_615n } },
          name: { kind: { $case: "str", value: "worker 1" } },
        },
        ...extra,
      }),
    },
    streamSeq: 0n,
  };
}

export function makeLoss(guest: string, probe: string): api.WatchEventsResponse {
  return {
    kind: { $case: "loss", value: { guest, probe, cpu: 0, kernelLost: 7n, pagesLost: 1n, readLost: 0n } },
    streamSeq: 0n,
  };
}

/** Publishes to the events stream as the probe-listener does; resolves to the stream sequence. */
export async function publishEvent(js: JetStreamClient, res: api.WatchEventsResponse): Promise<number> {
  const k = res.kind;
  if (!k) throw new Error("no kind");
  const { guest, probe } = k.value;
  const ack = await js.publish(subjects.events(guest, probe), api.WatchEventsResponse.encode(res).finish());
  return ack.seq;
}

export { jetstream };

/**
 * Reads a stream in steps without closing it between steps (breaking out of a
 * for-await over a Node stream would destroy it).
 */
export function reader<T>(it: AsyncIterable<T>): { take(n: number, ms?: number): Promise<T[]> } {
  const iter = it[Symbol.asyncIterator]();
  return {
    async take(n, ms = 5000) {
      const out: T[] = [];
      const deadline = Date.now() + ms;
      while (out.length < n) {
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`got ${out.length} of ${n} within ${ms} ms`)), deadline - Date.now());
        });
        try {
          const r = await Promise.race([iter.next(), timeout]);
          if (r.done) throw new Error(`stream ended after ${out.length} of ${n}`);
          out.push(r.value);
        } finally {
          clearTimeout(timer);
        }
      }
      return out;
    },
  };
}
