/**
 * Hand-rolled encoder for the one hot message: GuestMessage{version, guest_id, seq,
 * data: ProbeData{probe, pages: RawPage{cpu, seq, page}, load_id, acked: CpuSeq{cpu, seq}}}. Produces exactly the bytes
 * the generated encoder does (proto3: default values omitted, fields in number
 * order; checked by test/data-encoder.test.ts) with one allocation and one copy per
 * page, optionally leaving room for the 8-byte frame header in front so a
 * byte-stream transport sends it without another copy. Under TCG the generated
 * encoder (BigInt -> string -> varint, growing chunk lists) cost milliseconds per page.
 */
import { FRAME_HEADER_BYTES, FRAME_MAGIC_0, FRAME_MAGIC_1, FRAME_VERSION, FrameKind } from "@vesper/protocol";

export interface DataPage {
  cpu: number;
  seq: bigint;
  page: Uint8Array;
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

function putVarint(buf: Buffer, off: number, v: number): number {
  while (v >= 0x80) {
    buf[off++] = (v % 128) | 0x80;
    v = Math.floor(v / 128);
  }
  buf[off++] = v;
  return off;
}

function putBigVarint(buf: Buffer, off: number, v: bigint): number {
  if (v <= 0xffffffffn) return putVarint(buf, off, Number(v));
  while (v >= 0x80n) {
    buf[off++] = Number(v & 0x7fn) | 0x80;
    v >>= 7n;
  }
  buf[off++] = Number(v);
  return off;
}

export interface CpuSeq {
  cpu: number;
  seq: bigint;
}

function cpuSeqLen(c: CpuSeq): number {
  let n = 0;
  if (c.cpu !== 0) n += 1 + varintLen(c.cpu);
  if (c.seq !== 0n) n += 1 + bigVarintLen(c.seq);
  return n;
}

function pageLen(p: DataPage): number {
  let n = 0;
  if (p.cpu !== 0) n += 1 + varintLen(p.cpu);
  if (p.seq !== 0n) n += 1 + bigVarintLen(p.seq);
  if (p.page.length !== 0) n += 1 + varintLen(p.page.length) + p.page.length;
  return n;
}

/**
 * Encodes the data message. With `framed`, the result starts with a complete frame
 * header of kind Data (the caller checks the size limit).
 */
export function encodeDataMessage(
  version: number,
  guestId: string,
  seq: bigint,
  probe: string,
  pages: readonly DataPage[],
  framed = false,
  loadId = 0n,
  acked: readonly CpuSeq[] = [],
): Buffer {
  const probeBytes = Buffer.byteLength(probe);
  const guestBytes = Buffer.byteLength(guestId);
  let dataLen = probeBytes !== 0 ? 1 + varintLen(probeBytes) + probeBytes : 0;
  const pageLens = pages.map(pageLen);
  for (const l of pageLens) dataLen += 1 + varintLen(l) + l;
  if (loadId !== 0n) dataLen += 1 + bigVarintLen(loadId);
  const ackLens = acked.map(cpuSeqLen);
  for (const l of ackLens) dataLen += 1 + varintLen(l) + l;
  let total = 0;
  if (version !== 0) total += 1 + varintLen(version);
  if (guestBytes !== 0) total += 1 + varintLen(guestBytes) + guestBytes;
  if (seq !== 0n) total += 1 + bigVarintLen(seq);
  total += 1 + varintLen(dataLen) + dataLen; // field 13, wire type 2: tag 0x6a
  const head = framed ? FRAME_HEADER_BYTES : 0;
  const out = Buffer.allocUnsafe(head + total);
  let o = head;
  if (framed) {
    out[0] = FRAME_MAGIC_0;
    out[1] = FRAME_MAGIC_1;
    out[2] = FRAME_VERSION;
    out[3] = FrameKind.Data;
    out.writeUInt32BE(total, 4);
  }
  if (version !== 0) {
    out[o++] = 0x08;
    o = putVarint(out, o, version);
  }
  if (guestBytes !== 0) {
    out[o++] = 0x12;
    o = putVarint(out, o, guestBytes);
    o += out.write(guestId, o, "utf8");
  }
  if (seq !== 0n) {
    out[o++] = 0x18;
    o = putBigVarint(out, o, seq);
  }
  out[o++] = 0x6a;
  o = putVarint(out, o, dataLen);
  if (probeBytes !== 0) {
    out[o++] = 0x0a;
    o = putVarint(out, o, probeBytes);
    o += out.write(probe, o, "utf8");
  }
  pages.forEach((p, i) => {
    out[o++] = 0x12;
    o = putVarint(out, o, pageLens[i]!);
    if (p.cpu !== 0) {
      out[o++] = 0x08;
      o = putVarint(out, o, p.cpu);
    }
    if (p.seq !== 0n) {
      out[o++] = 0x10;
      o = putBigVarint(out, o, p.seq);
    }
    if (p.page.length !== 0) {
      out[o++] = 0x1a;
      o = putVarint(out, o, p.page.length);
      out.set(p.page, o);
      o += p.page.length;
    }
  });
  if (loadId !== 0n) {
    out[o++] = 0x18;
    o = putBigVarint(out, o, loadId);
  }
  acked.forEach((c, i) => {
    out[o++] = 0x22;
    o = putVarint(out, o, ackLens[i]!);
    if (c.cpu !== 0) {
      out[o++] = 0x08;
      o = putVarint(out, o, c.cpu);
    }
    if (c.seq !== 0n) {
      out[o++] = 0x10;
      o = putBigVarint(out, o, c.seq);
    }
  });
  if (o !== out.length) throw new Error(`data encoder size mismatch (${o} != ${out.length})`);
  return out;
}
