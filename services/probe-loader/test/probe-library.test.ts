import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { createLogger, ring } from "@vesper/protocol";
import { parseProbeFile, ProbeLibrary } from "../src/index.js";

test("probe files are validated like any spec: unknown keys, bad fetch args and bad JSON are refused", () => {
  assert.throws(() => parseProbeFile("{", "p.json"), /p.json: not valid JSON/);
  assert.throws(() => parseProbeFile(JSON.stringify({ name: "x", tracepoints: [{ system: "sched", event: "sched_switch" }], shell: "rm -rf /" }), "p.json"), /unknown key "shell"/);
  assert.throws(
    () => parseProbeFile(JSON.stringify({ name: "x", kprobes: [{ name: "e", symbol: "do_exit", fetchArgs: ["a=%di\n-:vesper_other/e"] }] }), "p.json"),
    /fetch arg/,
  );
  const s = parseProbeFile(JSON.stringify({ name: "x", tracepoints: [{ system: "sched", event: "sched_switch" }], delivery: "bulk" }), "p.json");
  assert.equal(s.delivery, ring.DeliveryMode.DELIVERY_MODE_BULK);
});

test("the library has the built-ins plus valid files; invalid files are skipped", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "vesper-lib-"));
  writeFileSync(path.join(dir, "good.json"), JSON.stringify({ name: "good", tracepoints: [{ system: "sched", event: "sched_switch" }] }));
  writeFileSync(path.join(dir, "bad.json"), JSON.stringify({ name: "Bad!", tracepoints: [] }));
  const lib = await ProbeLibrary.load(dir, createLogger("t", "silent"));
  const names = lib.list().map((e) => e.spec.name).sort();
  assert.ok(names.includes("process") && names.includes("good"));
  assert.ok(!names.includes("Bad!"));
  assert.throws(() => lib.get("nosuch"), /no probe named "nosuch".*known: /);
  assert.equal(lib.get("process").source, "builtin");
});
