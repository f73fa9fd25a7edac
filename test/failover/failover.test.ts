/**
 * The failover evaluation as a test (part of `make test`, alone: make test-failover; about 2 minutes). Two-node Pacemaker clusters in namespaces, QEMU guests
 * with httpd (test/harness/failover-eval.ts):
 * - kill httpd inside the active guest: cluster B (Vesper) fails the service over to node2's guest and
 *   HTTP answers there again; cluster A (VM-level 10 s monitor) does not notice within 35 s.
 * - panic the active guest's kernel: both fail over.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { runScenario } from "../harness/failover-eval.js";
import { pacemakerInstalled } from "../harness/pacemaker.js";

const skip = process.getuid?.() !== 0 ? "needs root" : false;
// Not a skip: scripts/setup.sh installs them, so their absence is a broken setup.
if (!skip && !pacemakerInstalled()) throw new Error("corosync/pacemaker are not installed: run scripts/setup.sh (make test does)");
const RUN_DIR = "/tmp/vesper-failover-test";
const times: string[] = [];
after(() => {
  if (times.length) console.log(times.join("\n"));
});

describe("failover with Pacemaker", { skip, timeout: 900_000 }, () => {
  it("kill httpd: B (Vesper) fails over at once and HTTP answers from node2's guest", { timeout: 300_000 }, async () => {
    const r = await runScenario({ mode: "vesper", failure: "kill", runDir: RUN_DIR, windowMs: 60_000 });
    times.push(`B kill: event ${r.vesperEventMs} ms (${r.vesperEvent}), recovery ${r.recoveryMs} ms, HTTP ${r.httpMs} ms`);
    assert.deepEqual(r.finalLocation, ["node2"]);
    assert.ok(r.vesperEventMs !== undefined && r.vesperEventMs < 10_000, `Vesper event after ${r.vesperEventMs} ms`);
    assert.ok(r.recoveryMs !== undefined && r.recoveryMs < 15_000, `recovery after ${r.recoveryMs} ms`);
    assert.ok(r.httpMs !== undefined && r.httpMs < 30_000, `HTTP after ${r.httpMs} ms`);
    assert.deepEqual(r.notes, []);
    // the failure event says why
    assert.ok(r.why !== undefined, "a rules/failure event");
    assert.ok(["process", "network"].includes(r.why.trigger_probe ?? ""), JSON.stringify(r.why));
    assert.equal(r.why.comm, "httpd");
    assert.ok(Number(r.why.pid) > 0);
  });

  it("kill httpd: A (VM-level monitor) does not notice within 35 s", { timeout: 300_000 }, async () => {
    const r = await runScenario({ mode: "vm", failure: "kill", runDir: RUN_DIR, windowMs: 35_000 });
    times.push(`A kill: recovery ${r.recoveryMs ?? "never"}, HTTP from node2 ${r.httpMs ?? "never"} (35 s window)`);
    assert.equal(r.recoveryMs, undefined);
    assert.equal(r.httpMs, undefined);
    assert.deepEqual(r.finalLocation, ["node1"]);
  });

  it("guest panic: A and B both fail over", { timeout: 600_000 }, async () => {
    const a = await runScenario({ mode: "vm", failure: "panic", runDir: RUN_DIR, windowMs: 60_000 });
    const b = await runScenario({ mode: "vesper", failure: "panic", runDir: RUN_DIR, windowMs: 60_000 });
    times.push(`A panic: recovery ${a.recoveryMs} ms, HTTP ${a.httpMs} ms; B panic: event ${b.vesperEventMs} ms (${b.vesperEvent}), recovery ${b.recoveryMs} ms, HTTP ${b.httpMs} ms`);
    for (const r of [a, b]) {
      assert.deepEqual(r.finalLocation, ["node2"], `${r.mode}`);
      assert.ok(r.httpMs !== undefined && r.httpMs < 45_000, `${r.mode}: HTTP after ${r.httpMs} ms`);
    }
  });
});
