/**
 * The spool: a copy, in RAM (tmpfs), of every page the frontend has read from the
 * kernel and the host may not have yet, so that a frontend that is killed and
 * started again adopts its probes and sends those pages again instead of losing
 * them (reads from trace_pipe_raw consume: the kernel cannot give them twice).
 *
 * <dir>/<probe>/meta.json   the spec, load id, CPUs and page size of the load
 * <dir>/<probe>/cpuN.data   `slots` pages; page seq s lives at slot s % slots
 * <dir>/<probe>/cpuN.runs   `slots` run records; a run starting at seq s at slot s % slots
 *
 * The send window never holds more than `slots` pages, so a slot is reused only
 * after the host acknowledged its page. A run costs two pwrite(2)s (data, record),
 * whatever its length; the directory must be RAM-backed, since the frontend may not
 * depend on the guest's disk.
 */
import fs from "node:fs";
import path from "node:path";
import { ring } from "@vesper/protocol";
import type { OutRun } from "./send-window.js";

const RUN_MAGIC = 0x4e525356; // "VSRN" little-endian
const RECORD = 24; // magic u32, count u32, lastLength u32, reserved u32, firstSeq f64

export interface SpoolMeta {
  spec: ring.ProbeSpec;
  loadId: bigint;
  instance: string;
  cpus: number;
  pageSize: number;
  slots: number;
}

/** One probe's spool found at start-up, with the runs it still holds per CPU (oldest first). */
export interface RecoveredSpool {
  readonly meta: SpoolMeta;
  readonly spool: ProbeSpool;
  readonly runs: ReadonlyMap<number, OutRun[]>;
}

interface MetaJson {
  spec: unknown;
  loadId: string;
  instance: string;
  cpus: number;
  pageSize: number;
  slots: number;
}

export class ProbeSpool {
  private constructor(
    readonly dir: string,
    readonly meta: SpoolMeta,
    private readonly dataFds: number[],
    private readonly runFds: number[],
  ) {}

