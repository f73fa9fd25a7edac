/**
 * Hand-rolled encoder for the one hot message: GuestMessage{version, guest_id, seq,
 * data: ProbeData{probe, load_id, acked: CpuSeq{cpu, seq, events}, runs: PageRun{cpu,
 * first_seq, count, page_size, last_length, data}, ack_soon, skips: SeqSkip{cpu, from, to}}}.
 * It produces exactly the bytes
 * the generated encoder does (proto3: default values omitted, fields in number order;
 * checked by test/data-encoder.test.ts), but as parts: small header buffers with
 * each run's page bytes in between, untouched, so a byte-stream transport writes the
 * lot with one writev(2) and no copy. Under TCG, the generated encoder (BigInt ->
 * string -> varint, growing chunk lists, a copy of every page) cost milliseconds per page.
 */
import { FRAME_HEADER_BYTES, FRAME_MAGIC_0, FRAME_MAGIC_1, FRAME_VERSION, FrameKind } from "@vesper/protocol";

export interface CpuSeq {
  cpu: number;
  seq: number | bigint;
  /** The host's event count up to seq (proto3 optional: written when set, even as 0). */
  events?: bigint | undefined;
}

export interface SeqSkip {
  cpu: number;
  from: number | bigint;
  to: number | bigint;
}

/** ProbeData as the hot path builds it: runs of pages, plain-number sequence numbers. */
export interface DataMessage {
  probe: string;
  loadId: bigint;
  runs: readonly DataRun[];
  acked: readonly CpuSeq[];
  /** The window is filling: the host should ack without coalescing (ProbeData.ack_soon). */
  ackSoon?: boolean;
  /** After adopting a predecessor's load: seqs that will never come (ProbeData.skips). */
  skips?: readonly SeqSkip[];
}

export interface DataRun {
  cpu: number;
  firstSeq: number;
  count: number;
  pageSize: number;
  lastLength: number;
  data: Uint8Array;
}

