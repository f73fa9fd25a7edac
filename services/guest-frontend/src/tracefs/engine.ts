/**
 * The probe engine: turns a ProbeSpec into one tracefs instance with its kprobes,
 * uprobes, tracepoints and filters, and takes it all away again. Every load either
 * completes or leaves nothing behind (rollback), and unload verifies that nothing
 * of the probe is left in tracefs.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { PROBE_NAME_RE, ring, validateProbeSpec } from "@vesper/protocol";
import { ElfError, resolveElfSymbol } from "./elf-symbols.js";
import { errnoOf, messageOf, ProbeError } from "./errors.js";
import { appendText, exists, isErrno, readTextOr, sleep, writeText } from "./fsutil.js";
import { parsePageLayout, type PageLayout } from "./page-layout.js";
import { readPages, type PageRead, type ReadMode } from "./pages.js";
import type { Tracefs } from "./tracefs.js";

const R = ring.ResultCode;

/** Any pino-like logger. */
export interface EngineLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

const silent: EngineLogger = { debug() {}, info() {}, warn() {}, error() {} };

interface EventRef {
  system: string;
  name: string;
  filter: string;
}

interface ProbeState {
  readonly spec: ring.ProbeSpec;
  readonly instance: string;
  readonly dir: string;
  readonly group: string;
  /** "group/event" of kprobes this load created, in creation order. */
  readonly kprobes: string[];
  /** "group/event" of uprobes this load created, in creation order. */
  readonly uprobes: string[];
  /** Events enabled in the instance. */
  readonly enabled: EventRef[];
  cpus: number[];
  pageSize: number;
  /** From events/header_page; undefined if it could not be read (pages then go whole). */
  layout: PageLayout | undefined;
  readonly abort: AbortController;
}

export interface ReadersOptions {
  minBatchDelayMs?: number;
  maxPagesPerFlush?: number;
  wakeGraceMs?: number;
}

function cpuStatsPath(st: { dir: string }, cpu: number): string {
  return path.join(st.dir, "per_cpu", `cpu${cpu}`, "stats");
}

/** Parses per_cpu/cpuN/stats. */
export function parseCpuStats(cpu: number, text: string): ring.CpuStats {
  const v = (key: string): bigint => {
    const m = new RegExp(`^${key}:\\s*(\\d+)\\s*$`, "m").exec(text);
    return m?.[1] === undefined ? 0n : BigInt(m[1]);
  };
  return { cpu, entries: v("entries"), overrun: v("overrun"), droppedEvents: v("dropped events"), readEvents: v("read events") };
}

function kernelLines(entries: readonly string[]): string[] {
  return entries.flatMap((e) => e.split("\n")).filter((l) => l.trim() !== "");
}

function newEntries(before: readonly string[], after: readonly string[]): string[] {
  const seen = new Set(before);
  return after.filter((e) => !seen.has(e));
}

/** The two files that define probes on code: kprobe_events and uprobe_events. */
type DynKind = "kprobe" | "uprobe";
const DYN_FILE: Record<DynKind, "kprobe_events" | "uprobe_events"> = { kprobe: "kprobe_events", uprobe: "uprobe_events" };

/** "p:group/event ..." / "r123:group/event ..." / "-:..." lines of kprobe_events, uprobe_events or dynamic_events. */
function parseDynEvent(line: string): { type: string; group: string; event: string } | undefined {
  const m = /^([a-z])\d*:([^/\s]+)\/(\S+)/.exec(line.trim());
  if (!m || m[1] === undefined || m[2] === undefined || m[3] === undefined) return undefined;
  return { type: m[1], group: m[2], event: m[3] };
}

export class ProbeEngine {
  private readonly probes = new Map<string, ProbeState>();
  private chain: Promise<unknown> = Promise.resolve();
  private readonly log: EngineLogger;

  constructor(
    private readonly tracefs: Tracefs,
    log?: EngineLogger,
  ) {
    this.log = log ?? silent;
  }

