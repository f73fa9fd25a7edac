/**
 * Field readers, compiled once per event format. A reader is plain data (an opcode plus
 * offsets); `readField` is one switch, so decoding allocates no closures per event.
 *
 * Values (FieldValue):
 *   - integers of 1/2/4/8 bytes → bigint, sign-extended when the format says signed:1;
 *   - `char x[N]`, `__data_loc char[]`, `__rel_loc char[]` → string (up to the first NUL,
 *     ASCII fast path, otherwise UTF-8 with U+FFFD for invalid bytes);
 *   - fixed arrays of non-char elements (`unsigned long args[6]`), `__data_loc`/`__rel_loc`
 *     arrays of non-char elements and any type we do not understand → Uint8Array holding a
 *     COPY of the raw little-endian bytes (never a view into the page, which the caller may reuse).
 */
import type { FieldFormat } from "./format-parser.js";

export type FieldValue = bigint | string | Uint8Array;

export const OP_U8 = 0;
export const OP_S8 = 1;
export const OP_U16 = 2;
export const OP_S16 = 3;
export const OP_U32 = 4;
export const OP_S32 = 5;
export const OP_U64 = 6;
export const OP_S64 = 7;
/** char x[N]: NUL-terminated string inside the field. */
export const OP_CHARS = 8;
/** char x[] with size 0 (flexible): NUL-terminated string up to the record end. */
export const OP_CHARS_FLEX = 9;
export const OP_DATA_LOC_STR = 10;
export const OP_REL_LOC_STR = 11;
export const OP_DATA_LOC_BYTES = 12;
export const OP_REL_LOC_BYTES = 13;
/** Raw copy of the field's bytes. */
export const OP_BYTES = 14;

export interface FieldReader {
  readonly name: string;
  readonly op: number;
  readonly offset: number;
  readonly size: number;
}

export function compileField(f: FieldFormat): FieldReader {
  return { name: f.name, op: opFor(f), offset: f.offset, size: f.size };
}

function opFor(f: FieldFormat): number {
  switch (f.kind) {
    case "int":
      switch (f.size) {
        case 1: return f.signed ? OP_S8 : OP_U8;
        case 2: return f.signed ? OP_S16 : OP_U16;
        case 4: return f.signed ? OP_S32 : OP_U32;
        case 8: return f.signed ? OP_S64 : OP_U64;
        default: return OP_BYTES;
      }
    case "char_array":
      return f.size === 0 ? OP_CHARS_FLEX : OP_CHARS;
    case "data_loc_string":
      return OP_DATA_LOC_STR;
    case "rel_loc_string":
      return OP_REL_LOC_STR;
    case "data_loc_array":
      return OP_DATA_LOC_BYTES;
    case "rel_loc_array":
      return OP_REL_LOC_BYTES;
    default:
      return OP_BYTES;
  }
}

/** True for readers whose value is a string (used to pick the placeholder on a bad location). */
export function isStringOp(op: number): boolean {
  return op === OP_CHARS || op === OP_CHARS_FLEX || op === OP_DATA_LOC_STR || op === OP_REL_LOC_STR;
}

/**
 * Reads one field of the record at `rec` (byte offset into `bytes`) of `recLen` bytes.
 * The caller guarantees the fixed part (offset + size) lies inside the record.
 * Returns undefined when a __data_loc/__rel_loc descriptor points outside the record.
 */
export function readField(dv: DataView, bytes: Uint8Array, rec: number, recLen: number, r: FieldReader): FieldValue | undefined {
  const at = rec + r.offset;
  switch (r.op) {
    case OP_U8: return BigInt(bytes[at]!);
    case OP_S8: return BigInt(dv.getInt8(at));
    case OP_U16: return BigInt(dv.getUint16(at, true));
    case OP_S16: return BigInt(dv.getInt16(at, true));
    case OP_U32: return BigInt(dv.getUint32(at, true));
    case OP_S32: return BigInt(dv.getInt32(at, true));
    case OP_U64: return dv.getBigUint64(at, true);
    case OP_S64: return dv.getBigInt64(at, true);
    case OP_CHARS: return cString(bytes, at, at + r.size);
    case OP_CHARS_FLEX: return cString(bytes, at, rec + recLen);
    case OP_DATA_LOC_STR:
    case OP_REL_LOC_STR:
    case OP_DATA_LOC_BYTES:
    case OP_REL_LOC_BYTES: {
      const desc = dv.getUint32(at, true);
      const len = desc >>> 16;
      // __data_loc: offset from the record start; __rel_loc: from the end of this field.
      const off = (desc & 0xffff) + (r.op === OP_REL_LOC_STR || r.op === OP_REL_LOC_BYTES ? r.offset + r.size : 0);
      if (off + len > recLen) return undefined;
      const s = rec + off;
      if (r.op === OP_DATA_LOC_STR || r.op === OP_REL_LOC_STR) return cString(bytes, s, s + len);
      return copyBytes(bytes, s, s + len);
    }
    default:
      return copyBytes(bytes, at, at + r.size);
  }
}

/** A plain Uint8Array copy (Buffer#slice would return a view). */
function copyBytes(bytes: Uint8Array, start: number, end: number): Uint8Array {
  const out = new Uint8Array(end - start);
  out.set(bytes.subarray(start, end));
  return out;
}

const utf8 = new TextDecoder("utf-8", { fatal: false });

/** String from bytes[start, end) up to the first NUL. */
export function cString(bytes: Uint8Array, start: number, end: number): string {
  let i = start;
  let ascii = true;
  for (; i < end; i++) {
    const c = bytes[i]!;
    if (c === 0) break;
    if (c >= 0x80) ascii = false;
  }
  const n = i - start;
  if (n === 0) return "";
  if (!ascii) return utf8.decode(bytes.subarray(start, i));
  if (n <= 24) {
    let s = "";
    for (let j = start; j < i; j++) s += String.fromCharCode(bytes[j]!);
    return s;
  }
  // Chunked to stay well below argument-count limits.
  let s = "";
  for (let j = start; j < i; j += 4096) {
    s += String.fromCharCode.apply(null, bytes.subarray(j, Math.min(i, j + 4096)) as unknown as number[]);
  }
  return s;
}
