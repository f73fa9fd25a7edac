/**
 * The probes a user can load by name: the built-ins plus `*.json` probe files
 * from a directory. A file is validated like any ProbeSpec before it can reach a
 * guest; a bad file is reported and skipped, never half-loaded.
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { api, ErrorCode, kprobeGroup, ring, validateProbeSpec, VesperError, type Logger } from "@vesper/protocol";
import { builtinProbeDocs } from "./builtin-probes.js";

export interface LibraryEntry {
  readonly spec: ring.ProbeSpec;
  /** "builtin" or the file it came from. */
  readonly source: string;
  /** Per-event documentation (built-ins; empty for probe files). */
  readonly events: readonly api.EventDoc[];
}

/**
 * What a guest's kernel lacks to load `spec`, judged from the capabilities its
 * frontend announced in Hello: kprobe and uprobe support, and each tracepoint. Empty when
 * nothing is missing, or when the guest did not list its tracepoints (then the
 * guest's own checks decide). Kprobe symbols cannot be judged here (Hello does not
 * carry kallsyms): a missing symbol is reported by the guest when it loads.
 */
export function missingRequirements(spec: ring.ProbeSpec, caps: ring.Capabilities | undefined): string[] {
  if (caps === undefined) return [];
  const missing: string[] = [];
  if (spec.kprobes.length > 0 && !caps.kprobes) {
    missing.push(
      `kprobes (CONFIG_KPROBE_EVENTS), needed for ${spec.kprobes.map((k) => `${kprobeGroup(spec.name)}/${k.name} on ${k.symbol}`).join(", ")}`,
    );
  }
  if (spec.uprobes.length > 0 && !caps.uprobes) {
    missing.push(
      `uprobes (CONFIG_UPROBE_EVENTS), needed for ${spec.uprobes.map((u) => `${kprobeGroup(spec.name)}/${u.name} in ${u.path}`).join(", ")}`,
    );
  }
  if (caps.tracepoints.length > 0) {
    const have = new Set(caps.tracepoints);
    for (const t of spec.tracepoints) {
      if (!have.has(`${t.system}:${t.event}`)) missing.push(`tracepoint ${t.system}:${t.event}`);
    }
  }
  return missing;
}

const SPEC_KEYS = new Set(["name", "description", "kprobes", "uprobes", "tracepoints", "bufferKbPerCpu", "delivery", "flushIntervalMs"]);
const KPROBE_KEYS = new Set(["name", "symbol", "offset", "fetchArgs", "isReturn", "filter", "waitStatusArg"]);
const UPROBE_KEYS = new Set(["name", "path", "symbol", "offset", "fetchArgs", "isReturn", "filter"]);
const TP_KEYS = new Set(["system", "event", "filter"]);

function checkKeys(where: string, obj: unknown, allowed: Set<string>): void {
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
    throw new VesperError(ErrorCode.InvalidSpec, `${where}: expected an object`);
  }
  for (const k of Object.keys(obj)) {
    if (!allowed.has(k)) {
      throw new VesperError(ErrorCode.InvalidSpec, `${where}: unknown key ${JSON.stringify(k)} (allowed: ${[...allowed].join(", ")})`);
    }
  }
}

/** Parses a probe file (ProbeSpec in protobuf JSON form, camelCase keys; delivery "DELIVERY_MODE_BULK" or "bulk"). */
export function parseProbeFile(text: string, where: string): ring.ProbeSpec {
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (err) {
    throw new VesperError(ErrorCode.InvalidSpec, `${where}: not valid JSON: ${(err as Error).message}`);
  }
  checkKeys(where, obj, SPEC_KEYS);
  const o = obj as Record<string, unknown>;
  for (const k of (o.kprobes as unknown[] | undefined) ?? []) checkKeys(`${where}: kprobe`, k, KPROBE_KEYS);
  for (const u of (o.uprobes as unknown[] | undefined) ?? []) checkKeys(`${where}: uprobe`, u, UPROBE_KEYS);
  for (const t of (o.tracepoints as unknown[] | undefined) ?? []) checkKeys(`${where}: tracepoint`, t, TP_KEYS);
  if (o.delivery === "urgent" || o.delivery === "bulk") o.delivery = `DELIVERY_MODE_${o.delivery.toUpperCase()}`;
  try {
    return validateProbeSpec(ring.ProbeSpec.fromJSON(o));
  } catch (err) {
    if (err instanceof VesperError) throw new VesperError(err.code, `${where}: ${err.message}`);
    throw new VesperError(ErrorCode.InvalidSpec, `${where}: ${(err as Error).message}`);
  }
}

export class ProbeLibrary {
  private readonly entries = new Map<string, LibraryEntry>();

  private constructor() {}

  static async load(probeDir: string | undefined, log: Logger): Promise<ProbeLibrary> {
    const lib = new ProbeLibrary();
    for (const b of builtinProbeDocs) lib.entries.set(b.spec.name, { spec: validateProbeSpec(b.spec), source: "builtin", events: b.events });
    if (probeDir === undefined) return lib;
    let files: string[];
    try {
      files = (await readdir(probeDir)).filter((f) => f.endsWith(".json")).sort();
    } catch (err) {
      log.warn({ probeDir, err: (err as Error).message }, "probe directory not readable; only built-in probes available");
      return lib;
    }
    for (const f of files) {
      const path = join(probeDir, f);
      try {
        const spec = parseProbeFile(await readFile(path, "utf8"), path);
        if (lib.entries.has(spec.name)) log.warn({ path, probe: spec.name }, "probe file overrides an earlier probe of that name");
        lib.entries.set(spec.name, { spec, source: path, events: [] });
      } catch (err) {
        log.error({ path, err: (err as Error).message }, "skipping invalid probe file");
      }
    }
    return lib;
  }

  get(name: string): LibraryEntry {
    const e = this.entries.get(name);
    if (e === undefined) {
      throw new VesperError(
        ErrorCode.UnknownProbe,
        `no probe named ${JSON.stringify(name)} in the library (known: ${[...this.entries.keys()].join(", ")}); see \`vesper probes\``,
      );
    }
    return e;
  }

  list(): LibraryEntry[] {
    return [...this.entries.values()];
  }
}