  /** Loads, unloads and cleanups run one at a time. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => undefined);
    return next;
  }

  loaded(): string[] {
    return [...this.probes.keys()];
  }

  instanceDir(probe: string): string {
    return this.tracefs.instanceDir(probe);
  }

  /** Where a loaded probe's pages keep their commit word and data (to ship only what they hold). */
  pageLayout(probe: string): PageLayout | undefined {
    return this.probes.get(probe)?.layout;
  }

  load(spec: ring.ProbeSpec): Promise<ring.LoadedProbe> {
    return this.serial(() => this.doLoad(spec));
  }

  /**
   * Removes a probe. `blockedReaders: false` says no read of its buffers can be blocked in
   * the kernel (urgent readers polled on the event loop, or none): then nothing needs waking,
   * and the teardown spawns no `taskset` (a fork of the whole frontend per CPU).
   */
  unload(probe: string, opts: { blockedReaders?: boolean } = {}): Promise<void> {
    return this.serial(() => this.doUnload(probe, opts.blockedReaders ?? true));
  }

  cleanupStale(): Promise<string[]> {
    return this.serial(() => this.doCleanupStale());
  }

  /**
   * Takes over a probe that an earlier frontend process loaded (the spool says which):
   * its instance, kprobes and enabled events must all still be there. On any mismatch
   * what is left of it is removed and the load counts as gone (the host loads it again).
   */
  adopt(spec: ring.ProbeSpec): Promise<{ cpus: number; pageSize: number }> {
    return this.serial(() => this.doAdopt(spec));
  }

  /**
   * One page reader per CPU for a loaded probe, in its delivery mode. They end when
   * the probe is unloaded (unload aborts them and closes their fds even if nobody is
   * pulling). Usually one set per load.
   */
  readers(probe: string, opts: ReadersOptions = {}): AsyncIterable<PageRead>[] {
    const st = this.get(probe);
    const mode: ReadMode = st.spec.delivery === ring.DeliveryMode.DELIVERY_MODE_BULK ? "bulk" : "urgent";
    return st.cpus.map((cpu) =>
      readPages(st.dir, cpu, mode, { signal: st.abort.signal, flushIntervalMs: st.spec.flushIntervalMs, pageSize: st.pageSize, ...opts }),
    );
  }

  async stats(probe: string): Promise<ring.CpuStats[]> {
    const st = this.get(probe);
    return Promise.all(
      st.cpus.map(async (cpu) => parseCpuStats(cpu, await readTextOr(cpuStatsPath(st, cpu), ""))),
    );
  }

  /** stats(), read synchronously: nothing else runs on this thread meanwhile (see urgentReadsInLoop). */
  statsNow(probe: string): ring.CpuStats[] {
    const st = this.get(probe);
    return st.cpus.map((cpu) => {
      let text = "";
      try {
        text = fs.readFileSync(cpuStatsPath(st, cpu), "utf8");
      } catch {
        /* an instance being removed: zeros, like stats() */
      }
      return parseCpuStats(cpu, text);
    });
  }

  private get(probe: string): ProbeState {
    const st = this.probes.get(probe);
    if (st === undefined) throw new ProbeError(R.RESULT_CODE_NOT_LOADED, `probe ${probe} is not loaded`);
    return st;
  }

  // ---------------------------------------------------------------- load

