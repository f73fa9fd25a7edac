import assert from "node:assert/strict";
import { test } from "node:test";
import { KeyedSerial } from "../src/keyed-serial.js";

/** A task that finishes when told to, recording when it starts. */
function gate(log: string[], name: string): { task: () => Promise<void>; open: () => void } {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return {
    task: async () => {
      log.push(`start ${name}`);
      await opened;
      log.push(`end ${name}`);
    },
    open,
  };
}

test("tasks of one key run in order, one at a time; another key does not wait for them", async () => {
  const q = new KeyedSerial();
  const log: string[] = [];
  const a1 = gate(log, "a1");
  const a2 = gate(log, "a2");
  const b1 = gate(log, "b1");
  const pa1 = q.run("a", a1.task);
  const pa2 = q.run("a", a2.task);
  const pb1 = q.run("b", b1.task);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(log, ["start a1", "start b1"], "a2 waits for a1; b1 does not wait for a");
  assert.equal(q.pending("a"), 2);
  b1.open();
  await pb1;
  assert.equal(q.pending("b"), 0);
  a1.open();
  await pa1;
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(log, ["start a1", "start b1", "end b1", "end a1", "start a2"]);
  a2.open();
  await pa2;
  assert.equal(q.size, 0, "drained keys are forgotten");
});

test("a failing task rejects its own promise and the key's next task still runs", async () => {
  const q = new KeyedSerial();
  const ran: string[] = [];
  const bad = q.run("k", async () => {
    throw new Error("boom");
  });
  const good = q.run("k", async () => void ran.push("after"));
  await assert.rejects(bad, /boom/);
  await good;
  assert.deepEqual(ran, ["after"]);
  assert.equal(q.pending("k"), 0);
  assert.equal(q.size, 0);
});
