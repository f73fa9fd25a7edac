/**
 * Test helper: encodes synthetic ftrace ring-buffer pages (the writer side of
 * kernel/trace/ring_buffer.c, little-endian, 64-bit layout by default) and event records
 * laid out per a parsed format.
 */
import type { EventFormatDesc } from "../../src/ftrace/index.js";

export type RecordValue = bigint | string | Uint8Array;

export interface PageOptions {
  pageSize?: number;
  timestamp: bigint;
  dataOffset?: number;
  commitSize?: 4 | 8;
}

const SMALL_MAX = 28 * 4;

export class PageBuilder {
  readonly pageSize: number;
  readonly dataOffset: number;
  readonly commitSize: 4 | 8;
  readonly timestamp: bigint;
  private readonly buf: Buffer;
  private pos: number;

  constructor(opts: PageOptions) {
    this.pageSize = opts.pageSize ?? 4096;
    this.dataOffset = opts.dataOffset ?? 16;
    this.commitSize = opts.commitSize ?? 8;
    this.timestamp = opts.timestamp;
    this.buf = Buffer.alloc(this.pageSize);
    this.pos = this.dataOffset;
  }

  get used(): number {
    return this.pos - this.dataOffset;
  }
  get free(): number {
    return this.pageSize - this.pos;
  }

  private header(typeLen: number, delta: number): void {
    if (delta < 0 || delta >= 1 << 27) throw new Error(`delta ${delta} does not fit 27 bits`);
    this.buf.writeUInt32LE(((delta << 5) | typeLen) >>> 0, this.pos);
    this.pos += 4;
  }

  /** Adds a data record; small ones use type_len 1..28, big ones (or forceLong) type_len 0. */
  event(record: Uint8Array, delta = 0, forceLong = false): this {
    const aligned = Math.max(4, (record.length + 3) & ~3);
    if (aligned <= SMALL_MAX && !forceLong) {
      this.header(aligned / 4, delta);
    } else {
      this.header(0, delta);
      this.buf.writeUInt32LE(aligned + 4, this.pos); // array[0] counts itself
      this.pos += 4;
    }
    Buffer.from(record).copy(this.buf, this.pos);
    this.pos += aligned;
    return this;
  }

  /** type_len 30: adds `delta` (up to 59 bits) to the running time. */
  timeExtend(delta: bigint): this {
    this.header(30, Number(delta & 0x7ffffffn));
    this.buf.writeUInt32LE(Number((delta >> 27n) & 0xffffffffn), this.pos);
    this.pos += 4;
    return this;
  }

  /** type_len 31: absolute time; only the low 59 bits are stored, as the kernel does. */
  absolute(ts: bigint): this {
    const low = ts & ((1n << 59n) - 1n);
    this.header(31, Number(low & 0x7ffffffn));
    this.buf.writeUInt32LE(Number((low >> 27n) & 0xffffffffn), this.pos);
    this.pos += 4;
    return this;
  }

  /**
   * type_len 29 with a length: a discarded event. The whole thing is 4 + `len` bytes
   * (array[0] = len, as rb_event_discard leaves it); `len` ≥ 4, a multiple of 4.
   */
  discarded(len: number, delta = 1): this {
    const start = this.pos;
    this.header(29, delta);
    this.buf.writeUInt32LE(len, this.pos);
    this.pos = start + 4 + len;
    return this;
  }

  /** Raw 32-bit words, for malformed input. */
  raw(...words: number[]): this {
    for (const w of words) {
      this.buf.writeUInt32LE(w >>> 0, this.pos);
      this.pos += 4;
    }
    return this;
  }

  build(opts: { missed?: number | "unknown"; commit?: number; nullPadding?: boolean } = {}): Buffer {
    const commit = opts.commit ?? this.pos - this.dataOffset;
    if (opts.nullPadding && this.pos + 4 <= this.pageSize) this.buf.writeUInt32LE(29, this.pos); // padding, delta 0
    let word = BigInt(commit);
    if (opts.missed !== undefined) {
      word |= 1n << 31n;
      if (opts.missed !== "unknown") {
        word |= 1n << 30n;
        const at = this.dataOffset + commit;
        if (this.commitSize === 8) this.buf.writeBigUInt64LE(BigInt(opts.missed), at);
        else this.buf.writeUInt32LE(opts.missed, at);
      }
    }
    this.buf.writeBigUInt64LE(this.timestamp, 0);
    if (this.commitSize === 8) this.buf.writeBigUInt64LE(word, 8);
    else this.buf.writeUInt32LE(Number(word), 8);
    return Buffer.from(this.buf);
  }
}

/**
 * Lays out one record for `fmt`: fixed fields at their offsets, dynamic (__data_loc /
 * __rel_loc) payloads appended after the fixed part. Strings get a NUL terminator.
 */
export function encodeRecord(fmt: EventFormatDesc, pid: number, values: Record<string, RecordValue>): Buffer {
  const fixed = Buffer.alloc(fmt.size);
  const dyn: Buffer[] = [];
  let dynOff = fmt.size;
  for (const c of fmt.common) {
    if (c.name === "common_type") writeInt(fixed, c.offset, c.size, BigInt(fmt.id));
    else if (c.name === "common_pid") writeInt(fixed, c.offset, c.size, BigInt(pid));
  }
  for (const f of fmt.fields) {
    const v = values[f.name];
    if (v === undefined) continue;
    switch (f.kind) {
      case "int":
        writeInt(fixed, f.offset, f.size, v as bigint);
        break;
      case "char_array": {
        const b = Buffer.from(v as string, "utf8");
        b.copy(fixed, f.offset, 0, Math.min(b.length, f.size));
        break;
      }
      case "data_loc_string":
      case "rel_loc_string":
      case "data_loc_array":
      case "rel_loc_array": {
        const payload = typeof v === "string" ? Buffer.concat([Buffer.from(v, "utf8"), Buffer.alloc(1)]) : Buffer.from(v as Uint8Array);
        const base = f.kind.startsWith("rel") ? f.offset + f.size : 0;
        fixed.writeUInt32LE(((payload.length << 16) | (dynOff - base)) >>> 0, f.offset);
        dyn.push(payload);
        dynOff += payload.length;
        break;
      }
      default:
        Buffer.from(v as Uint8Array).copy(fixed, f.offset, 0, f.size);
    }
  }
  return Buffer.concat([fixed, ...dyn]);
}

function writeInt(b: Buffer, off: number, size: number, v: bigint): void {
  const u = BigInt.asUintN(size * 8, v);
  switch (size) {
    case 1: b.writeUInt8(Number(u), off); break;
    case 2: b.writeUInt16LE(Number(u), off); break;
    case 4: b.writeUInt32LE(Number(u), off); break;
    case 8: b.writeBigUInt64LE(u, off); break;
    default: throw new Error(`int size ${size}`);
  }
}
