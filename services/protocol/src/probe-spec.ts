/**
 * ProbeSpec validation. A spec is the only thing that turns into tracefs writes in
 * a guest, so it is checked on the host before it is sent and again in the guest
 * before it is applied: only well-formed kprobe, tracepoint and filter definitions
 * pass, nothing that could smuggle another tracefs command.
 */
import { ErrorCode, VesperError } from "./errors.js";
import { DeliveryMode, type KprobeSpec, type ProbeSpec, type TracepointSpec, type UprobeSpec } from "./generated/vesper/ring/v1/ring.js";
import { PROBE_NAME_RE } from "./names.js";

const SYMBOL_RE = /^[A-Za-z_][A-Za-z0-9_.]{0,127}$/;
/** An ELF symbol as stored in a string table (C++ names mangled). */
const ELF_SYMBOL_RE = /^[A-Za-z_.$][A-Za-z0-9_.$]{0,511}$/;
/** An absolute path with no blanks (uprobe_events separates fields by them) and no ".." step. */
const UPROBE_PATH_RE = /^(\/[A-Za-z0-9_.+,@=-]+){1,64}$/;
const MAX_UPROBE_PATH = 1024;
/** Largest file offset a uprobe may name (1 TiB: far past any executable). */
const MAX_FILE_OFFSET = 1n << 40n;
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
  const seen = checkFetchArgs(probe, `kprobe ${k.name}`, k.fetchArgs);
  if (k.waitStatusArg !== "" && !seen.has(k.waitStatusArg)) {
    invalid(probe, `kprobe ${k.name}: wait_status_arg ${JSON.stringify(k.waitStatusArg)} names no fetch arg`);
  }
  if (k.isReturn && k.offset !== 0n) invalid(probe, `kprobe ${k.name}: a return probe takes no offset`);
  checkFilter(probe, `kprobe ${k.name}`, k.filter);
}

function checkFetchArgs(probe: string, where: string, args: readonly string[]): Set<string> {
  if (args.length > 32) invalid(probe, `${where}: at most 32 fetch args`);
  const seen = new Set<string>();
  for (const arg of args) {
    if (!FETCH_ARG_RE.test(arg)) invalid(probe, `${where}: fetch arg ${JSON.stringify(arg)} is not of the form name=fetcharg[:type]`);
    const name = arg.slice(0, arg.indexOf("="));
    if (seen.has(name)) invalid(probe, `${where}: fetch arg name ${name} used twice`);
    seen.add(name);
  }
  return seen;
}

function checkUprobe(probe: string, u: UprobeSpec): void {
  if (!EVENT_NAME_RE.test(u.name)) invalid(probe, `uprobe event name ${JSON.stringify(u.name)} is not an identifier`);
  const where = `uprobe ${u.name}`;
  if (u.path.length > MAX_UPROBE_PATH || !UPROBE_PATH_RE.test(u.path) || u.path.split("/").some((p) => p === "." || p === "..")) {
    invalid(probe, `${where}: path ${JSON.stringify(u.path)} must be an absolute path of [A-Za-z0-9_.+,@=-] names, without . or .. steps`);
  }
  if (u.symbol !== "" && !ELF_SYMBOL_RE.test(u.symbol)) invalid(probe, `${where}: symbol ${JSON.stringify(u.symbol)} is not an ELF symbol name`);
  if (u.symbol === "" && u.offset === 0n) invalid(probe, `${where}: give a symbol, or the file offset of the instruction to probe`);
  if (u.offset < 0n || u.offset > (u.symbol === "" ? MAX_FILE_OFFSET : 0xffffn)) invalid(probe, `${where}: offset out of range`);
  if (u.isReturn && u.symbol !== "" && u.offset !== 0n) invalid(probe, `${where}: a return probe goes on a function's first instruction, with no offset past the symbol`);
  checkFetchArgs(probe, where, u.fetchArgs);
  checkFilter(probe, where, u.filter);
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
  const events = spec.kprobes.length + spec.uprobes.length + spec.tracepoints.length;
  if (events === 0) invalid(name, "defines no kprobe, uprobe or tracepoint");
  if (events > MAX_EVENTS_PER_PROBE) invalid(name, `defines ${events} events, at most ${MAX_EVENTS_PER_PROBE}`);
  const kprobeNames = new Set<string>();
  for (const k of spec.kprobes) {
    checkKprobe(name, k);
    if (kprobeNames.has(k.name)) invalid(name, `kprobe event name ${k.name} used twice`);
    kprobeNames.add(k.name);
  }
  for (const u of spec.uprobes) {
    checkUprobe(name, u);
    // kprobes and uprobes share the probe's event group.
    if (kprobeNames.has(u.name)) invalid(name, `event name ${u.name} used twice in group ${kprobeGroup(name)}`);
    kprobeNames.add(u.name);
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
    ...spec.uprobes.map((u) => `${kprobeGroup(spec.name)}/${u.name}`),
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
    uprobes: spec.uprobes.map((u) => ({ ...u })),
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
      const inGroup = (x: { name: string }): boolean => x.name === ev || `${kprobeGroup(spec.name)}/${x.name}` === ev;
      const k = out.kprobes.find(inGroup) ?? out.uprobes.find(inGroup);
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
