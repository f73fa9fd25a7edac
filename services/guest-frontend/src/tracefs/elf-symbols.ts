/**
 * Function symbol -> file offset in an ELF file, for uprobe_events (which takes
 * PATH:OFFSET and knows no symbols; perf and bpftrace resolve them the same way).
 * Only what that needs: 64-bit little-endian ELF, .symtab else .dynsym, and the
 * PT_LOAD segment that maps the symbol's address. Read with positioned reads: the
 * guest's node binary is 90 MB and only its headers and symbol tables matter.
 * No ELF library on npm is kept up well enough to put in the guest bundle for this.
 */
import fs from "node:fs";

export type ElfErrorCode = "NOT_FOUND" | "NOT_ELF" | "UNSUPPORTED" | "NO_SYMBOL" | "NOT_MAPPED";

export class ElfError extends Error {
  override readonly name = "ElfError";
  constructor(
    readonly code: ElfErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface ElfSymbol {
  /** Where the symbol's first instruction is in the file (what uprobe_events wants). */
  fileOffset: bigint;
  /** Its virtual address (st_value). */
  address: bigint;
  size: bigint;
  /** ".symtab" or ".dynsym". */
  table: string;
}

const SHT_SYMTAB = 2;
const SHT_DYNSYM = 11;
const PT_LOAD = 1;
const STT_NOTYPE = 0;
const STT_FUNC = 2;
const SHN_UNDEF = 0;
const SYM_SIZE = 24;
/** Longest symbol table or string table read (node's .strtab is 7.5 MB). */
const MAX_TABLE_BYTES = 64 * 1024 * 1024;

interface Section {
  type: number;
  offset: number;
  size: number;
  link: number;
}

/** Finds `symbol` (a function, or an untyped label) in the ELF file at `file`. */
export async function resolveElfSymbol(file: string, symbol: string): Promise<ElfSymbol> {
  let fh: fs.promises.FileHandle;
  try {
    // Only regular files are opened: opening a device can act (a watchdog arms), a FIFO blocks.
    if (!(await fs.promises.stat(file)).isFile()) throw new ElfError("NOT_ELF", `${file} is not a regular file`);
    fh = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (err) {
    if (err instanceof ElfError) throw err;
    throw new ElfError("NOT_FOUND", `cannot open ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new ElfError("NOT_ELF", `${file} is not a regular file`);
    const read = async (offset: number, length: number, what: string): Promise<Buffer> => {
      if (offset < 0 || length < 0 || offset + length > st.size) throw new ElfError("NOT_ELF", `${file}: ${what} lies outside the file`);
      const buf = Buffer.alloc(length);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      if (bytesRead !== length) throw new ElfError("NOT_ELF", `${file}: short read of ${what}`);
      return buf;
    };
    const eh = await read(0, Math.min(64, st.size), "the ELF header");
    if (eh.length < 64 || eh.readUInt32BE(0) !== 0x7f454c46) throw new ElfError("NOT_ELF", `${file} is not an ELF file`);
    if (eh[4] !== 2 || eh[5] !== 1) throw new ElfError("UNSUPPORTED", `${file}: only 64-bit little-endian ELF files are supported`);
    const phoff = safeNumber(eh.readBigUInt64LE(0x20));
    const shoff = safeNumber(eh.readBigUInt64LE(0x28));
    const phentsize = eh.readUInt16LE(0x36);
    const phnum = eh.readUInt16LE(0x38);
    const shentsize = eh.readUInt16LE(0x3a);
    const shnum = eh.readUInt16LE(0x3c);
    if (shnum === 0 || shentsize < 64 || phentsize < 56) throw new ElfError("NO_SYMBOL", `${file} has no section headers: no symbol ${symbol} to find (give a file offset instead)`);

    const sh = await read(shoff, shnum * shentsize, "the section headers");
    const sections: Section[] = [];
    for (let i = 0; i < shnum; i++) {
      const o = i * shentsize;
      sections.push({ type: sh.readUInt32LE(o + 4), offset: safeNumber(sh.readBigUInt64LE(o + 24)), size: safeNumber(sh.readBigUInt64LE(o + 32)), link: sh.readUInt32LE(o + 40) });
    }
    const want = Buffer.from(symbol, "latin1");
    const tables: Array<[string, number]> = [
      [".symtab", SHT_SYMTAB],
      [".dynsym", SHT_DYNSYM],
    ];
    for (const [table, type] of tables) {
      const symtab = sections.find((s) => s.type === type);
      const strtab = symtab === undefined ? undefined : sections[symtab.link];
      if (symtab === undefined || strtab === undefined) continue;
      if (symtab.size > MAX_TABLE_BYTES || strtab.size > MAX_TABLE_BYTES) throw new ElfError("UNSUPPORTED", `${file}: ${table} is larger than ${MAX_TABLE_BYTES} bytes`);
      const syms = await read(symtab.offset, symtab.size - (symtab.size % SYM_SIZE), table);
      const strs = await read(strtab.offset, strtab.size, `${table}'s string table`);
      const hit = findSymbol(syms, strs, want);
      if (hit === undefined) continue;
      const ph = await read(phoff, phnum * phentsize, "the program headers");
      for (let i = 0; i < phnum; i++) {
        const o = i * phentsize;
        if (ph.readUInt32LE(o) !== PT_LOAD) continue;
        const pOffset = ph.readBigUInt64LE(o + 8);
        const pVaddr = ph.readBigUInt64LE(o + 16);
        const pFilesz = ph.readBigUInt64LE(o + 32);
        if (hit.value >= pVaddr && hit.value < pVaddr + pFilesz) {
          return { fileOffset: hit.value - pVaddr + pOffset, address: hit.value, size: hit.size, table };
        }
      }
      throw new ElfError("NOT_MAPPED", `${file}: symbol ${symbol} (address 0x${hit.value.toString(16)}) is in no loadable segment`);
    }
    throw new ElfError("NO_SYMBOL", `${file} has no function ${symbol} in its symbol tables (.symtab, .dynsym): a stripped file needs a file offset instead`);
  } finally {
    await fh.close();
  }
}

/** The first defined function (or untyped label) named `want`. */
function findSymbol(syms: Buffer, strs: Buffer, want: Buffer): { value: bigint; size: bigint } | undefined {
  const first = want[0];
  for (let o = 0; o + SYM_SIZE <= syms.length; o += SYM_SIZE) {
    const name = syms.readUInt32LE(o);
    // Cheap tests first: most symbols differ in their first byte.
    if (name + want.length >= strs.length || strs[name] !== first || strs[name + want.length] !== 0) continue;
    if (strs.compare(want, 0, want.length, name, name + want.length) !== 0) continue;
    const type = syms[o + 4]! & 0xf;
    if ((type !== STT_FUNC && type !== STT_NOTYPE) || syms.readUInt16LE(o + 6) === SHN_UNDEF) continue;
    const value = syms.readBigUInt64LE(o + 8);
    if (value === 0n) continue;
    return { value, size: syms.readBigUInt64LE(o + 16) };
  }
  return undefined;
}

function safeNumber(v: bigint): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ElfError("NOT_ELF", "an offset in the ELF header is out of range");
  return Number(v);
}
