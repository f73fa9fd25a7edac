/** A batch read with readv(2): a full enough run keeps its buffer (no copy), a small one is copied out. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ReadBatch } from "../src/tracefs/pages.js";
import type { PageLayout } from "../src/tracefs/page-layout.js";

const PAGE = 4096;
const layout: PageLayout = { commitOffset: 8, commitSize: 8, dataOffset: 16 };

/** Writes `pages` pages into the batch's iovecs as readv would: page i holds `fill` bytes of data, all of value i + 1. */
function fillPages(iov: Buffer[], pages: number, lastFill: number): number {
  for (let i = 0; i < pages; i++) {
    const p = iov[i]!;
    const fill = i === pages - 1 ? lastFill : PAGE - layout.dataOffset;
    p.fill(0);
    p.writeUInt32LE(fill, layout.commitOffset);
    p.fill(i + 1, layout.dataOffset, layout.dataOffset + fill);
  }
  return pages * PAGE;
}

test("a run of half the batch or more is the batch's own buffer, cut after the last page's data; the next read gets a new one", () => {
  const batch = new ReadBatch(8, PAGE);
  const iov = batch.iov();
  assert.equal(iov.length, 8);
  const run = batch.take(0, fillPages(iov, 4, 100), layout);
  assert.equal(run.count, 4);
  assert.equal(run.lastLength, layout.dataOffset + 100);
  assert.equal(run.data.length, 3 * PAGE + layout.dataOffset + 100);
  assert.equal(run.data.buffer, iov[0]!.buffer, "no copy: the run is a view of what readv filled");
  const next = batch.iov();
  assert.notEqual(next[0]!.buffer, iov[0]!.buffer, "the next readv must not overwrite a run the window still holds");
  fillPages(next, 8, 10);
  assert.equal(run.data[3 * PAGE + layout.dataOffset], 4, "the handed-over run keeps its bytes");
});

test("a small run is copied out and the buffer is read into again", () => {
  const batch = new ReadBatch(8, PAGE);
  const iov = batch.iov();
  const run = batch.take(1, fillPages(iov, 3, 40), layout);
  assert.equal(run.count, 3);
  assert.equal(run.cpu, 1);
  assert.equal(run.data.length, 2 * PAGE + layout.dataOffset + 40);
  assert.notEqual(run.data.buffer, iov[0]!.buffer);
  assert.equal(batch.iov()[0]!.buffer, iov[0]!.buffer, "kept for the next readv");
  fillPages(iov, 8, 10); // the next readv into the same buffer
  assert.equal(run.data[PAGE + layout.dataOffset], 2, "the copy keeps the pages it was made of");
});

test("iov(from, max) is the iovecs from page `from`, at least one", () => {
  const batch = new ReadBatch(8, PAGE);
  const all = batch.iov();
  assert.deepEqual(batch.iov(3).map((b) => b.byteOffset), all.slice(3).map((b) => b.byteOffset));
  assert.equal(batch.iov(0, 2).length, 2);
  assert.equal(batch.iov(0, 0).length, 1);
  assert.equal(batch.iov(0, 100), all);
});
