/**
 * Where tracefs is and what the kernel behind it offers. Also the low-level file
 * operations the probe engine needs (error_log, dynamic events listing).
 */
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ring } from "@vesper/protocol";
import { messageOf, ProbeError } from "./errors.js";
import { exists, readText, readTextOr } from "./fsutil.js";

export interface TracefsOptions {
  /** Default: the tracefs mount found in /proc/mounts, else tracefs is mounted at /sys/kernel/tracing. */
  root?: string | undefined;
  /** Instances are named `${instancePrefix}-${probe}` (default "vesper"). */
  instancePrefix?: string | undefined;
  /**
   * Kprobe groups are named `${groupPrefix}_${probe}` (default: instancePrefix when that is a
   * valid group name, else "vesper"). Must be [A-Za-z_][A-Za-z0-9_]*.
   */
  groupPrefix?: string | undefined;
}

const DEFAULT_ROOT = "/sys/kernel/tracing";
const INSTANCE_PREFIX_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,47}$/;
const GROUP_PREFIX_RE = /^[A-Za-z_][A-Za-z0-9_]{0,47}$/;

/** Decodes the octal escapes (\040 etc.) of /proc/mounts fields. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

async function findTracefsMount(): Promise<string | undefined> {
  const mounts = await readTextOr("/proc/mounts", "");
  const found: string[] = [];
  for (const line of mounts.split("\n")) {
    const f = line.split(" ");
    if (f[2] === "tracefs" && f[1] !== undefined) found.push(unescapeMount(f[1]));
  }
  if (found.includes(DEFAULT_ROOT)) return DEFAULT_ROOT;
  return found[0];
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { timeout: 10_000 }, (err, _out, stderr) =>
      err ? reject(new Error(`${cmd} ${args.join(" ")}: ${stderr.trim() || err.message}`)) : resolve(),
    ),
  );
}

/** Parses "0-3,5,7-8" (sysfs cpu lists). */
export function parseCpuList(s: string): number[] {
  const out: number[] = [];
  for (const part of s.trim().split(",")) {
    if (part === "") continue;
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) continue;
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    for (let i = a; i <= b; i++) out.push(i);
  }
  return out;
}

/** Page size of the ring buffer from events/header_page: the data field's offset + size. */
export function pageSizeFromHeader(headerPage: string): number | undefined {
  const m = /field:\s*char data;\s*offset:(\d+);\s*size:(\d+);/.exec(headerPage);
  if (!m) return undefined;
  return Number(m[1]) + Number(m[2]);
}

export class Tracefs {
  private constructor(
    readonly root: string,
    readonly instancePrefix: string,
    readonly groupPrefix: string,
    readonly kernelRelease: string,
    readonly bootId: string,
  ) {}

  static async open(opts: TracefsOptions = {}): Promise<Tracefs> {
    const instancePrefix = opts.instancePrefix ?? "vesper";
    if (!INSTANCE_PREFIX_RE.test(instancePrefix)) {
      throw new ProbeError(ring.ResultCode.RESULT_CODE_INVALID_SPEC, `invalid tracefs instance prefix ${JSON.stringify(instancePrefix)}`);
    }
    const groupPrefix = opts.groupPrefix ?? (GROUP_PREFIX_RE.test(instancePrefix) ? instancePrefix : "vesper");
    if (!GROUP_PREFIX_RE.test(groupPrefix)) {
      throw new ProbeError(ring.ResultCode.RESULT_CODE_INVALID_SPEC, `invalid kprobe group prefix ${JSON.stringify(groupPrefix)}`);
    }
    let root = opts.root;
    if (root === undefined) {
      root = await findTracefsMount();
      if (root === undefined) {
        await fs.promises.mkdir(DEFAULT_ROOT, { recursive: true }).catch(() => undefined);
        try {
          await run("mount", ["-t", "tracefs", "nodev", DEFAULT_ROOT]);
        } catch (err) {
          throw new ProbeError(ring.ResultCode.RESULT_CODE_UNSUPPORTED, `tracefs is not mounted and mounting it failed: ${messageOf(err)}`, { cause: err });
        }
        root = DEFAULT_ROOT;
      }
    }
    if (!(await exists(path.join(root, "instances")))) {
      throw new ProbeError(
        ring.ResultCode.RESULT_CODE_UNSUPPORTED,
        `${root} is not a tracefs with instances (is tracefs mounted there? CONFIG_TRACING?)`,
      );
    }
    const bootId = (await readTextOr("/proc/sys/kernel/random/boot_id", "")).trim();
    return new Tracefs(root, instancePrefix, groupPrefix, os.release(), bootId);
  }

