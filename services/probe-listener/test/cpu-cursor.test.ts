import assert from "node:assert/strict";
import { test } from "node:test";
import { CpuCursor } from "../src/cpu-cursor.js";

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

test("in order: taken; behind: duplicate; ahead: refused until the gap timeout, then reported lost", async () => {
  const c = new CpuCursor(0n);
  assert.deepEqual(c.offer(1n, 0, 1000), { kind: "take", pagesLost: 0n });
  assert.deepEqual(c.offer(1n, 0, 1000), { kind: "duplicate" });
  assert.deepEqual(c.offer(4n, 100, 1000), { kind: "ahead" });
  assert.deepEqual(c.offer(4n, 900, 1000), { kind: "ahead" }, "the timeout counts from the first refusal");
  assert.deepEqual(c.offer(4n, 1100, 1000), { kind: "take", pagesLost: 2n });
  assert.equal(c.next, 5n);
  await tick();
  assert.equal(c.durable, 3n, "the lost pages no longer hold the watermark back");
});

test("durable moves in page order, only when stored; a failed store rewinds to the watermark", async () => {
  const c = new CpuCursor(10n);
  assert.equal(c.next, 11n, "starts after what the guest says the host holds");
  let release!: () => void;
  const slow = new Promise<void>((r) => (release = r));
  const done: Array<[bigint, boolean]> = [];
  c.offer(11n, 0, 1000);
  c.whenStored(11n, slow, (ok) => done.push([11n, ok]));
  c.offer(12n, 0, 1000);
  c.whenStored(12n, Promise.resolve(), (ok) => done.push([12n, ok]));
  await tick();
  assert.equal(c.durable, 10n, "12 is stored but 11 is not yet");
  release();
  await tick();
  await tick();
  assert.equal(c.durable, 12n);
  assert.deepEqual(done, [[11n, true], [12n, true]]);

  c.offer(13n, 0, 1000);
  c.whenStored(13n, Promise.reject(new Error("no JetStream")), (ok) => done.push([13n, ok]));
  c.offer(14n, 0, 1000);
  c.whenStored(14n, Promise.resolve(), (ok) => done.push([14n, ok]));
  for (let i = 0; i < 4; i++) await tick();
  assert.equal(c.durable, 12n);
  assert.equal(c.next, 13n, "the resend of 13 will be taken");
  assert.deepEqual(done.slice(2), [[13n, false]], "14's completion came from before the failure: ignored");
  assert.deepEqual(c.offer(13n, 0, 1000), { kind: "take", pagesLost: 0n });
});

test("events are counted up to each page taken; a failed store rewinds the count with the seq", async () => {
  const c = new CpuCursor(0n);
  c.offer(1n, 0, 1000);
  c.count(1n, 3);
  c.offer(2n, 0, 1000);
  c.count(2n, 4);
  assert.equal(c.eventsUpTo(2n), 7n);
  assert.equal(c.eventsUpTo(1n), 3n, "a recent page's count is remembered");
  c.whenStored(2n, Promise.resolve(), () => undefined);
  await tick();
  await tick();
  assert.equal(c.eventsDurable, 7n, "the ack carries the count up to its seq");
  c.offer(3n, 0, 1000);
  c.count(3n, 5);
  c.whenStored(3n, Promise.reject(new Error("no JetStream")), () => undefined);
  for (let i = 0; i < 3; i++) await tick();
  assert.equal(c.eventsTaken, 7n, "page 3 comes again and is counted then");
  c.offer(3n, 0, 1000);
  c.count(3n, 5);
  assert.equal(c.eventsUpTo(3n), 12n, "the newest count of a page taken twice");
});

test("a cursor from a guest's hint counts only when the hint carries a count; a page given up on stops counting", () => {
  assert.equal(new CpuCursor(0n).eventsTaken, 0n, "a fresh load starts at 0");
  assert.equal(new CpuCursor(9n).eventsTaken, undefined, "a hint without a count");
  assert.equal(new CpuCursor(9n, 40n).eventsUpTo(9n), 40n);
  const c = new CpuCursor(0n);
  c.offer(1n, 0, 1000);
  c.count(1n, 2);
  assert.equal(c.offer(3n, 100, 10).kind, "ahead");
  assert.deepEqual(c.offer(3n, 200, 10), { kind: "take", pagesLost: 1n }, "page 2 given up on: its events are unknown");
  c.count(3n, 1);
  assert.equal(c.eventsUpTo(3n), undefined);
});

test("an adopting guest's skip moves a cursor inside it to its end, nothing lost; outside it, nothing moves", async () => {
  const c = new CpuCursor(0n);
  for (const s of [1n, 2n, 3n]) {
    c.offer(s, 0, 1000);
    c.count(s, 1);
  }
  // The predecessor sent page 3 but its spool ends at 2: the new frontend skips 3 .. 1026.
  assert.equal(c.skip(3n, 1027n), true);
  assert.equal(c.next, 1027n);
  assert.deepEqual(c.offer(1027n, 0, 1000), { kind: "take", pagesLost: 0n });
  assert.equal(c.eventsUpTo(1026n), 3n, "the count at the skip's end, for the adoption's read check");
  await tick();
  assert.ok(c.durable >= 1026n);
  const behind = new CpuCursor(0n);
  assert.equal(behind.skip(5n, 100n), false, "pages before the skip are still coming: no jump");
  assert.equal(behind.next, 1n);
});

test("a loss reported at a seq counts as accounted for there and after, not before", () => {
  const c = new CpuCursor(0n);
  for (const s of [1n, 2n, 3n]) {
    c.offer(s, 0, 1000);
    c.count(s, 10);
  }
  c.account(2n, 5n);
  assert.equal(c.eventsUpTo(1n), 10n);
  assert.equal(c.eventsUpTo(2n), 25n);
  assert.equal(c.eventsUpTo(3n), 35n);
  assert.equal(c.eventsTaken, 35n);
});
