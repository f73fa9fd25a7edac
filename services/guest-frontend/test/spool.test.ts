import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { ring } from "@vesper/protocol";
import type { OutRun } from "../src/send-window.js";
import { ProbeSpool } from "../src/spool.js";

const PS = 4096;
const spec = ring.ProbeSpec.fromPartial({ name: "exits", tracepoints: [{ system: "sched", event: "sched_process_exit", filter: "" }], delivery: ring.DeliveryMode.DELIVERY_MODE_URGENT });

function run(firstSeq: number, count: number, lastLength = PS): OutRun {
  const data = Buffer.alloc((count - 1) * PS + lastLength);
  for (let k = 0; k < count; k++) data.fill((firstSeq + k) & 0xff, k * PS, Math.min(data.length, (k + 1) * PS));
  return { firstSeq, count, pageSize: PS, lastLength, data };
}

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "vesper-spool-"));
}

test("a killed frontend's successor gets back the newest chain of runs per CPU, with the load", () => {
  const root = tmp();
  const s = ProbeSpool.create(root, { spec, loadId: 77n, instance: "vesper-exits", cpus: 2, pageSize: PS, slots: 6 });
  // CPU 0: runs 1-3, 4-5, 6-8 (wraps the 6 slots), 9 (one short page). Slots now hold 4..9.
  for (const r of [run(1, 3), run(4, 2), run(6, 3), run(9, 1, 100)]) s.write(0, r);
  s.close(); // the process dies here
  const found = ProbeSpool.recover(root, (p, e) => assert.fail(`${p}: ${e.message}`));
  assert.equal(found.length, 1);
  const r = found[0]!;
  assert.equal(r.meta.loadId, 77n);
  assert.deepEqual(ring.ProbeSpec.toJSON(r.meta.spec), ring.ProbeSpec.toJSON(spec));
  const runs = r.runs.get(0)!;
  assert.deepEqual(runs.map((x) => [x.firstSeq, x.count]), [[4, 2], [6, 3], [9, 1]], "run 1-3 was overwritten: the chain stops before it");
  assert.deepEqual(runs[1]!.data, run(6, 3).data, "a run that wrapped around comes back whole");
  assert.equal(runs[2]!.data.length, 100, "the last page at its length");
  assert.deepEqual(r.runs.get(1), []);
  r.spool.remove();
  assert.deepEqual(fs.readdirSync(root), []);
});

test("a spool without meta or with a bad one is discarded and reported", () => {
  const root = tmp();
  fs.mkdirSync(path.join(root, "half"));
  fs.mkdirSync(path.join(root, "liar"));
  fs.writeFileSync(path.join(root, "liar", "meta.json"), JSON.stringify({ spec: { name: "other" }, loadId: "1", cpus: 1, pageSize: 4096, slots: 4 }));
  const bad: string[] = [];
  assert.deepEqual(ProbeSpool.recover(root, (p) => bad.push(p)), []);
  assert.deepEqual(bad.sort(), ["half", "liar"]);
  assert.deepEqual(fs.readdirSync(root), []);
});