  private async doLoad(input: ring.ProbeSpec): Promise<ring.LoadedProbe> {
    let spec: ring.ProbeSpec;
    try {
      spec = validateProbeSpec(input);
    } catch (err) {
      throw new ProbeError(R.RESULT_CODE_INVALID_SPEC, messageOf(err), { cause: err });
    }
    const tf = this.tracefs;
    const probe = spec.name;
    const instance = tf.instanceName(probe);
    const group = tf.kprobeGroup(probe);
    if (this.probes.has(probe)) throw new ProbeError(R.RESULT_CODE_ALREADY_LOADED, `probe ${probe} is already loaded (tracefs instance ${instance})`);

    // What the kernel cannot do at all: say so before touching anything.
    if (spec.kprobes.length > 0 && !(await tf.hasKprobes())) {
      const k = spec.kprobes[0]!;
      throw new ProbeError(
        R.RESULT_CODE_UNSUPPORTED,
        `this kernel has no kprobes (CONFIG_KPROBE_EVENTS: no ${tf.path("kprobe_events")}): cannot create kprobe ${group}/${k.name} on symbol ${k.symbol}`,
      );
    }
    if (spec.uprobes.length > 0 && !(await tf.hasUprobes())) {
      const u = spec.uprobes[0]!;
      throw new ProbeError(
        R.RESULT_CODE_UNSUPPORTED,
        `this kernel has no uprobes (CONFIG_UPROBE_EVENTS: no ${tf.path("uprobe_events")}): cannot create uprobe ${group}/${u.name} in ${u.path}`,
      );
    }
    for (const t of spec.tracepoints) {
      if (!(await exists(tf.path("events", t.system, t.event)))) {
        throw new ProbeError(
          R.RESULT_CODE_UNSUPPORTED,
          `this kernel has no tracepoint ${t.system}:${t.event} (no ${tf.path("events", t.system, t.event)})`,
        );
      }
    }

    const dir = tf.instanceDir(probe);
    try {
      await fs.promises.mkdir(dir);
    } catch (err) {
      if (isErrno(err, "EEXIST")) {
        throw new ProbeError(
          R.RESULT_CODE_ALREADY_LOADED,
          `tracefs instance ${instance} already exists: probe ${probe} is loaded by another frontend or was left by an earlier run (cleanupStale removes it)`,
          { errno: "EEXIST" },
        );
      }
      throw new ProbeError(R.RESULT_CODE_INTERNAL, `cannot create tracefs instance ${dir}: ${messageOf(err)}`, { cause: err, errno: errnoOf(err) });
    }

    const st: ProbeState = {
      spec,
      instance,
      dir,
      group,
      kprobes: [],
      uprobes: [],
      enabled: [],
      cpus: [],
      pageSize: 4096,
      layout: undefined,
      abort: new AbortController(),
    };
    try {
      await this.step(`${instance}: tracing_on`, () => writeText(path.join(dir, "tracing_on"), "0"));
      await this.step(
        `${instance}: buffer_size_kb ${spec.bufferKbPerCpu}`,
        () => writeText(path.join(dir, "buffer_size_kb"), String(spec.bufferKbPerCpu)),
        R.RESULT_CODE_KERNEL_REFUSED,
      );
      await this.step(`${instance}: trace_clock mono`, () => writeText(path.join(dir, "trace_clock"), "mono"), R.RESULT_CODE_UNSUPPORTED);
      // Poll (the urgent readers wait in epoll) says "readable" at the first event, not when the
      // buffer is half full (the default 50). Kernels before 5.1 have no such file and behave so.
      await writeText(path.join(dir, "buffer_percent"), "0").catch(() => undefined);

      for (const k of spec.kprobes) await this.addKprobe(st, k);
      for (const u of spec.uprobes) await this.addUprobe(st, u);

      const events = eventRefs(spec, group);
      for (const ev of events) {
        if (!(await exists(path.join(dir, "events", ev.system, ev.name)))) {
          throw new ProbeError(
            R.RESULT_CODE_UNSUPPORTED,
            `event ${ev.system}:${ev.name} does not exist in tracefs instance ${instance} (no events/${ev.system}/${ev.name})`,
          );
        }
      }
      for (const ev of events) if (ev.filter !== "") await this.setFilter(st, ev);
      for (const ev of events) {
        await this.step(`${instance}: enable ${ev.system}:${ev.name}`, () => writeText(path.join(dir, "events", ev.system, ev.name, "enable"), "1"), R.RESULT_CODE_KERNEL_REFUSED);
        st.enabled.push(ev);
      }

      const formats: ring.EventFormat[] = [];
      for (const ev of events) {
        const format = await this.step(`${instance}: read format of ${ev.system}:${ev.name}`, () =>
          fs.promises.readFile(path.join(dir, "events", ev.system, ev.name, "format"), "utf8"),
        );
        const id = /^ID:\s*(\d+)/m.exec(format)?.[1];
        if (id === undefined) throw new ProbeError(R.RESULT_CODE_INTERNAL, `format of ${ev.system}:${ev.name} has no ID line`);
        formats.push({ system: ev.system, name: ev.name, id: Number(id), format });
      }
      const headerPage = await this.headerPage(dir);
      st.pageSize = await tf.pageSize(dir);
      st.layout = parsePageLayout(headerPage);
      st.cpus = await tf.cpus(dir);
      if (st.cpus.length === 0) throw new ProbeError(R.RESULT_CODE_INTERNAL, `tracefs instance ${instance} has no per_cpu buffers`);

      await this.step(`${instance}: tracing_on`, () => writeText(path.join(dir, "tracing_on"), "1"));
      this.probes.set(probe, st);
      this.log.info({ probe, instance, kprobes: st.kprobes, uprobes: st.uprobes, events: events.map((e) => `${e.system}:${e.name}`) }, "probe loaded into tracefs");
      return {
        instance,
        formats,
        headerPage,
        pageSize: st.pageSize,
        cpus: Math.max(...st.cpus) + 1,
        loadId: randomBytes(8).readBigUInt64BE(),
      };
    } catch (err) {
      const left = await this.teardown(st, false); // no reader was started yet
      if (left.length > 0) this.log.error({ probe, left }, "rollback after a failed load left something behind");
      if (err instanceof ProbeError) throw err;
      throw new ProbeError(R.RESULT_CODE_INTERNAL, `loading probe ${probe} failed: ${messageOf(err)}`, { cause: err, errno: errnoOf(err) });
    }
  }

