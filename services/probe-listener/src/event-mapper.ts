/**
 * Decoded ftrace records -> api.Event, the shape watchers see. Adds the pid and
 * comm every event should say, whether or not the kernel event carries comm.
 */
import type { api } from "@vesper/protocol";
import type { CommCache } from "./comm-cache.js";
import type { DecodedEvent, FieldValue } from "./ftrace/index.js";

const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;

export function toFieldValue(v: FieldValue): api.FieldValue {
  if (typeof v === "bigint") {
    return v >= INT64_MIN && v <= INT64_MAX ? { kind: { $case: "int", value: v } } : { kind: { $case: "uint", value: v } };
  }
  if (typeof v === "string") return { kind: { $case: "str", value: v } };
  return { kind: { $case: "raw", value: Buffer.from(v.buffer, v.byteOffset, v.byteLength) } };
}

function str(fields: Record<string, FieldValue>, name: string): string | undefined {
  const v = fields[name];
  return typeof v === "string" ? v : undefined;
}

function int(fields: Record<string, FieldValue>, name: string): number | undefined {
  const v = fields[name];
  return typeof v === "bigint" ? Number(v) : undefined;
}

/** Learns pid->comm from the sched events that carry both. */
function learn(cache: CommCache, ev: DecodedEvent): void {
  const f = ev.fields;
  const comm = str(f, "comm");
  if (comm !== undefined) cache.set(int(f, "pid") ?? ev.pid, comm);
  const childComm = str(f, "child_comm");
  const childPid = int(f, "child_pid");
  if (childComm !== undefined && childPid !== undefined) cache.set(childPid, childComm);
  const filename = str(f, "filename");
  if (ev.name === "sched_process_exec" && filename !== undefined) {
    cache.set(ev.pid, filename.slice(filename.lastIndexOf("/") + 1).slice(0, 15));
  }
}

export interface EventContext {
  guest: string;
  probe: string;
  cpu: number;
  pageSeq: bigint;
  receivedUnixNs: bigint;
}

export function toApiEvent(ev: DecodedEvent, index: number, lostBefore: bigint, ctx: EventContext, cache: CommCache): api.Event {
  learn(cache, ev);
  const fields: Record<string, api.FieldValue> = {};
  for (const [k, v] of Object.entries(ev.fields)) fields[k] = toFieldValue(v);
  const event: api.Event = {
    guest: ctx.guest,
    probe: ctx.probe,
    event: `${ev.system}/${ev.name}`,
    cpu: ctx.cpu,
    ts: ev.ts,
    receivedUnixNs: ctx.receivedUnixNs,
    pid: ev.pid,
    comm: str(ev.fields, "comm") ?? cache.get(ev.pid),
    fields,
    pageSeq: ctx.pageSeq,
    index,
    lostBefore,
  };
  return event;
}
