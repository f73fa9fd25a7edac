/** Batched events-stream messages round-trip; single records stay readable as before. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { api } from "@vesper/protocol";
import { EventBatchWriter, recordsOf, BATCH_HEADER } from "../src/events-batch.js";

const ev = (pid: number): api.WatchEventsResponse =>
  api.WatchEventsResponse.fromPartial({ kind: { $case: "event", value: { guest: "g", probe: "p", event: "sched/x", pid, ts: BigInt(pid) * 10n } } });

test("a batch carries its records in order, and a single record needs no header", () => {
  const w = new EventBatchWriter();
  const recs = [ev(1), api.WatchEventsResponse.fromPartial({ kind: { $case: "loss", value: { guest: "g", probe: "p", cpu: 1, kernelLost: 5n } } }), ev(3)];
  for (const r of recs) w.add(r);
  const { data, headers } = w.finish();
  assert.equal(headers.get(BATCH_HEADER), "3");
  assert.deepEqual(recordsOf(data, headers), recs);
  assert.equal(w.count, 0);
  const single = api.WatchEventsResponse.encode(ev(7)).finish();
  assert.deepEqual(recordsOf(single), [ev(7)]);
});