  /** The instance's events/header_page, else the top-level one (older kernels); "" if neither reads. */
  private async headerPage(dir: string): Promise<string> {
    return (await readTextOr(path.join(dir, "events", "header_page"), "")) || (await readTextOr(this.tracefs.path("events", "header_page"), ""));
  }

  /** Runs one tracefs operation; a failure becomes a ProbeError naming it. */
  private async step<T>(what: string, fn: () => Promise<T>, code: ring.ResultCode = R.RESULT_CODE_INTERNAL): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof ProbeError) throw err;
      const errno = errnoOf(err);
      throw new ProbeError(code, `${what}: ${errno ?? messageOf(err)}`, { cause: err, errno });
    }
  }

  private async addKprobe(st: ProbeState, k: ring.KprobeSpec): Promise<void> {
    const tf = this.tracefs;
    const event = `${st.group}/${k.name}`;
    const where = k.offset > 0n ? `${k.symbol}+${k.offset}` : k.symbol;
    const def = dynEventLine(k.isReturn, event, where, k.fetchArgs);
    const failed = await this.defineDynEvent("kprobe", def);
    if (failed === undefined) {
      st.kprobes.push(event);
      return;
    }
    const { err, errno, kernelLog } = failed;
    if (errno === "EEXIST") {
      throw new ProbeError(
        R.RESULT_CODE_ALREADY_LOADED,
        `kprobe ${event} already exists (another frontend with the same group prefix, or left by an earlier run: cleanupStale removes it)`,
        { cause: err, errno, kernelLog },
      );
    }
    if (errno === "ENOENT" && !(await tf.hasKprobes())) {
      throw new ProbeError(R.RESULT_CODE_UNSUPPORTED, `this kernel has no kprobes (CONFIG_KPROBE_EVENTS): cannot create kprobe ${event} on symbol ${k.symbol}`, {
        cause: err,
        errno,
      });
    }
    throw new ProbeError(
      R.RESULT_CODE_KERNEL_REFUSED,
      `the kernel refused kprobe ${event} on ${where} (${errno ?? messageOf(err)}${errno === "ENOENT" ? ": unknown symbol?" : ""}): ${def}`,
      { cause: err, errno, kernelLog },
    );
  }

  /** Appends one definition to kprobe_events or uprobe_events; on failure, what failed and the error_log lines it wrote. */
  private async defineDynEvent(kind: DynKind, def: string): Promise<{ err: unknown; errno: string | undefined; kernelLog: string[] } | undefined> {
    const tf = this.tracefs;
    const before = await tf.errorLog();
    try {
      await appendText(tf.path(DYN_FILE[kind]), `${def}\n`);
      return undefined;
    } catch (err) {
      return { err, errno: errnoOf(err), kernelLog: kernelLines(newEntries(before, await tf.errorLog())) };
    }
  }

  /** Resolves the symbol in the guest's file, then defines the uprobe at its file offset. */
  private async addUprobe(st: ProbeState, u: ring.UprobeSpec): Promise<void> {
    const tf = this.tracefs;
    const event = `${st.group}/${u.name}`;
    let offset = u.offset;
    if (u.symbol !== "") {
      try {
        offset += (await resolveElfSymbol(u.path, u.symbol)).fileOffset;
      } catch (err) {
        if (!(err instanceof ElfError)) throw err;
        const code = err.code === "UNSUPPORTED" ? R.RESULT_CODE_UNSUPPORTED : R.RESULT_CODE_KERNEL_REFUSED;
        throw new ProbeError(code, `uprobe ${event}: ${err.message}`, { cause: err });
      }
    }
    const where = `${u.path}:0x${offset.toString(16)}`;
    const def = dynEventLine(u.isReturn, event, where, u.fetchArgs);
    const failed = await this.defineDynEvent("uprobe", def);
    if (failed === undefined) {
      st.uprobes.push(event);
      return;
    }
    const { err, errno, kernelLog } = failed;
    if (errno === "EEXIST") {
      throw new ProbeError(R.RESULT_CODE_ALREADY_LOADED, `uprobe ${event} already exists (left by an earlier run: cleanupStale removes it)`, { cause: err, errno, kernelLog });
    }
    const at = u.symbol === "" ? where : `${u.symbol}${u.offset > 0n ? `+${u.offset}` : ""} (${where})`;
    throw new ProbeError(R.RESULT_CODE_KERNEL_REFUSED, `the kernel refused uprobe ${event} on ${at} (${errno ?? messageOf(err)}): ${def}`, {
      cause: err,
      errno,
      kernelLog,
    });
  }

  private async setFilter(st: ProbeState, ev: EventRef): Promise<void> {
    const tf = this.tracefs;
    const file = path.join(st.dir, "events", ev.system, ev.name, "filter");
    // Filter errors go to the instance's own error_log (ours to clear); older kernels use the top-level one.
    await tf.clearErrorLog(st.dir);
    const beforeTop = await tf.errorLog();
    try {
      await writeText(file, ev.filter);
    } catch (err) {
      const errno = errnoOf(err);
      let kernelLog = kernelLines([...(await tf.errorLog(st.dir)), ...newEntries(beforeTop, await tf.errorLog())]);
      // The filter file itself shows the parse error with a caret.
      if (kernelLog.length === 0) kernelLog = (await readTextOr(file, "")).split("\n").filter((l) => l.trim() !== "");
      throw new ProbeError(
        R.RESULT_CODE_KERNEL_REFUSED,
        `the kernel refused filter ${JSON.stringify(ev.filter)} on ${ev.system}:${ev.name} (${errno ?? messageOf(err)})`,
        { cause: err, errno, kernelLog },
      );
    }
  }

  private async doAdopt(input: ring.ProbeSpec): Promise<{ cpus: number; pageSize: number }> {
    const spec = validateProbeSpec(input);
    const tf = this.tracefs;
    const probe = spec.name;
    if (this.probes.has(probe)) throw new ProbeError(R.RESULT_CODE_ALREADY_LOADED, `probe ${probe} is already loaded`);
    const dir = tf.instanceDir(probe);
    const group = tf.kprobeGroup(probe);
    const missing: string[] = [];
    if (!(await exists(dir))) missing.push(`instance ${tf.instanceName(probe)}`);
    const kprobes = spec.kprobes.map((k) => `${group}/${k.name}`);
    const uprobes = spec.uprobes.map((u) => `${group}/${u.name}`);
    for (const [kind, events] of [["kprobe", kprobes], ["uprobe", uprobes]] as const) {
      if (missing.length > 0 || events.length === 0) continue;
      const have = new Set((await tf.dynEvents(DYN_FILE[kind])).map(parseDynEvent).flatMap((p) => (p === undefined ? [] : [`${p.group}/${p.event}`])));
      for (const e of events) if (!have.has(e)) missing.push(`${kind} ${e}`);
    }
    const enabled = eventRefs(spec, group);
    if (missing.length === 0) {
      for (const ev of enabled) {
        if ((await readTextOr(path.join(dir, "events", ev.system, ev.name, "enable"), "")).trim() !== "1") missing.push(`enabled ${ev.system}:${ev.name}`);
      }
      if ((await readTextOr(path.join(dir, "tracing_on"), "")).trim() !== "1") missing.push("tracing_on");
    }
    if (missing.length > 0) {
      await this.removeByName(probe);
      throw new ProbeError(R.RESULT_CODE_NOT_LOADED, `cannot adopt probe ${probe}: ${missing.join(", ")} not as left; removed what remained`);
    }
    const st: ProbeState = {
      spec,
      instance: tf.instanceName(probe),
      dir,
      group,
      kprobes,
      uprobes,
      enabled,
      cpus: await tf.cpus(dir),
      pageSize: await tf.pageSize(dir),
      layout: parsePageLayout(await this.headerPage(dir)),
      abort: new AbortController(),
    };
    this.probes.set(probe, st);
    this.log.info({ probe, instance: st.instance }, "adopted a probe an earlier frontend loaded");
    return { cpus: Math.max(...st.cpus) + 1, pageSize: st.pageSize };
  }

  // ---------------------------------------------------------------- unload

  private async doUnload(probe: string, blockedReaders: boolean): Promise<void> {
    const st = this.probes.get(probe);
    if (st === undefined) {
      // Not ours in this process, but maybe in tracefs (e.g. loaded before a restart).
      const left = await this.leftovers(probe);
      if (left.length === 0) throw new ProbeError(R.RESULT_CODE_NOT_LOADED, `probe ${probe} is not loaded`);
      const problems = await this.removeByName(probe);
      const still = await this.leftovers(probe);
      if (still.length > 0) throw new ProbeError(R.RESULT_CODE_INTERNAL, `unloading ${probe} left ${still.join(", ")}`, { kernelLog: problems });
      return;
    }
    const problems = await this.teardown(st, blockedReaders);
    this.probes.delete(probe);
    const still = await this.leftovers(probe);
    if (still.length > 0) {
      throw new ProbeError(R.RESULT_CODE_INTERNAL, `unloading ${probe} left ${still.join(", ")}`, { kernelLog: problems });
    }
    this.log.info({ probe, instance: st.instance }, "probe removed from tracefs");
  }

  /**
   * Tracing off (wakes blocked readers on older kernels), readers aborted (closing
   * their fds wakes them on newer ones), events disabled, kprobes removed, instance
   * removed. Best effort throughout; returns what went wrong.
   */
  private async teardown(st: ProbeState, blockedReaders: boolean): Promise<string[]> {
    const problems: string[] = [];
    const note = (what: string, err: unknown): void => {
      problems.push(`${what}: ${errnoOf(err) ?? messageOf(err)}`);
      this.log.warn({ probe: st.spec.name, what, err: messageOf(err) }, "tracefs cleanup step failed");
    };
    st.abort.abort();
    if (blockedReaders) await wakeReaders(st.dir, st.cpus);
    await writeText(path.join(st.dir, "tracing_on"), "0").catch((e: unknown) => note("tracing_on 0", e));
    for (const ev of [...st.enabled].reverse()) {
      await writeText(path.join(st.dir, "events", ev.system, ev.name, "enable"), "0").catch((e: unknown) => note(`disable ${ev.system}:${ev.name}`, e));
    }
    for (const kp of [...st.kprobes].reverse()) {
      await this.removeDynEvent("kprobe", kp).catch((e: unknown) => note(`remove kprobe ${kp}`, e));
    }
    for (const up of [...st.uprobes].reverse()) {
      await this.removeDynEvent("uprobe", up).catch((e: unknown) => note(`remove uprobe ${up}`, e));
    }
    await this.rmdirInstance(st.dir).catch((e: unknown) => note(`rmdir ${st.instance}`, e));
    return problems;
  }

  private async removeDynEvent(kind: DynKind, event: string): Promise<void> {
    // EBUSY while something still has it enabled (e.g. an instance being torn down): retry briefly.
    for (let attempt = 0; ; attempt++) {
      try {
        await appendText(this.tracefs.path(DYN_FILE[kind]), `-:${event}\n`);
        return;
      } catch (err) {
        if (isErrno(err, "ENOENT") && !(await this.dynEventExists(kind, event))) return;
        if (!isErrno(err, "EBUSY") || attempt >= 10) throw err;
        await sleep(20 * (attempt + 1));
      }
    }
  }

  private async dynEventExists(kind: DynKind, event: string): Promise<boolean> {
    return (await this.tracefs.dynEvents(DYN_FILE[kind])).some((l) => {
      const p = parseDynEvent(l);
      return p !== undefined && `${p.group}/${p.event}` === event;
    });
  }

  /** rmdir, retrying on EBUSY while readers close their files (bounded: ~3 s). */
  private async rmdirInstance(dir: string): Promise<void> {
    let delay = 5;
    const deadline = Date.now() + 3000;
    for (;;) {
      try {
        await fs.promises.rmdir(dir);
        return;
      } catch (err) {
        if (isErrno(err, "ENOENT")) return;
        if (!isErrno(err, "EBUSY") || Date.now() >= deadline) {
          if (isErrno(err, "EBUSY")) {
            throw new Error(`instance ${path.basename(dir)} still busy after 3 s: some process holds its trace_pipe_raw (or another file) open`, { cause: err });
          }
          throw err;
        }
        await sleep(delay);
        delay = Math.min(delay * 2, 200);
      }
    }
  }

  /** What of a probe is in tracefs: its instance and the kprobes of its group. */
  private async leftovers(probe: string): Promise<string[]> {
    const tf = this.tracefs;
    const out: string[] = [];
    const instance = tf.instanceName(probe);
    if ((await tf.instances().catch((): string[] => [])).includes(instance)) out.push(`instances/${instance}`);
    const group = tf.kprobeGroup(probe);
    const seen = new Set<string>();
    // dynamic_events lists kprobes and uprobes again (and other kinds): anything of the group there counts too.
    for (const [file, kind] of [["kprobe_events", "kprobe"], ["uprobe_events", "uprobe"], ["dynamic_events", "event"]] as const) {
      for (const l of await tf.dynEvents(file)) {
        const p = parseDynEvent(l);
        const event = p === undefined || p.group !== group ? undefined : `${p.group}/${p.event}`;
        if (event === undefined || seen.has(event)) continue;
        seen.add(event);
        out.push(`${kind} ${event}`);
      }
    }
    return out;
  }

  /** Removes a probe's instance and kprobe group found in tracefs, without knowing what created them. */
  private async removeByName(probe: string): Promise<string[]> {
    const tf = this.tracefs;
    const problems: string[] = [];
    const dir = tf.instanceDir(probe);
    if (await exists(dir)) {
      await this.removeInstance(dir).catch((e: unknown) => problems.push(`rmdir ${path.basename(dir)}: ${messageOf(e)}`));
    }
    const group = tf.kprobeGroup(probe);
    for (const kind of ["kprobe", "uprobe"] as const) {
      for (const l of await tf.dynEvents(DYN_FILE[kind])) {
        const p = parseDynEvent(l);
        if (p === undefined || p.group !== group) continue;
        const event = `${p.group}/${p.event}`;
        await this.removeDynEvent(kind, event).catch((e: unknown) => problems.push(`remove ${kind} ${event}: ${errnoOf(e) ?? messageOf(e)}`));
      }
    }
    return problems;
  }

  private async removeInstance(dir: string): Promise<void> {
    await writeText(path.join(dir, "tracing_on"), "0").catch(() => undefined);
    // A truncating open of the instance's set_event disables every event in it (instance-local).
    await writeText(path.join(dir, "set_event"), "").catch(() => undefined);
    await this.rmdirInstance(dir);
  }

  // ---------------------------------------------------------------- stale

  private async doCleanupStale(): Promise<string[]> {
    const tf = this.tracefs;
    const removed: string[] = [];
    const instPrefix = `${tf.instancePrefix}-`;
    for (const name of await tf.instances()) {
      if (!name.startsWith(instPrefix)) continue;
      const probe = name.slice(instPrefix.length);
      if (this.probes.has(probe)) continue;
      try {
        await this.removeInstance(path.join(tf.root, "instances", name));
        removed.push(`instances/${name}`);
      } catch (err) {
        this.log.warn({ instance: name, err: messageOf(err) }, "cannot remove a stale tracefs instance");
      }
    }
    const groupPrefix = `${tf.groupPrefix}_`;
    for (const kind of ["kprobe", "uprobe"] as const) {
      for (const line of await tf.dynEvents(DYN_FILE[kind])) {
        const p = parseDynEvent(line);
        if (p === undefined || !p.group.startsWith(groupPrefix)) continue;
        const probe = p.group.slice(groupPrefix.length);
        if (!PROBE_NAME_RE.test(probe) || this.probes.has(probe)) continue;
        const event = `${p.group}/${p.event}`;
        try {
          await appendText(tf.path(DYN_FILE[kind]), `-:${event}\n`);
          removed.push(`${kind} ${event}`);
        } catch (err) {
          // EBUSY: enabled somewhere, i.e. in use by someone (e.g. another frontend whose prefix extends ours).
          this.log.warn({ [kind]: event, err: errnoOf(err) ?? messageOf(err) }, `cannot remove a stale ${kind}`);
        }
      }
    }
    if (removed.length > 0) this.log.info({ removed }, "removed stale probes from tracefs");
    return removed;
  }
}

