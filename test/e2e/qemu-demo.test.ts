/**
 * End to end in a real QEMU guest: the demo flow as a test. A probe loaded from
 * the host sees httpd die of SIGKILL inside the guest, the decoded event reaches
 * a gRPC watcher with pid, comm and signal, and rmmod leaves the guest's tracefs
 * clean.
 */
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { test } from "node:test";
import { runDemo } from "../harness/demo-flow.js";

function intField(ev: { fields: Record<string, { kind?: { $case: string; value: unknown } }> }, name: string): bigint | undefined {
  const k = ev.fields[name]?.kind;
  return k?.$case === "int" || k?.$case === "uint" ? (k.value as bigint) : undefined;
}

test("a service killed inside a QEMU guest is reported to a gRPC watcher, and rmmod leaves nothing behind", { timeout: 600_000 }, async () => {
  const runDir = mkdtempSync("/tmp/vesper-e2e-");
  const guest = `e2e${process.pid}`;
  const r = await runDemo({ guest, runDir, say: (s) => process.stderr.write(`# ${s.replaceAll("\n", "\n# ")}\n`) });

  assert.equal(r.exitEvent.guest, guest);
  assert.equal(r.exitEvent.probe, "process");
  assert.equal(r.exitEvent.pid, r.httpdPid);
  assert.equal(r.exitEvent.comm, "httpd");
  assert.equal(intField(r.exitEvent, "signal"), 9n, "httpd was killed by SIGKILL");
  assert.equal(intField(r.exitEvent, "exit_code"), 0n);
  assert.ok(r.exitEvent.ts > 0n, "the event carries the guest's timestamp");

  assert.ok(r.schedExit !== undefined, "sched_process_exit of httpd reached the watcher too");
  assert.equal(r.schedExit.comm, "httpd");
  assert.equal(intField(r.schedExit, "pid"), BigInt(r.httpdPid));

  assert.equal(r.instancesAfter, "", "no tracefs instance left in the guest");
  assert.equal(r.kprobesAfter, "", "no kprobe left in the guest");
  assert.ok(r.cliOutput.some((o) => o.includes("insmod")), "the probe was loaded through the CLI");
});
