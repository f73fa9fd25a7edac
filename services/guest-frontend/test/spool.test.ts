import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { ring } from "@vesper/protocol";
import { ProbeSpool } from "../src/spool.js";

const spec = ring.ProbeSpec.fromPartial({ name: "exits", tracepoints: [{ system: "sched", event: "sched_process_exit", filter: "" }], delivery: ring.DeliveryMode.DELIVERY_MODE_URGENT });
const page = (seq: number, len = 4096): Buffer => Buffer.alloc(len, seq & 0xff);

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "vesper-spool-"));
}

test("a killed frontend's successor gets back the newest run of pages per CPU, with the load", () => {
  const root = tmp();
  const s = ProbeSpool.create(root, { spec, loadId: 77n, instance: "vesper-exits", cpus: 2, pageSize: 4096, slots: 4 });
  // CPU 0 wraps around its 4 slots: 1..6 written, slots hold 3..6.
  s.write(0, [1, 2, 3].map((n) => ({ seq: BigInt(n), page: page(n) })));
  s.write(0, [4, 5, 6].map((n) => ({ seq: BigInt(n), page: page(n, 100) })));
  s.close(); // the process dies here
  const found = ProbeSpool.recover(root, (p, e) => assert.fail(`${p}: ${e.message}`));
  assert.equal(found.length, 1);
  const r = found[0]!;
  assert.equal(r.meta.loadId, 77n);
  assert.deepEqual(ring.ProbeSpec.toJSON(r.meta.spec), ring.ProbeSpec.toJSON(spec));
  assert.deepEqual(r.pages.get(0)!.map((p) => p.seq), [3n, 4n, 5n, 6n]);
  assert.equal(r.pages.get(0)![1]!.page.length, 100, "partial pages come back at their length");
  assert.deepEqual(r.pages.get(0)![1]!.page, page(4, 100));
  assert.deepEqual(r.pages.get(1), []);
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
