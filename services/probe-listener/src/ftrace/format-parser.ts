/**
 * Parser for tracefs `events/<system>/<event>/format` files, as sent by the (untrusted) guest.
 *
 *   name: sched_process_exit
 *   ID: 369
 *   format:
 *   	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
 *   	...
 *
 *   	field:char comm[16];	offset:8;	size:16;	signed:0;
 *   	field:__data_loc char[] filename;	offset:8;	size:4;	signed:0;
 *
 *   print fmt: "..."
 *
 * Everything is validated and bounded (see limits.ts); any problem is a FrameError.
 * The parser is linear in the text length (no backtracking regular expressions).
 */
import { ErrorCode, FrameError } from "@vesper/protocol";
import { MAX_FIELDS, MAX_FORMAT_TEXT_BYTES, MAX_LINE_CHARS, MAX_NAME_CHARS, MAX_OFFSET } from "./limits.js";

/**
 * How a field's bytes are turned into a value.
 * `rel_loc_array` is an addition to the original list: `__rel_loc` of a non-char element
 * type (the `__rel_loc` twin of `data_loc_array`).
 */
export type FieldKind =
  | "int"
  | "char_array"
  | "data_loc_string"
  | "rel_loc_string"
  | "data_loc_array"
  | "rel_loc_array"
  | "array"
  | "other";

export interface FieldFormat {
  name: string;
  /** The declaration without the name, whitespace collapsed: "unsigned short", "char[16]", "__data_loc char[]". */
  type: string;
  offset: number;
  size: number;
  signed: boolean;
  kind: FieldKind;
  /** Arrays (fixed, data_loc, rel_loc): bytes per element. */
  elementSize?: number;
  /** Fixed arrays: number of elements (from `[N]`, or size / elementSize when N is a macro). */
  arrayLength?: number;
}

export interface EventFormatDesc {
  system: string;
  name: string;
  id: number;
  /** Fields whose name starts with `common_` (common_type, common_flags, common_preempt_count, common_pid, ...). */
  common: FieldFormat[];
  /** The event's own fields, in file order. */
  fields: FieldFormat[];
  /** Minimum record size: the end of the furthest fixed field. */
  size: number;
}

const malformed = (what: string): FrameError => new FrameError(ErrorCode.Malformed, `event format: ${what}`);

export function parseEventFormat(text: string, system: string): EventFormatDesc {
  if (typeof text !== "string") throw malformed("text is not a string");
  if (typeof system !== "string" || !isPlainName(system)) throw malformed("invalid system name");
  if (text.length > MAX_FORMAT_TEXT_BYTES) {
    throw new FrameError(ErrorCode.TooLarge, `event format: ${text.length} chars exceeds ${MAX_FORMAT_TEXT_BYTES}`);
  }

  let name: string | undefined;
  let id: number | undefined;
  let inFormat = false;
  const all: FieldFormat[] = [];
  const seen = new Set<string>();

  let start = 0;
  while (start <= text.length) {
    let end = text.indexOf("\n", start);
    if (end < 0) end = text.length;
    const raw = text.slice(start, end);
    start = end + 1;
    if (raw.length > MAX_LINE_CHARS) throw malformed(`line longer than ${MAX_LINE_CHARS} chars`);
    const line = raw.trim();
    if (line === "") continue;

    if (inFormat) {
      if (line.startsWith("field:")) {
        if (all.length >= MAX_FIELDS) throw malformed(`more than ${MAX_FIELDS} fields`);
        const field = parseFieldLine(line);
        if (seen.has(field.name)) throw malformed(`duplicate field ${field.name}`);
        seen.add(field.name);
        all.push(field);
        continue;
      }
      if (line.startsWith("print fmt:")) break;
      continue; // tolerate unknown lines inside format:
    }
    if (line.startsWith("name:")) {
      if (name !== undefined) throw malformed("duplicate name:");
      name = line.slice(5).trim();
      if (!isPlainName(name)) throw malformed("invalid event name");
    } else if (line.startsWith("ID:")) {
      if (id !== undefined) throw malformed("duplicate ID:");
      id = parseUint(line.slice(3).trim(), 0xffffffff, "ID");
    } else if (line === "format:") {
      inFormat = true;
    }
    // other lines before format: are ignored
  }

  if (name === undefined) throw malformed("missing name:");
  if (id === undefined) throw malformed("missing ID:");
  if (!inFormat) throw malformed("missing format:");
  if (all.length === 0) throw malformed("no fields");

  const common: FieldFormat[] = [];
  const fields: FieldFormat[] = [];
  let size = 0;
  for (const f of all) {
    (f.name.startsWith("common_") ? common : fields).push(f);
    if (f.offset + f.size > size) size = f.offset + f.size;
  }
  return { system, name, id, common, fields, size };
}

