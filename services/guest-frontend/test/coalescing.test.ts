/** When an urgent reader waits before its next read: not for one exit's two events, more and more under a stream. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { CoalescingDelay } from "../src/tracefs/coalescing.js";

const opts = { windowMs: 20, delayMs: 10, maxDelayMs: 100 };

test("one exit's two pages (2 ms apart) arm no wait; the next exit 5 ms later goes out at once", () => {
  const c = new CoalescingDelay(opts);
  assert.equal(c.afterRead(1000), 0); // do_exit kprobe
  assert.equal(c.afterRead(1002), 0); // sched_process_exit
  assert.equal(c.afterRead(1030), 0); // another process, after a quiet 28 ms
});

test("a stream of events waits 10 ms from the third fast read, doubling to 100 ms", () => {
  const c = new CoalescingDelay(opts);
  let t = 0;
  const waits: number[] = [];
  for (let i = 0; i < 9; i++) {
    const w = c.afterRead(t);
    waits.push(w);
    t += w + 1; // the next page is there as soon as we read again
  }
  assert.deepEqual(waits, [0, 0, 10, 10, 20, 40, 80, 100, 100]);
});

test("a quiet spell longer than the window ends the streak: the next event goes at once", () => {
  const c = new CoalescingDelay(opts);
  for (const t of [0, 1, 2, 3]) c.afterRead(t);
  assert.ok(c.afterRead(4) > 0);
  // quiet: 4 + its wait (20) + more than the window
  assert.equal(c.afterRead(60), 0);
  assert.equal(c.afterRead(61), 0);
});

test("our own wait does not count as quiet: after waiting 40 ms, a read that finds data keeps the streak", () => {
  const c = new CoalescingDelay({ windowMs: 20, delayMs: 10, maxDelayMs: 1000 });
  let t = 0;
  let w = 0;
  for (let i = 0; i < 6; i++) {
    w = c.afterRead(t);
    t += w + 5;
  }
  assert.equal(w, 40);
  assert.equal(c.afterRead(t), 80); // t = previous read + 40 ms wait + 5 ms: fast
});

test("a wait that caught fewer than one event per window ends the streak: the next event goes at once", () => {
  const c = new CoalescingDelay(opts);
  let t = 0;
  for (let i = 0; i < 3; i++) t += c.afterRead(t, 1) + 5; // a burst: the third read arms 10 ms
  assert.equal(c.eventsToGoOn, 1);
  assert.equal(c.afterRead(t, 2), 10); // 2 events in 10 ms: still fast
  t += 10 + 1;
  assert.equal(c.afterRead(t, 1), 20); // one in 10 ms: still fast, doubles
  t += 20 + 1;
  assert.equal(c.eventsToGoOn, 1);
  assert.equal(c.afterRead(t, 1), 40); // one event per 20 ms window: goes on
  t += 40 + 1;
  assert.equal(c.eventsToGoOn, 2);
  assert.equal(c.afterRead(t, 1), 0, "one event in 40 ms is a trickle (25/s): no wait, no doubling to 80");
  assert.equal(c.eventsToGoOn, 0);
  assert.equal(c.afterRead(t + 30, 1), 0);
});

test("a stream faster than one event per window still waits up to the maximum", () => {
  const c = new CoalescingDelay(opts);
  let t = 0;
  const waits: number[] = [];
  for (let i = 0; i < 9; i++) {
    const w = c.afterRead(t, c.eventsToGoOn * 3); // three times the rate that keeps it going
    waits.push(w);
    t += w + 1;
  }
  assert.deepEqual(waits, [0, 0, 10, 10, 20, 40, 80, 100, 100]);
});
