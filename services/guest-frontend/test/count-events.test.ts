/** countEvents: the event records of real guest pages, as many as the kernel's own text rendering shows. */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { countEvents, parsePageLayout } from "../src/tracefs/page-layout.js";

// Pages captured in the Debian 6.1 test guest (the listener's decoder fixtures; see their README).
const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), "../../probe-listener/test/fixtures/guest-6.1");
const layout = parsePageLayout(fs.readFileSync(path.join(dir, "header_page"), "utf8"));
const PAGE = 4096;

function capture(name: string): { raw: Buffer; pages: number; events: number } {
  const raw = fs.readFileSync(path.join(dir, name, "cpu0.raw"));
  const text = fs.readFileSync(path.join(dir, name, "trace.txt"), "utf8");
  const events = text.split("\n").filter((l) => l.trim() !== "" && !l.startsWith("#")).length;
  return { raw, pages: raw.length / PAGE, events };
}

test("every event of real pages is counted: one page, nine pages, and pages after an overflow", () => {
  assert.ok(layout);
  for (const name of ["basic", "multi", "overflow"]) {
    const c = capture(name);
    assert.equal(countEvents(c.raw, c.pages, PAGE, PAGE, layout, Infinity), c.events, name);
  }
});

test("the count stops at the limit, and a cut last page counts only what it holds", () => {
  const c = capture("multi");
  assert.equal(countEvents(c.raw, c.pages, PAGE, PAGE, layout, 5), 5);
  const first = countEvents(c.raw, 1, PAGE, PAGE, layout, Infinity);
  assert.ok(first > 5 && first < c.events);
  // The second page cut after its header: nothing of it counts.
  assert.equal(countEvents(c.raw, 2, PAGE, 16, layout, Infinity), first);
  assert.equal(countEvents(c.raw, c.pages, PAGE, PAGE, undefined, 7), 7, "with no layout nothing is known: the limit");
});

test("a record whose length makes no sense ends the count instead of walking off", () => {
  const page = Buffer.alloc(PAGE);
  page.writeUInt32LE(40, 8); // commit: 40 bytes of data
  page.writeUInt32LE(2, 16); // an 8-byte event (type_len 2)
  page.writeUInt32LE(0, 28); // type_len 0: a length word follows ...
  page.writeUInt32LE(2, 32); // ... that is smaller than itself
  assert.equal(countEvents(page, 1, PAGE, PAGE, layout, Infinity), 1);
});