/** Parses one `field:<decl>;\toffset:N;\tsize:N;\tsigned:N;` line (already trimmed). */
export function parseFieldLine(line: string): FieldFormat {
  const parts = line.split(";");
  const first = parts[0] ?? "";
  const decl = collapse(first.slice("field:".length));
  if (decl === "") throw malformed("empty field declaration");

  let offset: number | undefined;
  let size: number | undefined;
  let signed: boolean | undefined;
  for (let i = 1; i < parts.length; i++) {
    const p = (parts[i] ?? "").trim();
    if (p === "") continue;
    const colon = p.indexOf(":");
    if (colon < 0) continue;
    const key = p.slice(0, colon).trim();
    const value = p.slice(colon + 1).trim();
    if (key === "offset") offset = parseUint(value, MAX_OFFSET, "offset");
    else if (key === "size") size = parseUint(value, MAX_OFFSET, "size");
    else if (key === "signed") signed = parseUint(value, 1, "signed") === 1;
  }
  if (offset === undefined) throw malformed(`field "${decl}" has no offset`);
  if (size === undefined) throw malformed(`field "${decl}" has no size`);
  if (offset + size > MAX_OFFSET) throw malformed(`field "${decl}" ends past ${MAX_OFFSET}`);

  // Split "<type> <name>[<array>]" without regular expressions.
  let base = decl;
  let arraySpec: string | undefined;
  if (base.endsWith("]")) {
    const open = base.lastIndexOf("[");
    if (open < 0) throw malformed(`unbalanced [] in "${decl}"`);
    arraySpec = base.slice(open + 1, -1).trim();
    base = base.slice(0, open).trimEnd();
  }
  let i = base.length;
  while (i > 0 && isIdentChar(base.charCodeAt(i - 1))) i--;
  const name = base.slice(i);
  const typePart = base.slice(0, i).trim();
  if (name === "" || isDigit(name.charCodeAt(0))) throw malformed(`no field name in "${decl}"`);
  if (name.length > MAX_NAME_CHARS) throw malformed("field name too long");
  if (name === "__proto__") throw malformed("reserved field name __proto__");
  if (typePart === "") throw malformed(`no type in "${decl}"`);
  const type = arraySpec === undefined ? typePart : `${typePart}[${arraySpec}]`;

  const field: FieldFormat = { name, type, offset, size, signed: signed ?? false, kind: "other" };
  classify(field, typePart, arraySpec);
  return field;
}

function classify(f: FieldFormat, typePart: string, arraySpec: string | undefined): void {
  const loc = typePart.startsWith("__data_loc") ? "data" : typePart.startsWith("__rel_loc") ? "rel" : undefined;
  if (loc !== undefined) {
    let elem = typePart.slice(loc === "data" ? "__data_loc".length : "__rel_loc".length).trim();
    if (elem.endsWith("[]")) elem = elem.slice(0, -2).trim();
    if (f.size !== 4) return; // a 32-bit descriptor or nothing we understand: raw bytes
    if (isCharType(elem)) {
      f.kind = loc === "data" ? "data_loc_string" : "rel_loc_string";
      f.elementSize = 1;
    } else {
      f.kind = loc === "data" ? "data_loc_array" : "rel_loc_array";
      f.elementSize = scalarSize(elem) ?? 1;
    }
    return;
  }
  if (arraySpec !== undefined) {
    const n = arraySpec !== "" && allDigits(arraySpec) && arraySpec.length <= 7 ? Number(arraySpec) : undefined;
    if (isCharType(typePart)) {
      f.kind = "char_array";
      f.elementSize = 1;
      f.arrayLength = f.size;
      return;
    }
    const elemSize = scalarSize(typePart) ?? (n !== undefined && n > 0 && f.size % n === 0 ? f.size / n : 1);
    f.kind = "array";
    f.elementSize = elemSize;
    f.arrayLength = n ?? Math.floor(f.size / elemSize);
    return;
  }
  if (typePart.startsWith("struct ") || typePart.startsWith("union ")) {
    if (!typePart.includes("*")) return;
  }
  if (f.size === 1 || f.size === 2 || f.size === 4 || f.size === 8) f.kind = "int";
}

const CHAR_TYPES = new Set(["char", "signed char", "unsigned char", "const char", "const unsigned char"]);
function isCharType(t: string): boolean {
  return CHAR_TYPES.has(t);
}

const SCALAR_SIZES = new Map<string, number>([
  ["char", 1], ["signed char", 1], ["unsigned char", 1], ["bool", 1], ["_Bool", 1],
  ["u8", 1], ["s8", 1], ["__u8", 1], ["__s8", 1], ["uint8_t", 1], ["int8_t", 1],
  ["short", 2], ["unsigned short", 2], ["u16", 2], ["s16", 2], ["__u16", 2], ["__s16", 2],
  ["int", 4], ["unsigned int", 4], ["unsigned", 4], ["u32", 4], ["s32", 4], ["__u32", 4], ["__s32", 4],
  ["pid_t", 4], ["uid_t", 4], ["gid_t", 4],
  ["long", 8], ["unsigned long", 8], ["long long", 8], ["unsigned long long", 8],
  ["u64", 8], ["s64", 8], ["__u64", 8], ["__s64", 8], ["size_t", 8], ["ssize_t", 8],
]);
function scalarSize(t: string): number | undefined {
  if (t.endsWith("*")) return 8;
  return SCALAR_SIZES.get(t);
}

function parseUint(s: string, max: number, what: string): number {
  if (s === "" || s.length > 10 || !allDigits(s)) throw malformed(`${what} "${s.slice(0, 32)}" is not a decimal number`);
  const n = Number(s);
  if (n > max) throw malformed(`${what} ${n} exceeds ${max}`);
  return n;
}

function allDigits(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (!isDigit(s.charCodeAt(i))) return false;
  return true;
}
function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}
function isIdentChar(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95;
}
/** Names of systems/events: no whitespace or slashes, bounded length. */
function isPlainName(s: string): boolean {
  if (s.length === 0 || s.length > MAX_NAME_CHARS) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c <= 32 || c === 47 || c === 127) return false;
  }
  return true;
}
/** Trims and collapses runs of whitespace to one space. */
function collapse(s: string): string {
  let out = "";
  let space = false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 32 || c === 9 || c === 13) {
      space = out !== "";
      continue;
    }
    if (space) out += " ";
    space = false;
    out += s[i];
  }
  return out;
}
