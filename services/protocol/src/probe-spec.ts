/**
 * ProbeSpec validation. A spec is the only thing that turns into tracefs writes in
 * a guest, so it is checked on the host before it is sent and again in the guest
 * before it is applied: only well-formed kprobe, tracepoint and filter definitions
 * pass, nothing that could smuggle another tracefs command.
 */
import { ErrorCode, VesperError } from "./errors.js";
import { DeliveryMode, type KprobeSpec, type ProbeSpec, type TracepointSpec } from "./generated/vesper/ring/v1/ring.js";
import { PROBE_NAME_RE } from "./names.js";

const SYMBOL_RE = /^[A-Za-z_][A-Za-z0-9_.]{0,127}$/;
const EVENT_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
const TP_PART_RE = /^[A-Za-z0-9_]{1,64}$/;
// name=fetcharg[:type]; fetcharg is a register, $-variable, @symbol, or +|-offs(...) deref.
const FETCH_ARG_RE =
  /^[A-Za-z_][A-Za-z0-9_]{0,31}=(%[a-z0-9]{1,8}|\$(comm|retval|stack\d{0,3}|arg\d{1,2})|@[A-Za-z_][A-Za-z0-9_.]{0,127}([+-]\d{1,10})?|[+-]?(0x[0-9a-fA-F]{1,16}|\d{1,10})\([^\s()]{1,64}(\([^\s()]{1,64}\))*\)|[+-]?\d{1,10}\(%[a-z0-9]{1,8}\))(:(u8|u16|u32|u64|s8|s16|s32|s64|x8|x16|x32|x64|string|ustring|symbol|char))?$/;
// Filters are handed to the kernel's own parser; we only keep them on one line and printable.
const FILTER_RE = /^[\x20-\x7e]{0,1024}$/;

export const MIN_BUFFER_KB = 4;
export const MAX_BUFFER_KB = 64 * 1024;
export const DEFAULT_BUFFER_KB = 1024;
export const DEFAULT_FLUSH_MS = 200;
export const MAX_EVENTS_PER_PROBE = 64;

function invalid(probe: string, what: string): never {
  throw new VesperError(ErrorCode.InvalidSpec, `probe ${JSON.stringify(probe)}: ${what}`);
}

function checkFilter(probe: string, where: string, filter: string): void {
  if (!FILTER_RE.test(filter)) invalid(probe, `${where}: filter must be one line of printable ASCII, at most 1024 characters`);
}

function checkKprobe(probe: string, k: KprobeSpec): void {
  if (!EVENT_NAME_RE.test(k.name)) invalid(probe, `kprobe event name ${JSON.stringify(k.name)} is not an identifier`);
  if (!SYMBOL_RE.test(k.symbol)) invalid(probe, `kprobe ${k.name}: symbol ${JSON.stringify(k.symbol)} is not a kernel symbol name`);
  if (k.offset < 0n || k.offset > 0xffffn) invalid(probe, `kprobe ${k.name}: offset out of range`);
  if (k.fetchArgs.length > 32) invalid(probe, `kprobe ${k.name}: at most 32 fetch args`);
  const seen = new Set<string>();
  for (const arg of k.fetchArgs) {
    if (!FETCH_ARG_RE.test(arg)) {
      invalid(probe, `kprobe ${k.name}: fetch arg ${JSON.stringify(arg)} is not of the form name=fetcharg[:type]`);
    }
    const name = arg.slice(0, arg.indexOf("="));
    if (seen.has(name)) invalid(probe, `kprobe ${k.name}: fetch arg name ${name} used twice`);
    seen.add(name);
  }
  if (k.waitStatusArg !== "" && !seen.has(k.waitStatusArg)) {
    invalid(probe, `kprobe ${k.name}: wait_status_arg ${JSON.stringify(k.waitStatusArg)} names no fetch arg`);
  }
  if (k.isReturn && k.offset !== 0n) invalid(probe, `kprobe ${k.name}: a return probe takes no offset`);
  checkFilter(probe, `kprobe ${k.name}`, k.filter);
}

function checkTracepoint(probe: string, t: TracepointSpec): void {
  if (!TP_PART_RE.test(t.system) || !TP_PART_RE.test(t.event)) {
    invalid(probe, `tracepoint ${JSON.stringify(`${t.system}:${t.event}`)} is not system:event`);
  }
  checkFilter(probe, `tracepoint ${t.system}:${t.event}`, t.filter);
}