  /** Starts the spool of a fresh load (replacing whatever an earlier load of the probe left). */
  static create(root: string, meta: SpoolMeta): ProbeSpool {
    const dir = path.join(root, meta.spec.name);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const dataFds: number[] = [];
    const runFds: number[] = [];
    try {
      for (let cpu = 0; cpu < meta.cpus; cpu++) {
        dataFds.push(fs.openSync(path.join(dir, `cpu${cpu}.data`), "w+", 0o600));
        runFds.push(fs.openSync(path.join(dir, `cpu${cpu}.runs`), "w+", 0o600));
      }
      const json: MetaJson = {
        spec: ring.ProbeSpec.toJSON(meta.spec),
        loadId: meta.loadId.toString(),
        instance: meta.instance,
        cpus: meta.cpus,
        pageSize: meta.pageSize,
        slots: meta.slots,
      };
      // Written last: a spool without meta.json is half made and is discarded at start-up.
      fs.writeFileSync(path.join(dir, "meta.json"), JSON.stringify(json), { mode: 0o600 });
    } catch (err) {
      for (const fd of [...dataFds, ...runFds]) fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    return new ProbeSpool(dir, meta, dataFds, runFds);
  }

  /**
   * Every probe spool under `root`. A spool that cannot be read is removed and
   * reported through `onBad`; the caller decides what to do with the rest.
   */
  static recover(root: string, onBad: (probe: string, err: Error) => void): RecoveredSpool[] {
    let names: string[];
    try {
      names = fs.readdirSync(root);
    } catch {
      return [];
    }
    const out: RecoveredSpool[] = [];
    for (const name of names) {
      const dir = path.join(root, name);
      try {
        out.push(ProbeSpool.open(dir));
      } catch (err) {
        onBad(name, err as Error);
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
    return out;
  }

  private static open(dir: string): RecoveredSpool {
    const json = JSON.parse(fs.readFileSync(path.join(dir, "meta.json"), "utf8")) as MetaJson;
    const meta: SpoolMeta = {
      spec: ring.ProbeSpec.fromJSON(json.spec),
      loadId: BigInt(json.loadId),
      instance: String(json.instance),
      cpus: Number(json.cpus),
      pageSize: Number(json.pageSize),
      slots: Number(json.slots),
    };
    if (!(meta.cpus > 0 && meta.pageSize > 0 && meta.slots > 0) || meta.spec.name !== path.basename(dir)) {
      throw new Error(`spool ${dir}: inconsistent meta.json`);
    }
    const dataFds: number[] = [];
    const runFds: number[] = [];
    const runs = new Map<number, OutRun[]>();
    try {
      for (let cpu = 0; cpu < meta.cpus; cpu++) {
        dataFds.push(fs.openSync(path.join(dir, `cpu${cpu}.data`), "r+"));
        runFds.push(fs.openSync(path.join(dir, `cpu${cpu}.runs`), "r+"));
        runs.set(cpu, readRuns(dataFds[cpu]!, runFds[cpu]!, meta));
      }
    } catch (err) {
      for (const fd of [...dataFds, ...runFds]) fs.closeSync(fd);
      throw err;
    }
    return { meta, spool: new ProbeSpool(dir, meta, dataFds, runFds), runs };
  }

  /** Copies a run into its slots and records it. */
  write(cpu: number, run: OutRun): void {
    const dataFd = this.dataFds[cpu];
    const runFd = this.runFds[cpu];
    if (dataFd === undefined || runFd === undefined || run.count === 0) return;
    const { slots, pageSize } = this.meta;
    const start = run.firstSeq % slots;
    const first = Math.min(run.count, slots - start);
    writeAll(dataFd, run.data.subarray(0, first * pageSize), start * pageSize);
    if (first < run.count) writeAll(dataFd, run.data.subarray(first * pageSize), 0); // wraps around
    const rec = Buffer.allocUnsafe(RECORD);
    rec.writeUInt32LE(RUN_MAGIC, 0);
    rec.writeUInt32LE(run.count, 4);
    rec.writeUInt32LE(run.lastLength, 8);
    rec.writeUInt32LE(0, 12);
    rec.writeDoubleLE(run.firstSeq, 16);
    writeAll(runFd, rec, start * RECORD);
  }

  close(): void {
    for (const fd of [...this.dataFds.splice(0), ...this.runFds.splice(0)]) {
      try {
        fs.closeSync(fd);
      } catch {
        /* already closed */
      }
    }
  }

  /** Unload: the pages are of no use any more. */
  remove(): void {
    this.close();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function writeAll(fd: number, buf: Buffer, position: number): void {
  for (let off = 0; off < buf.length; ) off += fs.writeSync(fd, buf, off, buf.length - off, position + off);
}

/**
 * The chain of runs that ends with the newest one: each run must end right before the
 * next begins, and all of them together fit the slots (older records may still be in
 * the file, their pages long overwritten; the chain never reaches them).
 */
function readRuns(dataFd: number, runFd: number, meta: SpoolMeta): OutRun[] {
  const { slots, pageSize } = meta;
  const recs = Buffer.alloc(slots * RECORD);
  fs.readSync(runFd, recs, 0, recs.length, 0);
  const byEnd = new Map<number, { firstSeq: number; count: number; lastLength: number }>();
  let newest: { firstSeq: number; count: number; lastLength: number } | undefined;
  for (let i = 0; i < slots; i++) {
    const o = i * RECORD;
    if (recs.readUInt32LE(o) !== RUN_MAGIC) continue;
    const r = { count: recs.readUInt32LE(o + 4), lastLength: recs.readUInt32LE(o + 8), firstSeq: recs.readDoubleLE(o + 16) };
    if (!Number.isSafeInteger(r.firstSeq) || r.firstSeq < 1 || r.count < 1 || r.count > slots || r.lastLength > pageSize) continue;
    if (r.firstSeq % slots !== i) continue;
    byEnd.set(r.firstSeq + r.count - 1, r);
    if (newest === undefined || r.firstSeq > newest.firstSeq) newest = r;
  }
  const chain: { firstSeq: number; count: number; lastLength: number }[] = [];
  let pages = 0;
  for (let r = newest; r !== undefined && pages + r.count <= slots; r = byEnd.get(r.firstSeq - 1)) {
    chain.unshift(r);
    pages += r.count;
  }
  const all = Buffer.alloc(slots * pageSize);
  if (chain.length > 0) fs.readSync(dataFd, all, 0, all.length, 0);
  return chain.map((r) => {
    const len = (r.count - 1) * pageSize + r.lastLength;
    const data = Buffer.allocUnsafe(len);
    for (let k = 0; k < r.count; k++) {
      const slot = (r.firstSeq + k) % slots;
      const n = k < r.count - 1 ? pageSize : r.lastLength;
      all.copy(data, k * pageSize, slot * pageSize, slot * pageSize + n);
    }
    return { firstSeq: r.firstSeq, count: r.count, pageSize, lastLength: r.lastLength, data };
  });
}
