import assert from "node:assert/strict";
import { test } from "node:test";
import { runAfter, SendWindow, type OutRun } from "../src/send-window.js";

const PS = 64;
/** A run of `count` pages from `firstSeq`, page k filled with byte (firstSeq + k). */
function run(firstSeq: number, count: number, lastLength = PS): OutRun {
  const data = Buffer.alloc((count - 1) * PS + lastLength);
  for (let k = 0; k < count; k++) data.fill((firstSeq + k) & 0xff, k * PS, Math.min(data.length, (k + 1) * PS));
  return { firstSeq, count, pageSize: PS, lastLength, data };
}
const starts = (rs: OutRun[]): number[] => rs.map((r) => r.firstSeq);

test("runs go out in order, acks free room, a resend starts again from the oldest unacknowledged page", () => {
  const w = new SendWindow(0, 8);
  assert.equal(w.nextSeq, 1);
  w.push(run(1, 3));
  w.push(run(4, 2));
  assert.deepEqual(starts(w.take(3, 1 << 20)), [1], "whole runs, within the page budget (one at least)");
  assert.deepEqual(starts(w.take(8, 1 << 20)), [4]);
  assert.equal(w.hasUnsent, false);
  assert.equal(w.unacked, 5);
  assert.equal(w.hasRoom(4), false);
  assert.ok(w.ack(2, false), "an ack inside a run keeps the rest of it");
  assert.equal(w.unacked, 3);
  assert.ok(w.hasRoom(4));
  w.push(run(6, 2));
  assert.deepEqual(starts(w.take(8, 1 << 20)), [6]);
  // The host saw a gap after 3: everything after it goes again, once for that gap.
  assert.ok(w.ack(3, true));
  const again = w.take(8, 1 << 20);
  assert.deepEqual(starts(again), [4, 6]);
  assert.ok(w.ack(3, true));
  assert.equal(w.hasUnsent, false, "a second resend request for the same gap is ignored");
  assert.ok(w.stats.resent >= 4);
});

test("runAfter cuts a run after a page, without copying", () => {
  const r = run(10, 4, 20);
  const rest = runAfter(r, 11);
  assert.equal(rest.firstSeq, 12);
  assert.equal(rest.count, 2);
  assert.equal(rest.data.length, PS + 20);
  assert.equal(rest.data[0], 12);
  assert.equal(rest.data.buffer, r.data.buffer);
});

test("an ack for a page never sent is refused and counted", () => {
  const w = new SendWindow(1, 8);
  w.push(run(1, 2));
  w.push(run(3, 1));
  w.take(2, 1 << 20);
  assert.equal(w.ack(3, false), false);
  assert.equal(w.stats.badAcks, 1);
  assert.equal(w.unacked, 3);
});

test("take keeps to the byte budget but always makes progress", () => {
  const w = new SendWindow(0, 64);
  w.push(run(1, 10));
  w.push(run(11, 10));
  assert.deepEqual(starts(w.take(64, 100)), [1], "one run even if it alone is over the budget");
  assert.deepEqual(starts(w.take(64, 100)), [11]);
});

test("a failed send puts the runs back; a stall rewinds; a run that does not follow is a bug", () => {
  const w = new SendWindow(0, 16, 10);
  assert.equal(w.nextSeq, 11, "continues after what the host already holds");
  w.push(run(11, 3));
  w.push(run(14, 1));
  const sent = w.take(16, 1 << 20);
  w.unsend(sent);
  assert.deepEqual(starts(w.take(16, 1 << 20)), [11, 14]);
  assert.equal(w.stalled(Date.now(), 60_000), false);
  assert.equal(w.stalled(Date.now() + 60_000, 60_000), true);
  w.rewind();
  assert.deepEqual(starts(w.take(16, 1 << 20)), [11, 14]);
  assert.throws(() => w.push(run(20, 1)), /does not follow/);
});

test("a pump waiting for room is released by an ack, or by abort", async () => {
  const w = new SendWindow(0, 2);
  w.push(run(1, 2));
  w.take(2, 1 << 20);
  let released = false;
  const waiting = w.waitForRoom(1, new AbortController().signal).then(() => (released = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(released, false);
  w.ack(1, false);
  await waiting;
  assert.equal(released, true);
  const ac = new AbortController();
  w.push(run(3, 1));
  const stuck = w.waitForRoom(1, ac.signal);
  ac.abort();
  await stuck;
});
