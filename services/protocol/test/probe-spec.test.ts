import assert from "node:assert/strict";
import { test } from "node:test";
import { applyProbeOptions, ring, specEventNames, validateProbeSpec, VesperError } from "../src/index.js";

const base = (): ring.ProbeSpec => ({
  name: "web",
  description: "",
  kprobes: [{ name: "exit", symbol: "do_exit", offset: 0n, fetchArgs: ["code=%di:s64", "comm=$comm"], isReturn: false, filter: "", waitStatusArg: "code" }],
  tracepoints: [{ system: "sched", event: "sched_process_exit", filter: 'comm == "httpd"' }],
  bufferKbPerCpu: 0,
  delivery: ring.DeliveryMode.DELIVERY_MODE_UNSPECIFIED,
  flushIntervalMs: 0,
});

const invalid = (mutate: (s: ring.ProbeSpec) => void, re: RegExp): void => {
  const s = base();
  mutate(s);
  assert.throws(() => validateProbeSpec(s), (e: unknown) => e instanceof VesperError && e.code === "INVALID_SPEC" && re.test(e.message));
};

test("a good spec gets its defaults", () => {
  const s = validateProbeSpec(base());
  assert.equal(s.delivery, ring.DeliveryMode.DELIVERY_MODE_URGENT);
  assert.equal(s.bufferKbPerCpu, 1024);
  assert.equal(s.flushIntervalMs, 200);
  assert.deepEqual(specEventNames(s), ["vesper_web/exit", "sched/sched_process_exit"]);
});

test("names that could escape tracefs paths or commands are refused", () => {
  invalid((s) => (s.name = "../x"), /name must/);
  invalid((s) => (s.name = "Web"), /name must/);
  invalid((s) => (s.kprobes[0]!.symbol = "do_exit\np:evil/x do_fork"), /not a kernel symbol/);
  invalid((s) => (s.kprobes[0]!.name = "a b"), /not an identifier/);
  invalid((s) => (s.tracepoints[0]!.system = "../../x"), /not system:event/);
});

test("fetch args must be name=fetcharg[:type] with known types", () => {
  invalid((s) => (s.kprobes[0]!.fetchArgs = ["code=%di:s64 extra"]), /fetch arg/);
  invalid((s) => (s.kprobes[0]!.fetchArgs = ["code=%di:float"]), /fetch arg/);
  invalid((s) => (s.kprobes[0]!.fetchArgs = ["code=%di", "code=%si"]), /used twice/);
  invalid((s) => (s.kprobes[0]!.waitStatusArg = "nosuch"), /names no fetch arg/);
  const ok = base();
  ok.kprobes[0]!.fetchArgs = ["a=+0(%di):u32", "b=$arg1", "c=@jiffies", "d=$stack0:x64", "e=+8(+0(%si)):string", "f=$retval"];
  ok.kprobes[0]!.waitStatusArg = "";
  validateProbeSpec(ok);
});

test("filters stay on one printable line; sizes and modes are bounded", () => {
  invalid((s) => (s.tracepoints[0]!.filter = "pid == 1\n1"), /filter/);
  invalid((s) => (s.bufferKbPerCpu = 1), /buffer_kb_per_cpu/);
  invalid((s) => (s.delivery = 9 as ring.DeliveryMode), /delivery/);
  invalid((s) => ((s.kprobes = []), (s.tracepoints = [])), /no kprobe and no tracepoint/);
  invalid((s) => (s.tracepoints = [s.tracepoints[0]!, { ...s.tracepoints[0]! }]), /listed twice/);
});

test("insmod options override delivery, buffer and per-event filters", () => {
  const s = applyProbeOptions(validateProbeSpec(base()), { delivery: "bulk", buffer_kb: "64", flush_ms: "50", "filter.sched_process_exit": "pid > 1", "filter.exit": "code != 0" });
  assert.equal(s.delivery, ring.DeliveryMode.DELIVERY_MODE_BULK);
  assert.equal(s.bufferKbPerCpu, 64);
  assert.equal(s.flushIntervalMs, 50);
  assert.equal(s.tracepoints[0]!.filter, "pid > 1");
  assert.equal(s.kprobes[0]!.filter, "code != 0");
  assert.throws(() => applyProbeOptions(base(), { colour: "red" }), /unknown option "colour"/);
  assert.throws(() => applyProbeOptions(base(), { "filter.nosuch": "1" }), /has no event "nosuch"/);
  assert.throws(() => applyProbeOptions(base(), { buffer_kb: "lots" }), /whole number/);
});
