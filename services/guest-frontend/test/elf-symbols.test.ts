/**
 * Symbol -> file offset on real ELF files built here by gcc. The oracle is the file
 * itself: the probed function's first bytes are a marker, so the offset is right only
 * if the bytes found there are the marker.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { ElfError, resolveElfSymbol } from "../src/tracefs/elf-symbols.js";

const MARKER = "VESPERFN";
// A function whose code starts with the marker bytes (it is never called).
const SOURCE = `
__asm__(".text\\n.globl vesper_marker\\n.type vesper_marker,@function\\nvesper_marker:\\n.ascii \\"${MARKER}\\"\\nret\\n.size vesper_marker, .-vesper_marker\\n");
int main(void) { return 0; }
`;

let dir: string;
const bin = (name: string): string => path.join(dir, name);

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "vesper-elf-"));
  writeFileSync(bin("m.c"), SOURCE);
  // PIE (addresses from 0) and non-PIE (from 0x400000): the offset must come from the segment either way.
  execFileSync("gcc", ["-O1", "-pie", "-fPIE", "-rdynamic", "-o", bin("pie"), bin("m.c")]);
  execFileSync("gcc", ["-O1", "-no-pie", "-o", bin("nopie"), bin("m.c")]);
  // Stripped: .symtab is gone, .dynsym still has the exported symbol (-rdynamic).
  copyFileSync(bin("pie"), bin("stripped"));
  execFileSync("strip", [bin("stripped")]);
  copyFileSync(bin("nopie"), bin("nopie-stripped"));
  execFileSync("strip", [bin("nopie-stripped")]);
});

after(() => rmSync(dir, { recursive: true, force: true }));

function bytesAt(file: string, offset: bigint): string {
  return readFileSync(file).subarray(Number(offset), Number(offset) + MARKER.length).toString("latin1");
}

test("a symbol's file offset points at its code, in PIE and non-PIE executables", async () => {
  for (const name of ["pie", "nopie"]) {
    const sym = await resolveElfSymbol(bin(name), "vesper_marker");
    assert.equal(sym.table, ".symtab", name);
    assert.equal(bytesAt(bin(name), sym.fileOffset), MARKER, name);
    assert.ok(sym.size >= BigInt(MARKER.length), name);
  }
  const nopie = await resolveElfSymbol(bin("nopie"), "vesper_marker");
  assert.ok(nopie.address > nopie.fileOffset, "a non-PIE address is not its file offset");
});

test("a stripped file still resolves what its dynamic symbol table exports", async () => {
  const sym = await resolveElfSymbol(bin("stripped"), "vesper_marker");
  assert.equal(sym.table, ".dynsym");
  assert.equal(bytesAt(bin("stripped"), sym.fileOffset), MARKER);
});

test("a missing symbol, a stripped file, a non-ELF file, a FIFO and a missing file each get their own error", async () => {
  const code = async (file: string, symbol: string): Promise<string> => {
    try {
      await resolveElfSymbol(file, symbol);
      return "resolved";
    } catch (err) {
      assert.ok(err instanceof ElfError, String(err));
      assert.ok(err.message.includes(file), err.message);
      return err.code;
    }
  };
  assert.equal(await code(bin("pie"), "no_such_function"), "NO_SYMBOL");
  assert.equal(await code(bin("pie"), "vesper_marke"), "NO_SYMBOL", "a prefix of a name is not the name");
  assert.equal(await code(bin("nopie-stripped"), "vesper_marker"), "NO_SYMBOL");
  assert.equal(await code(bin("pie"), "printf"), "NO_SYMBOL", "an undefined (imported) symbol has no code here");
  assert.equal(await code(bin("m.c"), "main"), "NOT_ELF");
  execFileSync("mkfifo", [bin("fifo")]);
  assert.equal(await code(bin("fifo"), "main"), "NOT_ELF", "a FIFO is refused, not waited on");
  assert.equal(await code(bin("absent"), "main"), "NOT_FOUND");
  writeFileSync(bin("truncated"), readFileSync(bin("pie")).subarray(0, 200));
  assert.equal(await code(bin("truncated"), "main"), "NOT_ELF");
});