  path(...parts: string[]): string {
    return path.join(this.root, ...parts);
  }

  instanceName(probe: string): string {
    return `${this.instancePrefix}-${probe}`;
  }

  instanceDir(probe: string): string {
    return this.path("instances", this.instanceName(probe));
  }

  kprobeGroup(probe: string): string {
    return `${this.groupPrefix}_${probe}`;
  }

  hasKprobes(): Promise<boolean> {
    return exists(this.path("kprobe_events"));
  }

  hasUprobes(): Promise<boolean> {
    return exists(this.path("uprobe_events"));
  }

  /** CPUs that have a ring buffer and are online, ascending. */
  async cpus(dir: string = this.root): Promise<number[]> {
    let entries: string[];
    try {
      entries = await fs.promises.readdir(path.join(dir, "per_cpu"));
    } catch {
      entries = [];
    }
    const perCpu = entries
      .map((e) => /^cpu(\d+)$/.exec(e)?.[1])
      .filter((x): x is string => x !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
    const online = new Set(parseCpuList(await readTextOr("/sys/devices/system/cpu/online", "")));
    const both = online.size > 0 ? perCpu.filter((c) => online.has(c)) : perCpu;
    return both.length > 0 ? both : perCpu;
  }

  /** Ring-buffer page (sub-buffer) size of an instance, or of the top level. */
  async pageSize(dir: string = this.root): Promise<number> {
    const kb = Number((await readTextOr(path.join(dir, "buffer_subbuf_size_kb"), "")).trim());
    if (Number.isInteger(kb) && kb > 0) return kb * 1024;
    const fromHeader = pageSizeFromHeader(await readTextOr(path.join(this.root, "events", "header_page"), ""));
    return fromHeader ?? 4096;
  }

  async capabilities(): Promise<ring.Capabilities> {
    const available = await readTextOr(this.path("available_events"), "");
    const cpus = await this.cpus();
    return {
      kprobes: await this.hasKprobes(),
      uprobes: await this.hasUprobes(),
      btf: await exists("/sys/kernel/btf/vmlinux"),
      cpus: cpus.length > 0 ? Math.max(...cpus) + 1 : os.availableParallelism(),
      tracepoints: available
        .split("\n")
        .map((l) => l.trim())
        .filter((l) => l !== ""),
      pageSize: await this.pageSize(),
    };
  }

  /** Entries of an error_log (each "[ts] ..." plus its continuation lines), oldest first. */
  async errorLog(dir: string = this.root): Promise<string[]> {
    const text = await readTextOr(path.join(dir, "error_log"), "");
    const entries: string[] = [];
    for (const line of text.split("\n")) {
      if (line === "") continue;
      if (/^\[\s*\d+\.\d+\]/.test(line) || entries.length === 0) entries.push(line);
      else entries[entries.length - 1] += `\n${line}`;
    }
    return entries;
  }

  /** Empties an error_log (a truncating write; only for our own instances: the top level's belongs to everyone). */
  async clearErrorLog(dir: string): Promise<void> {
    try {
      const fh = await fs.promises.open(path.join(dir, "error_log"), "w");
      await fh.close();
    } catch {
      /* old kernels: no per-instance error_log */
    }
  }

  /** Lines of a file of dynamic event definitions (kprobe_events, uprobe_events, dynamic_events), or [] if there is none. */
  async dynEvents(file: "kprobe_events" | "uprobe_events" | "dynamic_events"): Promise<string[]> {
    const text = await readTextOr(this.path(file), "");
    return text.split("\n").filter((l) => l.trim() !== "");
  }

  async instances(): Promise<string[]> {
    return fs.promises.readdir(this.path("instances"));
  }

  async readFile(...parts: string[]): Promise<string> {
    return readText(this.path(...parts));
  }
}