function varintLen(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function bigVarintLen(v: bigint): number {
  if (v <= 0xffffffffn) return varintLen(Number(v));
  let n = 1;
  while (v >= 0x80n) {
    v >>= 7n;
    n++;
  }
  return n;
}

function anyVarintLen(v: number | bigint): number {
  return typeof v === "number" ? varintLen(v) : bigVarintLen(v);
}

/** Bytes of a varint field with its 1-byte tag, or 0 for a default (zero) value. */
function field(v: number | bigint): number {
  return v === 0 || v === 0n ? 0 : 1 + anyVarintLen(v);
}

class Writer {
  o = 0;
  constructor(readonly buf: Buffer) {}
  varint(v: number): void {
    const b = this.buf;
    while (v >= 0x80) {
      b[this.o++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    b[this.o++] = v;
  }
  bigVarint(v: bigint): void {
    if (v <= 0xffffffffn) return this.varint(Number(v));
    const b = this.buf;
    while (v >= 0x80n) {
      b[this.o++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    b[this.o++] = Number(v);
  }
  /** A varint field (tag byte + value), skipped when zero. */
  field(tag: number, v: number | bigint): void {
    if (v === 0 || v === 0n) return;
    this.buf[this.o++] = tag;
    if (typeof v === "number") this.varint(v);
    else this.bigVarint(v);
  }
  /** A length-delimited field's tag and length; the content follows. */
  len(tag: number, n: number): void {
    this.buf[this.o++] = tag;
    this.varint(n);
  }
  bytes(b: Buffer): void {
    this.o += b.copy(this.buf, this.o);
  }
  str(tag: number, s: string): void {
    const n = Buffer.byteLength(s);
    if (n === 0) return;
    this.len(tag, n);
    this.o += this.buf.write(s, this.o, "utf8");
  }
}

function runHeadLen(r: DataRun): number {
  return field(r.cpu) + field(r.firstSeq) + field(r.count) + field(r.pageSize) + field(r.lastLength);
}

function runLen(r: DataRun): number {
  return runHeadLen(r) + (r.data.length > 0 ? 1 + varintLen(r.data.length) + r.data.length : 0);
}

function cpuSeqLen(c: CpuSeq): number {
  return field(c.cpu) + field(c.seq) + (c.events === undefined ? 0 : 1 + bigVarintLen(c.events));
}

function skipLen(k: SeqSkip): number {
  return field(k.cpu) + field(k.from) + field(k.to);
}

/**
 * The fields that are the same in every message of a frontend (version, guest_id) and of a
 * load (probe, load_id), encoded once: under the interpreter, their strings and BigInt
 * varints were most of the encoder's time.
 */
let guestCache: { version: number; guestId: string; bytes: Buffer } | undefined;
const probeCache = new Map<string, { loadId: bigint; bytes: Buffer }>();
const MAX_CACHED_PROBES = 256;

function encodeFields(text: string, put: (w: Writer) => void): Buffer {
  // Room for the string, two tags, a length and a 64-bit varint.
  const w = new Writer(Buffer.allocUnsafe(Buffer.byteLength(text) + 24));
  put(w);
  return Buffer.from(w.buf.subarray(0, w.o));
}

function guestFields(version: number, guestId: string): Buffer {
  if (guestCache?.version === version && guestCache.guestId === guestId) return guestCache.bytes;
  const bytes = encodeFields(guestId, (w) => {
    w.field(0x08, version); // GuestMessage.version = 1
    w.str(0x12, guestId); // GuestMessage.guest_id = 2
  });
  guestCache = { version, guestId, bytes };
  return bytes;
}

function probeFields(probe: string, loadId: bigint): Buffer {
  const hit = probeCache.get(probe);
  if (hit !== undefined && hit.loadId === loadId) return hit.bytes;
  const bytes = encodeFields(probe, (w) => {
    w.str(0x0a, probe); // ProbeData.probe = 1
    w.field(0x18, loadId); // ProbeData.load_id = 3
  });
  if (probeCache.size >= MAX_CACHED_PROBES) probeCache.clear();
  probeCache.set(probe, { loadId, bytes });
  return bytes;
}

/**
 * Encodes the data message as parts whose concatenation is the message (with
 * `framed`, preceded by its frame header of kind Data; the caller checks the size limit).
 */
export function encodeDataMessage(version: number, guestId: string, seq: bigint, msg: DataMessage, framed = false): Buffer[] {
  const { acked, runs } = msg;
  const ackSoon = msg.ackSoon === true;
  const skips = msg.skips ?? [];
  const head = guestFields(version, guestId);
  const probeHead = probeFields(msg.probe, msg.loadId);
  const ackLens = acked.map(cpuSeqLen);
  const runLens = runs.map(runLen);
  const skipLens = skips.map(skipLen);
  let dataLen = probeHead.length;
  for (const l of ackLens) dataLen += 1 + varintLen(l) + l;
  for (const l of runLens) dataLen += 1 + varintLen(l) + l;
  if (ackSoon) dataLen += 2;
  for (const l of skipLens) dataLen += 1 + varintLen(l) + l;
  const total = head.length + field(seq) + 1 + varintLen(dataLen) + dataLen;

  // Everything but the run data goes into one buffer, cut into the parts between the runs.
  let headBytes = (framed ? FRAME_HEADER_BYTES : 0) + total;
  for (const r of runs) headBytes -= r.data.length;
  const w = new Writer(Buffer.allocUnsafe(headBytes));
  if (framed) {
    w.buf[0] = FRAME_MAGIC_0;
    w.buf[1] = FRAME_MAGIC_1;
    w.buf[2] = FRAME_VERSION;
    w.buf[3] = FrameKind.Data;
    w.buf.writeUInt32BE(total, 4);
    w.o = FRAME_HEADER_BYTES;
  }
  w.bytes(head); // version, guest_id
  w.field(0x18, seq);
  w.len(0x6a, dataLen); // GuestMessage.data = 13
  w.bytes(probeHead); // ProbeData.probe = 1, load_id = 3
  acked.forEach((c, i) => {
    w.len(0x22, ackLens[i]!); // ProbeData.acked = 4
    w.field(0x08, c.cpu);
    w.field(0x10, c.seq);
    if (c.events !== undefined) {
      w.buf[w.o++] = 0x18; // CpuSeq.events = 3, optional: present even when 0
      w.bigVarint(c.events);
    }
  });
  const parts: Buffer[] = [];
  let from = 0;
  runs.forEach((r, i) => {
    w.len(0x2a, runLens[i]!); // ProbeData.runs = 5
    w.field(0x08, r.cpu);
    w.field(0x10, r.firstSeq);
    w.field(0x18, r.count);
    w.field(0x20, r.pageSize);
    w.field(0x28, r.lastLength);
    if (r.data.length === 0) return;
    w.len(0x32, r.data.length); // PageRun.data = 6
    parts.push(w.buf.subarray(from, w.o));
    parts.push(Buffer.isBuffer(r.data) ? r.data : Buffer.from(r.data.buffer, r.data.byteOffset, r.data.length));
    from = w.o;
  });
  if (ackSoon) w.field(0x30, 1); // ProbeData.ack_soon = 6
  skips.forEach((k, i) => {
    w.len(0x3a, skipLens[i]!); // ProbeData.skips = 7
    w.field(0x08, k.cpu);
    w.field(0x10, k.from);
    w.field(0x18, k.to);
  });
  if (w.o !== headBytes) throw new Error(`data encoder size mismatch (${w.o} != ${headBytes})`);
  if (from < w.o || parts.length === 0) parts.push(w.buf.subarray(from, w.o));
  return parts;
}
