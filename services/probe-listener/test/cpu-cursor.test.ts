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
