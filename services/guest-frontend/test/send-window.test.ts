import assert from "node:assert/strict";
import { test } from "node:test";
import { SendWindow, type OutPage } from "../src/send-window.js";

const pages = (from: bigint, n: number): OutPage[] => Array.from({ length: n }, (_, i) => ({ seq: from + BigInt(i), page: Buffer.alloc(100, i) }));
const seqs = (ps: OutPage[]): bigint[] => ps.map((p) => p.seq);

test("pages go out in order, acks free room, a resend starts again from the oldest unacknowledged", () => {
  const w = new SendWindow(0, 4);
  assert.equal(w.nextSeq, 1n);
  w.push(pages(1n, 3));
  assert.deepEqual(seqs(w.take(2, 1 << 20)), [1n, 2n]);
  assert.deepEqual(seqs(w.take(8, 1 << 20)), [3n]);
  assert.equal(w.hasUnsent, false);
  assert.equal(w.hasRoom(2), false);
  assert.ok(w.ack(2n, false));
  assert.equal(w.unacked, 1);
  assert.ok(w.hasRoom(3));
  w.push(pages(4n, 2));
  assert.deepEqual(seqs(w.take(8, 1 << 20)), [4n, 5n]);
  // The host saw a gap after 3: everything after it goes again, once for that gap.
  assert.ok(w.ack(3n, true));
  assert.deepEqual(seqs(w.take(8, 1 << 20)), [4n, 5n]);
  assert.ok(w.ack(3n, true));
  assert.equal(w.hasUnsent, false, "a second resend request for the same gap is ignored");
  assert.equal(w.stats.resent, 2);
});

test("an ack for a page never sent is refused and counted", () => {
  const w = new SendWindow(1, 8);
  w.push(pages(1n, 2));
  w.take(1, 1 << 20);
  assert.equal(w.ack(2n, false), false);
  assert.equal(w.stats.badAcks, 1);
  assert.equal(w.unacked, 2);
});

test("take respects the byte budget but always makes progress", () => {
  const w = new SendWindow(0, 8);
  w.push([{ seq: 1n, page: Buffer.alloc(5000) }, { seq: 2n, page: Buffer.alloc(5000) }]);
  assert.deepEqual(seqs(w.take(8, 4096)), [1n], "one page even if it alone is over the budget");
  assert.deepEqual(seqs(w.take(8, 4096)), [2n]);
});

test("a failed send puts the pages back; a stall rewinds; pushing a wrong seq is a bug", () => {
  const w = new SendWindow(0, 8, 10n);
  assert.equal(w.nextSeq, 11n, "continues after what the host already holds");
  w.push(pages(11n, 3));
  const sent = w.take(2, 1 << 20);
  w.unsend(sent);
  assert.deepEqual(seqs(w.take(8, 1 << 20)), [11n, 12n, 13n]);
  assert.equal(w.stalled(Date.now(), 60_000), false);
  assert.equal(w.stalled(Date.now() + 60_000, 60_000), true);
  w.rewind();
  assert.deepEqual(seqs(w.take(8, 1 << 20)), [11n, 12n, 13n]);
  assert.throws(() => w.push(pages(20n, 1)), /does not follow/);
});

test("a pump waiting for room is released by an ack, or by abort", async () => {
  const w = new SendWindow(0, 2);
  w.push(pages(1n, 2));
  w.take(2, 1 << 20);
  let released = false;
  const waiting = w.waitForRoom(1, new AbortController().signal).then(() => (released = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(released, false);
  w.ack(1n, false);
  await waiting;
  assert.equal(released, true);
  const ac = new AbortController();
  w.push(pages(3n, 1));
  const stuck = w.waitForRoom(1, ac.signal);
  ac.abort();
  await stuck;
});