/** Returns the spec with defaults filled in, or throws VesperError(INVALID_SPEC). */
export function validateProbeSpec(spec: ProbeSpec): ProbeSpec {
  const name = spec.name;
  if (!PROBE_NAME_RE.test(name)) {
    invalid(name, "name must start with a lower-case letter and use only [a-z0-9_], at most 32 characters");
  }
  const events = spec.kprobes.length + spec.tracepoints.length;
  if (events === 0) invalid(name, "defines no kprobe and no tracepoint");
  if (events > MAX_EVENTS_PER_PROBE) invalid(name, `defines ${events} events, at most ${MAX_EVENTS_PER_PROBE}`);
  const kprobeNames = new Set<string>();
  for (const k of spec.kprobes) {
    checkKprobe(name, k);
    if (kprobeNames.has(k.name)) invalid(name, `kprobe event name ${k.name} used twice`);
    kprobeNames.add(k.name);
  }
  const tps = new Set<string>();
  for (const t of spec.tracepoints) {
    checkTracepoint(name, t);
    const key = `${t.system}:${t.event}`;
    if (tps.has(key)) invalid(name, `tracepoint ${key} listed twice`);
    tps.add(key);
  }
  const bufferKb = spec.bufferKbPerCpu === 0 ? DEFAULT_BUFFER_KB : spec.bufferKbPerCpu;
  if (bufferKb < MIN_BUFFER_KB || bufferKb > MAX_BUFFER_KB) {
    invalid(name, `buffer_kb_per_cpu ${bufferKb} outside ${MIN_BUFFER_KB}..${MAX_BUFFER_KB}`);
  }
  const delivery = spec.delivery === DeliveryMode.DELIVERY_MODE_UNSPECIFIED ? DeliveryMode.DELIVERY_MODE_URGENT : spec.delivery;
  if (delivery !== DeliveryMode.DELIVERY_MODE_URGENT && delivery !== DeliveryMode.DELIVERY_MODE_BULK) {
    invalid(name, `unknown delivery mode ${String(delivery)}`);
  }
  const flush = spec.flushIntervalMs === 0 ? DEFAULT_FLUSH_MS : spec.flushIntervalMs;
  if (flush < 1 || flush > 60_000) invalid(name, `flush_interval_ms ${flush} outside 1..60000`);
  return { ...spec, bufferKbPerCpu: bufferKb, delivery, flushIntervalMs: flush };
}

/** The kprobe group and tracefs instance names a probe uses in the guest. */
export function kprobeGroup(probe: string): string {
  return `vesper_${probe}`;
}

/** "system/event" names a spec produces. */
export function specEventNames(spec: ProbeSpec): string[] {
  return [
    ...spec.kprobes.map((k) => `${kprobeGroup(spec.name)}/${k.name}`),
    ...spec.tracepoints.map((t) => `${t.system}/${t.event}`),
  ];
}

/**
 * Applies `vesper insmod GUEST PROBE k=v ...` options: delivery=urgent|bulk,
 * buffer_kb=N, flush_ms=N, filter.<event>=EXPR (event as in specEventNames or bare).
 */
export function applyProbeOptions(spec: ProbeSpec, options: Readonly<Record<string, string>>): ProbeSpec {
  const out: ProbeSpec = {
    ...spec,
    kprobes: spec.kprobes.map((k) => ({ ...k })),
    tracepoints: spec.tracepoints.map((t) => ({ ...t })),
  };
  const int = (k: string, v: string): number => {
    if (!/^\d{1,9}$/.test(v)) throw new VesperError(ErrorCode.InvalidArgument, `option ${k}=${v}: expected a whole number`);
    return Number(v);
  };
  for (const [key, value] of Object.entries(options)) {
    if (key === "delivery") {
      if (value === "urgent") out.delivery = DeliveryMode.DELIVERY_MODE_URGENT;
      else if (value === "bulk") out.delivery = DeliveryMode.DELIVERY_MODE_BULK;
      else throw new VesperError(ErrorCode.InvalidArgument, `option delivery=${value}: expected urgent or bulk`);
    } else if (key === "buffer_kb") {
      out.bufferKbPerCpu = int(key, value);
    } else if (key === "flush_ms") {
      out.flushIntervalMs = int(key, value);
    } else if (key.startsWith("filter.")) {
      const ev = key.slice("filter.".length);
      const k = out.kprobes.find((x) => x.name === ev || `${kprobeGroup(spec.name)}/${x.name}` === ev);
      const t = out.tracepoints.find((x) => x.event === ev || `${x.system}/${x.event}` === ev || `${x.system}:${x.event}` === ev);
      if (k) k.filter = value;
      else if (t) t.filter = value;
      else {
        throw new VesperError(
          ErrorCode.InvalidArgument,
          `option ${key}: probe ${spec.name} has no event ${JSON.stringify(ev)} (it has ${specEventNames(spec).join(", ")})`,
        );
      }
    } else {
      throw new VesperError(
        ErrorCode.InvalidArgument,
        `unknown option ${JSON.stringify(key)}: use delivery=urgent|bulk, buffer_kb=N, flush_ms=N or filter.<event>=EXPR`,
      );
    }
  }
  return validateProbeSpec(out);
}
