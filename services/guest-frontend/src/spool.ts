/**
 * The spool: a copy, in RAM (tmpfs), of every page the frontend has read from the
 * kernel and the host may not have yet, so that a frontend that is killed and
 * started again adopts its probes and sends those pages again instead of losing
 * them (reads from trace_pipe_raw consume: the kernel cannot give them twice).
 *
 * <dir>/<probe>/meta.json   the spec, load id, CPUs and page size of the load
 * <dir>/<probe>/cpuN        `slots` fixed slots of [16-byte header | page]; page seq s
 *                           lives in slot s % slots. The send window never holds more
 *                           than `slots` pages, so a slot is reused only after the
 *                           host acknowledged its page.
 *
 * Writes are one pwritev per batch on the main thread (tmpfs: a memory copy). The
 * directory must be RAM-backed: the frontend may not depend on the guest's disk.
 */
import fs from "node:fs";
import path from "node:path";
import { ring } from "@vesper/protocol";
import type { OutPage } from "./send-window.js";

const SLOT_MAGIC = 0x4c505356; // "VSPL" little-endian
const SLOT_HEADER = 16;

export interface SpoolMeta {
  spec: ring.ProbeSpec;
  loadId: bigint;
  instance: string;
  cpus: number;
  pageSize: number;
  slots: number;
}

/** One probe's spool found at start-up, with the pages it still holds per CPU (oldest first). */
export interface RecoveredSpool {
  readonly meta: SpoolMeta;
  readonly spool: ProbeSpool;
  readonly pages: ReadonlyMap<number, OutPage[]>;
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
    private readonly fds: number[],
  ) {}

  /** Starts the spool of a fresh load (replacing whatever an earlier load of the probe left). */
  static create(root: string, meta: SpoolMeta): ProbeSpool {
    const dir = path.join(root, meta.spec.name);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const fds: number[] = [];
    try {
      for (let cpu = 0; cpu < meta.cpus; cpu++) {
        const fd = fs.openSync(path.join(dir, `cpu${cpu}`), "w+", 0o600);
        fds.push(fd);
        fs.ftruncateSync(fd, meta.slots * (SLOT_HEADER + meta.pageSize));
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
      for (const fd of fds) fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    return new ProbeSpool(dir, meta, fds);
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
    const fds: number[] = [];
    const pages = new Map<number, OutPage[]>();
    const slotBytes = SLOT_HEADER + meta.pageSize;
    try {
      for (let cpu = 0; cpu < meta.cpus; cpu++) {
        const fd = fs.openSync(path.join(dir, `cpu${cpu}`), "r+");
        fds.push(fd);
        const all = Buffer.alloc(meta.slots * slotBytes);
        fs.readSync(fd, all, 0, all.length, 0);
        const found: OutPage[] = [];
        for (let i = 0; i < meta.slots; i++) {
          const h = i * slotBytes;
          if (all.readUInt32LE(h + 12) !== SLOT_MAGIC) continue;
          const seq = all.readBigUInt64LE(h);
          const len = all.readUInt32LE(h + 8);
          if (seq === 0n || len === 0 || len > meta.pageSize || seq % BigInt(meta.slots) !== BigInt(i)) continue;
          found.push({ seq, page: Buffer.from(all.subarray(h + SLOT_HEADER, h + SLOT_HEADER + len)) });
        }
        found.sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
        // The run of consecutive seqs that ends with the newest page: anything older
        // than a hole was acknowledged long ago (its slot simply was not reused yet).
        let start = found.length - 1;
        while (start > 0 && found[start - 1]!.seq === found[start]!.seq - 1n) start--;
        pages.set(cpu, start < 0 ? [] : found.slice(start));
      }
    } catch (err) {
      for (const fd of fds) fs.closeSync(fd);
      throw err;
    }
    return { meta, spool: new ProbeSpool(dir, meta, fds), pages };
  }

  /** Copies pages (consecutive seqs of one CPU) into their slots. */
  write(cpu: number, pages: readonly OutPage[]): void {
    const fd = this.fds[cpu];
    if (fd === undefined || pages.length === 0) return;
    const { slots, pageSize } = this.meta;
    const slotBytes = SLOT_HEADER + pageSize;
    let i = 0;
    while (i < pages.length) {
      // One pwritev per run of slots that does not wrap around the end of the file.
      const firstSlot = Number(pages[i]!.seq % BigInt(slots));
      const run = Math.min(pages.length - i, slots - firstSlot);
      const bufs: Buffer[] = [];
      for (let k = 0; k < run; k++) {
        const p = pages[i + k]!;
        const len = Math.min(p.page.length, pageSize);
        const h = Buffer.allocUnsafe(SLOT_HEADER);
        h.writeBigUInt64LE(p.seq, 0);
        h.writeUInt32LE(len, 8);
        h.writeUInt32LE(SLOT_MAGIC, 12);
        bufs.push(h, len === p.page.length ? p.page : p.page.subarray(0, len));
        if (len < pageSize) bufs.push(Buffer.alloc(pageSize - len));
      }
      fs.writevSync(fd, bufs, firstSlot * slotBytes);
      i += run;
    }
  }

  close(): void {
    for (const fd of this.fds.splice(0)) {
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
