import assert from "node:assert/strict";
import { test } from "node:test";
import { isVesperError, ErrorCode } from "@vesper/protocol";
import { LiveFeed, type LiveRecord } from "../src/live-feed.js";

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const text = (r: LiveRecord): string => new TextDecoder().decode(r.data);

async function take(it: AsyncIterator<LiveRecord>, n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await it.next();
    if (r.done) break;
    out.push(text(r.value));
  }
  return out;
}

test("a watcher gets what is offered after it started, filtered by guest and probe", async () => {
  const feed = new LiveFeed();
  feed.offer("vesper.events.g1.p", bytes("before"), "id0");
  const all = feed.watch({}, { maxQueued: 10 });
  const g1 = feed.watch({ guest: "g1" }, { maxQueued: 10 });
  const g2p = feed.watch({ guest: "g2", probe: "p" }, { maxQueued: 10 });
  feed.offer("vesper.events.g1.p", bytes("a"), "id1");
  feed.offer("vesper.events.g2.q", bytes("b"), "id2");
  feed.offer("vesper.events.g2.p", bytes("c"), "id3");
  assert.deepEqual(await take(all, 3), ["a", "b", "c"]);
  assert.deepEqual(await take(g1, 1), ["a"]);
  assert.deepEqual(await take(g2p, 1), ["c"]);
  assert.equal(feed.stats.offered, 3);
});

test("a record offered again with the same message id reaches watchers once", async () => {
  const feed = new LiveFeed();
  const w = feed.watch({}, { maxQueued: 10 });
  feed.offer("vesper.events.g.p", bytes("x"), "same");
  feed.offer("vesper.events.g.p", bytes("x"), "same");
  feed.offer("vesper.events.g.p", bytes("y"), "other");
  assert.deepEqual(await take(w, 2), ["x", "y"]);
  assert.equal(feed.stats.repeats, 1);
});

test("a waiting watcher is woken by the next record", async () => {
  const feed = new LiveFeed();
  const w = feed.watch({}, { maxQueued: 1 });
  const next = w.next();
  feed.offer("vesper.events.g.p", bytes("z"), "1");
  const r = await next;
  assert.equal(r.done, false);
  assert.equal(text(r.value as LiveRecord), "z");
});

test("a watcher that falls behind gets what it holds, then an error; the others go on", async () => {
  const feed = new LiveFeed();
  const slow = feed.watch({}, { maxQueued: 2 });
  const fast = feed.watch({}, { maxQueued: 100 });
  for (let i = 0; i < 4; i++) feed.offer("vesper.events.g.p", bytes(`r${i}`), `id${i}`);
  assert.deepEqual(await take(slow, 2), ["r0", "r1"]);
  await assert.rejects(slow.next(), (e: unknown) => isVesperError(e, ErrorCode.Unavailable) && /fell more than 2 records behind/.test((e as Error).message));
  assert.equal((await slow.next()).done, true);
  assert.equal(feed.stats.overflows, 1);
  assert.equal(feed.watchers, 1);
  assert.deepEqual(await take(fast, 4), ["r0", "r1", "r2", "r3"]);
});

test("abort ends a watch, wakes its reader and unregisters it", async () => {
  const feed = new LiveFeed();
  const ac = new AbortController();
  const w = feed.watch({}, { maxQueued: 10, signal: ac.signal });
  assert.equal(feed.watchers, 1);
  const next = w.next();
  ac.abort();
  assert.equal((await next).done, true);
  assert.equal(feed.watchers, 0);
  feed.offer("vesper.events.g.p", bytes("late"), "late");
  assert.equal((await w.next()).done, true);
  // An already aborted signal never registers.
  feed.watch({}, { maxQueued: 10, signal: AbortSignal.abort() });
  assert.equal(feed.watchers, 0);
});

test("breaking out of for-await unregisters the watcher", async () => {
  const feed = new LiveFeed();
  const w = feed.watch({}, { maxQueued: 10 });
  feed.offer("vesper.events.g.p", bytes("1"), "1");
  for await (const r of w) {
    assert.equal(text(r), "1");
    break;
  }
  assert.equal(feed.watchers, 0);
});

test("message ids are remembered for a bounded window only", async () => {
  const feed = new LiveFeed();
  const w = feed.watch({}, { maxQueued: 100_000 });
  feed.offer("vesper.events.g.p", bytes("first"), "old");
  for (let i = 0; i < 20_000; i++) feed.offer("vesper.events.g.p", bytes("f"), `n${i}`);
  // Long forgotten: a record with that id now is new.
  feed.offer("vesper.events.g.p", bytes("again"), "old");
  assert.equal(feed.stats.offered, 20_002);
  const got = await take(w, 20_002);
  assert.equal(got[0], "first");
  assert.equal(got.at(-1), "again");
});
