/**
 * The built-in probe groups (valid specs, every event documented), the
 * requirement check that names what a guest's kernel lacks, and the agent-loss
 * timing.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { createLogger, ring, specEventNames, validateProbeSpec } from "@vesper/protocol";
import { AgentWatch, builtinProbeDocs, missingRequirements, parseProbeFile, ProbeLibrary } from "../src/index.js";

const caps = (over: Partial<ring.Capabilities> = {}): ring.Capabilities => ({
  kprobes: true,
  uprobes: false,
  btf: false,
  cpus: 1,
  tracepoints: [],
  pageSize: 4096,
  ...over,
});

test("the library has the process, memory, network, storage and kernel groups, each valid and documented", async () => {
  const lib = await ProbeLibrary.load(undefined, createLogger("test"));
  for (const name of ["process", "memory", "network", "storage", "kernel"]) {
    const e = lib.get(name);
    assert.equal(e.source, "builtin");
    validateProbeSpec(e.spec);
    const produced = specEventNames(e.spec).sort();
    assert.deepEqual(e.events.map((d) => d.name).sort(), produced, `${name}: one doc per event`);
    for (const d of e.events) {
      assert.ok(d.doc.length > 10, `${name} ${d.name}: documented`);
      assert.ok(d.fields.length > 0, `${name} ${d.name}: fields documented`);
    }
  }
  assert.equal(builtinProbeDocs.length, lib.list().length);
  const net = lib.get("network").spec;
  assert.equal(net.tracepoints.find((t) => t.event === "inet_sock_set_state")?.filter, "oldstate == 10");
  assert.ok(lib.get("memory").spec.tracepoints.some((t) => `${t.system}:${t.event}` === "oom:mark_victim"));
  assert.ok(lib.get("storage").spec.tracepoints.some((t) => `${t.system}:${t.event}` === "block:block_rq_error"));
});

test("missingRequirements names every missing tracepoint and the lack of kprobes", async () => {
  const lib = await ProbeLibrary.load(undefined, createLogger("test"));
  const memory = lib.get("memory").spec;
  assert.deepEqual(missingRequirements(memory, caps({ tracepoints: ["oom:mark_victim", "sched:sched_process_exit"] })), []);
  const m = missingRequirements(memory, caps({ kprobes: false, tracepoints: ["sched:sched_process_exit"] }));
  assert.equal(m.length, 2);
  assert.match(m[0]!, /^kprobes \(CONFIG_KPROBE_EVENTS\), needed for vesper_memory\/oom_kill on oom_kill_process/);
  assert.equal(m[1], "tracepoint oom:mark_victim");
  // No tracepoint list in Hello: the guest's own checks decide.
  assert.deepEqual(missingRequirements(lib.get("network").spec, caps()), []);
  assert.deepEqual(missingRequirements(memory, undefined), []);
});

test("missingRequirements names the lack of uprobes, with each uprobe and its file", () => {
  const spec = parseProbeFile(JSON.stringify({ name: "ticks", uprobes: [{ name: "tick", path: "/opt/app/bin/app", symbol: "tick" }] }), "ticks.json");
  assert.deepEqual(missingRequirements(spec, caps({ uprobes: true })), []);
  assert.deepEqual(missingRequirements(spec, caps({ uprobes: false })), ["uprobes (CONFIG_UPROBE_EVENTS), needed for vesper_ticks/tick in /opt/app/bin/app"]);
});

test("agent loss: reported once after lostAfterMs of silence, back once on the next message", () => {
  const w = new AgentWatch(1_000);
  assert.equal(w.seen("g", 0, "boot1"), undefined);
  assert.deepEqual(w.check(500), []);
  assert.equal(w.seen("g", 900), undefined); // heartbeat
  assert.deepEqual(w.check(1_899), []);
  const lost = w.check(1_900);
  assert.deepEqual(lost, [{ guest: "g", lastSeenMs: 900, silentMs: 1_000, bootId: "boot1" }]);
  assert.ok(w.isLost("g"));
  assert.deepEqual(w.check(5_000), [], "reported once");
  const back = w.seen("g", 6_000, "boot1");
  assert.deepEqual(back, { guest: "g", silentMs: 5_100, rebooted: false, bootId: "boot1", lostAtMs: 1_900 });
  assert.equal(w.seen("g", 6_100), undefined, "back once");
  assert.deepEqual(w.check(7_000), []);
  assert.equal(w.check(7_100).length, 1, "a second silence is a second loss");
  const b2 = w.seen("g", 8_000, "boot2");
  assert.equal(b2?.rebooted, true);
  assert.equal(b2?.bootId, "boot2");
  assert.throws(() => new AgentWatch(0));
});

test("agent loss is per guest", () => {
  const w = new AgentWatch(100);
  w.seen("a", 0);
  w.seen("b", 50);
  assert.deepEqual(w.check(100).map((l) => l.guest), ["a"]);
  assert.deepEqual(w.check(150).map((l) => l.guest), ["b"]);
  w.forget("a");
  assert.equal(w.seen("a", 200), undefined, "a forgotten guest starts over");
});
