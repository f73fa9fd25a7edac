/**
 * Decoder for raw ftrace ring-buffer pages (`per_cpu/cpuN/trace_pipe_raw`), following
 * kernel/trace/ring_buffer.c. Little-endian guests only (x86_64, arm64).
 *
 * Page: [timestamp u64][commit local_t][data ...] at the offsets from header_page.
 *   commit low 27 bits = bytes of data; bit 31 = events were lost before this page;
 *   bit 30 = their count is stored as an unsigned long at data[commit].
 *
 * Event header (u32): type_len = bits 0..4, time_delta = bits 5..31.
 *   0       data length in array[0] (which counts itself): record = array[1 .. array[0]-4]
 *   1..28   record of type_len*4 bytes at array[0]
 *   29      padding: time_delta 0 = the rest of the page is empty; otherwise array[0]+4 bytes
 *           long (a discarded event). Its delta counts unless it is 1 (the kernel's marker for
 *           "no time"), as in the kernel's own check of a page.
 *   30      time extend: delta = array[0] << 27 | time_delta, added to the running time
 *   31      absolute time stamp, same encoding; it lacks the 5 top bits, which are taken
 *           from the running time (rb_fix_abs_ts)
 *
 * Nothing here trusts the page: every length is checked against the committed data before
 * use, each loop step advances by at least 4 bytes, and problems are reported in
 * DecodedPage.errors while decoding what can be decoded. Only a page shorter than its own
 * header throws (FrameError, MALFORMED).
 */
import { ErrorCode, FrameError } from "@vesper/protocol";
import type { EventFormatDesc, FieldFormat } from "./format-parser.js";
import type { HeaderPageLayout } from "./header-page.js";
import { compileField, isStringOp, readField, type FieldReader, type FieldValue } from "./field-reader.js";
import { MAX_OFFSET } from "./limits.js";
import { addWaitStatusFields } from "./wait-status.js";

export interface DecodedEvent {
  id: number;
  system: string;
  name: string;
  /** Absolute time in the guest's trace clock (ns for the default "local" clock). */
  ts: bigint;
  /** common_pid (the task that was running: a thread id). */
  pid: number;
  /** The event's own fields (not the common_* ones), plus derived wait-status fields if configured. */
  fields: Record<string, FieldValue>;
}

export interface DecodedPage {
  /** The page header's timestamp. */
  timestamp: bigint;
  events: DecodedEvent[];
  /** 0 = none lost; >0 = that many events were lost before this page; -1 = lost, count unknown. */
  missedEvents: number;
  /** Per-record problems (unknown event id, record past the committed data, ...). */
  errors: string[];
}

/** What scan() finds in a page: the checks of decode() without building any event. */
export interface PageScan {
  /** Records that are events of a known type, long enough for their format. */
  events: number;
  /** 0 = none lost; >0 = that many events were lost before this page; -1 = lost, count unknown. */
  missedEvents: number;
  /** Records that are not (unknown event id, too short, running past the committed data). */
  bad: number;
  /** The first problem, for logs. */
  firstError: string | undefined;
}

export interface PageDecoderOptions {
  /** "system/name" → name of a field holding a wait(2) status; adds exit_code, signal, core_dumped. */
  waitStatusFields?: Map<string, string>;
}

interface Plan {
  readonly id: number;
  readonly system: string;
  readonly name: string;
  readonly minSize: number;
  readonly readers: readonly FieldReader[];
  /** Offset of a 4-byte common_pid, or -1. */
  readonly pidOffset: number;
  readonly waitField: string | undefined;
}

const TYPE_PADDING = 29;
const TYPE_TIME_EXTEND = 30;
const TYPE_TIME_STAMP = 31;
const COMMIT_MASK = (1 << 27) - 1;