/**
 * Makes blocked trace_pipe_raw reads return. Neither `tracing_on = 0` nor close()
 * wakes them on 6.1 (the guest kernel); an event in the CPU's buffer does. So while
 * tracing is still on, write a marker on every CPU: from this thread for whichever
 * CPU it runs on, and through `taskset` for each CPU when there are several
 * (spawning children is fine here: the readers are being torn down anyway). The
 * children inherit our oom_score_adj of -1000, so they reset theirs first.
 */
async function wakeReaders(dir: string, cpus: readonly number[]): Promise<void> {
  const marker = path.join(dir, "trace_marker");
  await writeText(marker, "vesper: unloading\n").catch(() => undefined);
  if (cpus.length <= 1) return;
  await Promise.all(
    cpus.map(
      (cpu) =>
        new Promise<void>((resolve) => {
          const child = spawn("taskset", ["-c", String(cpu), "sh", "-c", 'echo 0 > /proc/self/oom_score_adj; echo "vesper: unloading" > "$0"', marker], { stdio: "ignore" });
          child.once("error", () => resolve());
          child.once("exit", () => resolve());
        }),
    ),
  );
}

/** A kprobe_events / uprobe_events definition: `p:` (or `r:` for a return probe) EVENT WHERE ARGS. */
function dynEventLine(isReturn: boolean, event: string, where: string, fetchArgs: readonly string[]): string {
  return `${isReturn ? "r" : "p"}:${event} ${where}${fetchArgs.map((a) => ` ${a}`).join("")}`;
}

/** The events a probe enables: its kprobes and uprobes (in the probe's own group), then its tracepoints. */
function eventRefs(spec: ring.ProbeSpec, group: string): EventRef[] {
  return [
    ...spec.kprobes.map((k) => ({ system: group, name: k.name, filter: k.filter })),
    ...spec.uprobes.map((u) => ({ system: group, name: u.name, filter: u.filter })),
    ...spec.tracepoints.map((t) => ({ system: t.system, name: t.event, filter: t.filter })),
  ];
}
