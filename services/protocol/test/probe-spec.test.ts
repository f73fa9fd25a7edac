import assert from "node:assert/strict";
import { test } from "node:test";
import { applyProbeOptions, ring, specEventNames, validateProbeSpec, VesperError } from "../src/index.js";

const base = (): ring.ProbeSpec => ({
  name: "web",
  description: "",
  uprobes: [],
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
  invalid((s) => ((s.kprobes = []), (s.tracepoints = [])), /no kprobe, uprobe or tracepoint/);
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

const uprobe = (p: Partial<ring.UprobeSpec> = {}): ring.UprobeSpec => ({
  name: "accept",
  path: "/usr/sbin/httpd",
  symbol: "accept_loop",
  offset: 0n,
  fetchArgs: ["fd=%di:s32"],
  isReturn: false,
  filter: "",
  ...p,
});

test("uprobes: a file and a symbol (or a file offset) in the probe's group, named apart from its kprobes", () => {
  const s = validateProbeSpec({ ...base(), uprobes: [uprobe(), uprobe({ name: "ret", symbol: "", offset: 0x1234n, isReturn: true, fetchArgs: ["r=$retval"] })] });
  assert.deepEqual(specEventNames(s), ["vesper_web/exit", "vesper_web/accept", "vesper_web/ret", "sched/sched_process_exit"]);
  validateProbeSpec({ ...base(), kprobes: [], tracepoints: [], uprobes: [uprobe({ symbol: "_ZN4node5StartEiPPc", offset: 4n })] });
  const bad = (u: Partial<ring.UprobeSpec>, re: RegExp): void => invalid((s) => (s.uprobes = [uprobe(u)]), re);
  bad({ path: "httpd" }, /absolute path/);
  bad({ path: "/usr/sbin/../../etc/shadow" }, /without \. or \.\./);
  bad({ path: "/usr/sbin/httpd /bin/sh:0x10" }, /absolute path/);
  bad({ path: "/usr/sbin/httpd\np:evil/x /bin/sh:0x10" }, /absolute path/);
  bad({ symbol: "accept loop" }, /not an ELF symbol/);
  bad({ symbol: "", offset: 0n }, /give a symbol, or the file offset/);
  bad({ offset: 0x10000n }, /offset out of range/);
  bad({ symbol: "", offset: 1n << 41n }, /offset out of range/);
  bad({ isReturn: true, offset: 4n }, /return probe/);
  bad({ fetchArgs: ["fd=%di extra"] }, /fetch arg/);
  bad({ filter: "fd > 0\n1" }, /filter/);
  bad({ name: "exit" }, /event name exit used twice/);
  invalid((s) => (s.uprobes = [uprobe(), uprobe()]), /used twice/);
});

test("insmod options set a uprobe's filter by its name", () => {
  const s = applyProbeOptions(validateProbeSpec({ ...base(), uprobes: [uprobe()] }), { "filter.vesper_web/accept": "fd > 2" });
  assert.equal(s.uprobes[0]!.filter, "fd > 2");
  assert.equal(s.kprobes[0]!.filter, "");
});