/** Little-endian u32 at any offset (the caller has checked the bounds). */
const le32 = (b: Uint8Array, at: number): number => (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
const MISSED_EVENTS = 0x80000000;
const MISSED_STORED = 0x40000000;
const TS_MSB = 0xf8n << 56n;
const TS_MSB_CARRY = 1n << 59n;

export class PageDecoder {
  /** Configuration problems that did not prevent decoding (e.g. a wait-status field that does not exist). */
  readonly warnings: string[] = [];
  private readonly plans = new Map<number, Plan>();
  /** minSize by event id for scan(): -1 = unknown id (ids above its length: see minSizeOf). */
  private minSizes = new Int32Array(0);
  private views: { buffer: ArrayBufferLike; u32: Uint32Array; u16: Uint16Array } | undefined;
  private readonly typeOffset: number;
  private readonly typeSize: number;
  private readonly layout: HeaderPageLayout;

  constructor(formats: readonly EventFormatDesc[], header: HeaderPageLayout, opts?: PageDecoderOptions) {
    this.layout = checkLayout(header);

    // Where the event id (common_type) lives; every format must agree.
    let typeField: FieldFormat | undefined;
    for (const f of formats) {
      const t = f.common.find((c) => c.name === "common_type");
      if (!t) continue;
      checkField(t, f);
      if (t.size !== 1 && t.size !== 2 && t.size !== 4) throw bad(`${f.system}/${f.name}: common_type has size ${t.size}`);
      if (typeField && (typeField.offset !== t.offset || typeField.size !== t.size)) {
        throw bad(`${f.system}/${f.name}: common_type at ${t.offset}/${t.size}, other formats have ${typeField.offset}/${typeField.size}`);
      }
      typeField ??= t;
    }
    this.typeOffset = typeField?.offset ?? 0;
    this.typeSize = typeField?.size ?? 2;

    const wait = opts?.waitStatusFields ?? new Map<string, string>();
    const usedWait = new Set<string>();
    for (const f of formats) {
      if (this.plans.has(f.id)) throw bad(`duplicate event id ${f.id} (${f.system}/${f.name})`);
      let minSize = this.typeOffset + this.typeSize;
      for (const c of f.common) minSize = Math.max(minSize, checkField(c, f));
      for (const c of f.fields) minSize = Math.max(minSize, checkField(c, f));
      const pid = f.common.find((c) => c.name === "common_pid");
      const key = `${f.system}/${f.name}`;
      let waitField = wait.get(key);
      if (waitField !== undefined) {
        usedWait.add(key);
        const src = f.fields.find((x) => x.name === waitField);
        if (!src || src.kind !== "int") {
          this.warnings.push(`${key}: wait-status field "${waitField}" is ${src ? `a ${src.kind}` : "missing"}; not derived`);
          waitField = undefined;
        }
      }
      this.plans.set(f.id, {
        id: f.id,
        system: f.system,
        name: f.name,
        minSize,
        readers: f.fields.map(compileField),
        pidOffset: pid && pid.size === 4 ? pid.offset : -1,
        waitField,
      });
    }
    for (const key of wait.keys()) {
      if (!usedWait.has(key)) this.warnings.push(`${key}: wait-status configured but no such event format`);
    }
    // A dense table for the hot path when ids are small (they are: a few thousand at most).
    const maxId = Math.max(-1, ...this.plans.keys());
    if (maxId < 1 << 16) {
      // Every 16-bit id has a slot, so the hot loop needs no range check (256 KiB per decoder).
      this.minSizes = new Int32Array(1 << 16).fill(-1);
      for (const [id, plan] of this.plans) this.minSizes[id] = plan.minSize;
    }
  }

  private minSizeOf(id: number): number {
    if (id < this.minSizes.length) return this.minSizes[id]!;
    return this.plans.get(id)?.minSize ?? -1;
  }

  /**
   * Checks every record of a page as decode() does (header, length, bounds, event id,
   * size) and counts them, building nothing: the probe-listener's pass over bulk pages,
   * which are stored as they are and decoded by whoever reads them. Never throws for a
   * page at least as long as its header (else FrameError, like decode).
   */
  scan(page: Uint8Array): PageScan {
    const { commitOffset, commitSize, dataOffset } = this.layout;
    const pageLen = page.length;
    if (pageLen < dataOffset) throw bad(`page of ${pageLen} bytes is shorter than its ${dataOffset}-byte header`);
    // Records are 4-byte aligned within the page; aligned typed-array views make the walk a
    // few instructions per record (pages from the network usually sit at aligned offsets).
    if ((page.byteOffset & 3) !== 0 || (dataOffset & 3) !== 0 || (commitOffset & 3) !== 0 || (this.typeOffset & 1) !== 0) {
      page = Uint8Array.prototype.slice.call(page);
    }
    // Views over the page's whole buffer, kept while pages come from it (the pages of a run
    // share one): making two views cost more than walking a page's records.
    const { u32, u16 } = this.viewsOf(page.buffer);
    const base = page.byteOffset >>> 2; // the page's first word in u32
    const commitWord = u32[base + (commitOffset >>> 2)]!;
    const commit = commitWord & COMMIT_MASK;
    const r: PageScan = { events: 0, missedEvents: 0, bad: 0, firstError: undefined };
    if (commitWord & MISSED_EVENTS) {
      r.missedEvents = -1;
      if (commitWord & MISSED_STORED) {
        const at = dataOffset + commit;
        if (at + commitSize <= pageLen) {
          // A real commit is 4-aligned; a forged one need not be, so read bytes, not words.
          const lo = le32(page, at);
          const hi = commitSize === 8 ? le32(page, at + 4) : 0;
          r.missedEvents = hi >= 1 << 21 ? Number.MAX_SAFE_INTEGER : hi * 2 ** 32 + lo;
        } else scanProblem(r, `missed-events count at data offset ${commit} lies past the page end`);
      }
    }
    let end = dataOffset + commit;
    if (end > pageLen) {
      scanProblem(r, `commit of ${commit} bytes exceeds the ${pageLen - dataOffset} data bytes of the page`);
      end = pageLen;
    }
    if (this.typeSize !== 2) return this.scanSlow(page, r);
    const typeHalf = this.typeOffset >>> 1; // in 16-bit words from the record start
    const endW = base + (end >>> 2); // in 32-bit words, like every index below
    const firstW = base + (dataOffset >>> 2);
    if (this.minSizes.length === 1 << 16) {
      // The hot path: every record in one tight loop; a problem stops it and the slow walk
      // below (same checks) says what it was.
      const got = countRecords(u32, u16, this.minSizes, firstW, endW, typeHalf);
      if (got >= 0) {
        r.events = got;
        return r;
      }
    }
    const dense = this.minSizes;
    const endB = page.byteOffset + end; // the committed data's end in the buffer, in bytes
    const at = (w: number): number => (w - firstW) * 4; // a word's offset in the page's data, for messages
    let w = firstW;
    let events = 0;
    let problem = "";
    while (w < endW) {
      const hdr = u32[w]!;
      const typeLen = hdr & 31;
      let recW: number; // record start, in words
      let recLen: number;
      if (typeLen !== 0 && typeLen <= 28) {
        recW = w + 1;
        recLen = typeLen << 2;
        w = recW + typeLen;
        if (w > endW) {
          problem = `record at ${at(recW - 1)}: ${recLen} bytes run past the committed data`;
          break;
        }
      } else if (typeLen === 0) {
        if (w + 2 > endW) {
          problem = `record at ${at(w)}: length word past the committed data`;
          break;
        }
        const len = u32[w + 1]!;
        if (len < 4 || len > endB - w * 4 - 4 || (len & 3) !== 0) {
          problem = `record at ${at(w)}: length ${len} invalid or past the committed data`;
          break;
        }
        recW = w + 2;
        recLen = len - 4;
        w += (len >>> 2) + 1;
      } else {
        if (typeLen === TYPE_PADDING && hdr >>> 5 === 0) break; // the rest of the page is padding
        if (w + 2 > endW) {
          problem = `record at ${at(w)}: type ${typeLen} header runs past the committed data`;
          break;
        }
        if (typeLen === TYPE_PADDING) {
          const word = u32[w + 1]!;
          if (word < 4 || word > endB - w * 4 - 4 || (word & 3) !== 0) {
            problem = `padding at ${at(w)}: length ${word} invalid or past the committed data`;
            break;
          }
          w += (word >>> 2) + 1;
        } else w += 2; // time extend / absolute time stamp
        continue;
      }
      const id = u16[(recW << 1) + typeHalf]!;
      const min = id < dense.length ? dense[id]! : this.minSizeOf(id);
      if (min >= 0 && recLen >= min) events++;
      else scanProblem(r, min < 0 ? `record at ${at(recW)}: unknown event id ${id}` : `record at ${at(recW)}: event id ${id} needs ${min} bytes, has ${recLen}`);
    }
    if (problem !== "") scanProblem(r, problem);
    r.events = events;
    return r;
  }

  /** Word and half-word views over a whole buffer, reused while pages come from the same one. */
  private viewsOf(buffer: ArrayBufferLike): { u32: Uint32Array; u16: Uint16Array } {
    const v = this.views;
    if (v !== undefined && v.buffer === buffer) return v;
    const words = Math.floor(buffer.byteLength / 4);
    this.views = { buffer, u32: new Uint32Array(buffer, 0, words), u16: new Uint16Array(buffer, 0, words * 2) };
    return this.views;
  }

  /** scan() for event ids that are not 16 bits wide (no kernel today): byte reads. */
  private scanSlow(page: Uint8Array, r: PageScan): PageScan {
    const d = this.decodeChecked(page);
    r.events = d.events.length;
    r.bad += d.errors.length;
    r.firstError ??= d.errors[0];
    return r;
  }

  decode(page: Uint8Array): DecodedPage {
    try {
      return this.decodeChecked(page);
    } catch (err) {
      if (err instanceof FrameError) throw err;
      // Unreachable by design; keeps the "only FrameError" contract if a bug slips through.
      const msg = err instanceof Error ? err.message : String(err);
      throw new FrameError(ErrorCode.Internal, `ftrace page decoder failure: ${msg}`, { cause: err });
    }
  }

  private decodeChecked(page: Uint8Array): DecodedPage {
    if (!(page instanceof Uint8Array)) throw bad("page is not a Uint8Array");
    const { timestampOffset, commitOffset, commitSize, dataOffset } = this.layout;
    const pageLen = page.length;
    if (pageLen < dataOffset) throw bad(`page of ${pageLen} bytes is shorter than its ${dataOffset}-byte header`);
    const dv = new DataView(page.buffer, page.byteOffset, pageLen);
    const timestamp = dv.getBigUint64(timestampOffset, true);
    const commitWord = dv.getUint32(commitOffset, true); // low 32 bits of the local_t (little-endian)
    const commit = commitWord & COMMIT_MASK;
    const errors: string[] = [];
    const events: DecodedEvent[] = [];

    let missedEvents = 0;
    if (commitWord & MISSED_EVENTS) {
      missedEvents = -1;
      if (commitWord & MISSED_STORED) {
        const at = dataOffset + commit;
        if (at + commitSize <= pageLen) {
          const n = commitSize === 8 ? dv.getBigUint64(at, true) : BigInt(dv.getUint32(at, true));
          missedEvents = n > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(n);
        } else {
          errors.push(`missed-events count at data offset ${commit} lies past the page end`);
        }
      }
    }

    let end = dataOffset + commit;
    if (end > pageLen) {
      errors.push(`commit of ${commit} bytes exceeds the ${pageLen - dataOffset} data bytes of the page`);
      end = pageLen;
    }

    const typeOffset = this.typeOffset;
    const typeSize = this.typeSize;
    const plans = this.plans;
    let ts = timestamp;
    let pos = dataOffset;
    while (pos + 4 <= end) {
      const hdr = dv.getUint32(pos, true);
      const typeLen = hdr & 31;
      const delta = hdr >>> 5;
      let rec: number;
      let recLen: number;
      let total: number;
      if (typeLen === 0) {
        if (pos + 8 > end) {
          errors.push(`record at ${pos - dataOffset}: length word past the committed data`);
          break;
        }
        const len = dv.getUint32(pos + 4, true);
        // The kernel keeps records 4-aligned; an unaligned length is forged (and scan refuses it too).
        if (len < 4 || len > end - pos - 4 || (len & 3) !== 0) {
          errors.push(`record at ${pos - dataOffset}: length ${len} invalid or past the committed data`);
          break;
        }
        rec = pos + 8;
        recLen = len - 4;
        total = len + 4;
      } else if (typeLen <= 28) {
        recLen = typeLen * 4;
        rec = pos + 4;
        total = recLen + 4;
        if (total > end - pos) {
          errors.push(`record at ${pos - dataOffset}: ${recLen} bytes run past the committed data`);
          break;
        }
      } else {
        if (typeLen === TYPE_PADDING && delta === 0) break; // the rest of the page is padding
        if (pos + 8 > end) {
          errors.push(`record at ${pos - dataOffset}: type ${typeLen} header runs past the committed data`);
          break;
        }
        const word = dv.getUint32(pos + 4, true);
        if (typeLen === TYPE_PADDING) {
          if (word < 4 || word > end - pos - 4 || (word & 3) !== 0) {
            errors.push(`padding at ${pos - dataOffset}: length ${word} invalid or past the committed data`);
            break;
          }
          if (delta !== 1) ts += BigInt(delta);
          pos += word + 4;
          continue;
        }
        const v = (BigInt(word) << 27n) | BigInt(delta);
        if (typeLen === TYPE_TIME_EXTEND) {
          ts = BigInt.asUintN(64, ts + v);
        } else {
          // TYPE_TIME_STAMP: absolute, missing its 5 most significant bits.
          let abs = v;
          const msb = ts & TS_MSB;
          if (msb !== 0n) {
            abs |= msb;
            if (abs < ts) abs = BigInt.asUintN(64, abs + TS_MSB_CARRY);
          }
          ts = abs;
        }
        pos += 8;
        continue;
      }

      if (delta !== 0) ts += BigInt(delta);
      pos += total;

      if (recLen < typeOffset + typeSize) {
        errors.push(`record at ${rec - 4 - dataOffset}: ${recLen} bytes, too short for an event id`);
        continue;
      }
      const id =
        typeSize === 2 ? dv.getUint16(rec + typeOffset, true) : typeSize === 1 ? page[rec + typeOffset]! : dv.getUint32(rec + typeOffset, true);
      const plan = plans.get(id);
      if (plan === undefined) {
        errors.push(`record at ${rec - dataOffset}: unknown event id ${id}`);
        continue;
      }
      if (recLen < plan.minSize) {
        errors.push(`record at ${rec - dataOffset}: ${plan.system}/${plan.name} needs ${plan.minSize} bytes, has ${recLen}`);
        continue;
      }
      const fields: Record<string, FieldValue> = {};
      const readers = plan.readers;
      for (let i = 0; i < readers.length; i++) {
        const r = readers[i]!;
        const v = readField(dv, page, rec, recLen, r);
        if (v === undefined) {
          errors.push(`record at ${rec - dataOffset}: ${plan.system}/${plan.name} field ${r.name} points outside the record`);
          fields[r.name] = isStringOp(r.op) ? "" : new Uint8Array(0);
        } else {
          fields[r.name] = v;
        }
      }
      if (plan.waitField !== undefined) addWaitStatusFields(fields, plan.waitField);
      events.push({
        id,
        system: plan.system,
        name: plan.name,
        ts,
        pid: plan.pidOffset >= 0 ? dv.getInt32(rec + plan.pidOffset, true) : 0,
        fields,
      });
    }
    return { timestamp, events, missedEvents, errors };
  }
}

/**
 * Counts the events of a page whose records are all well formed (16-bit event ids,
 * every id known, every record long enough for its format); -1 at the first record that
 * is not, so the caller can walk again slowly to say what is wrong. Words are 4 bytes.
 */
function countRecords(u32: Uint32Array, u16: Uint16Array, minSizes: Int32Array, w: number, endW: number, typeHalf: number): number {
  let events = 0;
  while (w < endW) {
    const hdr = u32[w]!;
    const typeLen = hdr & 31;
    if (typeLen !== 0 && typeLen <= 28) {
      const next = w + 1 + typeLen;
      if (next > endW) return -1;
      const min = minSizes[u16[((w + 1) << 1) + typeHalf]!]!; // -1: unknown id
      if (min < 0 || min > typeLen << 2) return -1;
      events++;
      w = next;
      continue;
    }
    if (w + 2 > endW) return -1;
    const word = u32[w + 1]!;
    if (typeLen === 0) {
      if (word < 4 || (word & 3) !== 0 || w + 1 + (word >>> 2) > endW) return -1;
      const min = minSizes[u16[((w + 2) << 1) + typeHalf]!]!;
      if (min < 0 || min > word - 4) return -1;
      events++;
      w += 1 + (word >>> 2);
    } else if (typeLen === TYPE_PADDING) {
      if (hdr >>> 5 === 0) break;
      if (word < 4 || (word & 3) !== 0 || w + 1 + (word >>> 2) > endW) return -1;
      w += 1 + (word >>> 2);
    } else w += 2;
  }
  return events;
}

function scanProblem(r: PageScan, what: string): void {
  r.bad++;
  r.firstError ??= what;
}

function bad(what: string): FrameError {
  return new FrameError(ErrorCode.Malformed, `ftrace: ${what}`);
}

function isSmallUint(n: unknown, max = MAX_OFFSET): n is number {
  return typeof n === "number" && Number.isInteger(n) && n >= 0 && n <= max;
}

/** Field descriptors may be hand-built by callers; never let one make a read go out of range. Returns its end. */
function checkField(c: FieldFormat, f: EventFormatDesc): number {
  if (!isSmallUint(c.offset) || !isSmallUint(c.size) || c.offset + c.size > MAX_OFFSET) {
    throw bad(`${f.system}/${f.name}: field ${String(c.name)} has offset ${c.offset} size ${c.size}`);
  }
  if (c.name === "__proto__") throw bad(`${f.system}/${f.name}: reserved field name`);
  if ((c.kind === "data_loc_string" || c.kind === "rel_loc_string" || c.kind === "data_loc_array" || c.kind === "rel_loc_array") && c.size !== 4) {
    throw bad(`${f.system}/${f.name}: ${c.kind} field ${c.name} has size ${c.size}, expected 4`);
  }
  if (c.kind === "int" && c.size !== 1 && c.size !== 2 && c.size !== 4 && c.size !== 8) {
    throw bad(`${f.system}/${f.name}: int field ${c.name} has size ${c.size}`);
  }
  return c.offset + c.size;
}

function checkLayout(h: HeaderPageLayout): HeaderPageLayout {
  if (
    !isSmallUint(h.timestampOffset) ||
    !isSmallUint(h.commitOffset) ||
    !isSmallUint(h.dataOffset) ||
    (h.commitSize !== 4 && h.commitSize !== 8) ||
    h.timestampOffset + 8 > h.dataOffset ||
    h.commitOffset + h.commitSize > h.dataOffset
  ) {
    throw bad("invalid page header layout");
  }
  return { ...h };
}
