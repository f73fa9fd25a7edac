/**
 * Decodes pages captured from a real kernel by capture-host-fixture.ts
 * (fixtures/host-<uname -r>/) and checks the known children are there.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { PageDecoder, parseEventFormat, parseHeaderPage, type DecodedEvent } from "../src/ftrace/index.js";

const fixturesDir = path.join(path.dirname(fileURLToPath(import.meta.url)), "fixtures");
const hostDirs = fs.existsSync(fixturesDir) ? fs.readdirSync(fixturesDir).filter((d) => d.startsWith("host-")) : [];

interface HostExpected {
  kernel: string;
  pageSize: number;
  formats: string[];
  pages: { file: string; cpu: number; bytes: number }[];
  tracerPid: number;
  sleep: { pid: number; comm: string; killSignal: number };
  shExit3: { pid: number; comm: string; exitCode: number };
  longExec: { pid: number; filename: string };
}

for (const dirName of hostDirs) {
  const dir = path.join(fixturesDir, dirName);
  describe(`host fixture ${dirName}`, () => {
    const exp = JSON.parse(fs.readFileSync(path.join(dir, "expected.json"), "utf8")) as HostExpected;
    const header = parseHeaderPage(fs.readFileSync(path.join(dir, "header_page"), "utf8"));
    const formats = exp.formats.map((f) => parseEventFormat(fs.readFileSync(path.join(dir, f), "utf8"), f.split("/")[1]!));
    const decoder = new PageDecoder(formats, header);
    const perCpu = new Map<number, DecodedEvent[]>();
    const all: DecodedEvent[] = [];
    const pageResults = exp.pages.map((p) => {
      const d = decoder.decode(fs.readFileSync(path.join(dir, p.file)));
      const list = perCpu.get(p.cpu) ?? [];
      list.push(...d.events);
      perCpu.set(p.cpu, list);
      all.push(...d.events);
      return d;
    });

    it("decodes every page without errors", () => {
      assert.ok(pageResults.length > 0);
      for (const [i, d] of pageResults.entries()) {
        assert.deepEqual(d.errors, [], exp.pages[i]!.file);
        assert.equal(d.missedEvents, 0);
        assert.ok(d.events.length > 0);
      }
    });

    it("has non-decreasing timestamps per CPU, starting at or after each page's stamp", () => {
      for (const d of pageResults) if (d.events[0]) assert.ok(d.events[0].ts >= d.timestamp);
      for (const [cpu, evs] of perCpu) {
        for (let i = 1; i < evs.length; i++) assert.ok(evs[i]!.ts >= evs[i - 1]!.ts, `cpu${cpu} event ${i}`);
      }
    });

    it("finds the SIGKILLed sleep: signal_deliver sig=9, then its exit with pid and comm", () => {
      const sig = all.find((e) => e.name === "signal_deliver" && e.pid === exp.sleep.pid);
      assert.ok(sig, "signal_deliver for sleep");
      assert.equal(sig.fields.sig, BigInt(exp.sleep.killSignal));
      const exit = all.find((e) => e.name === "sched_process_exit" && e.fields.pid === BigInt(exp.sleep.pid));
      assert.ok(exit, "sched_process_exit for sleep");
      assert.equal(exit.fields.comm, exp.sleep.comm);
      assert.equal(exit.pid, exp.sleep.pid);
      assert.equal(exit.system, "sched");
      assert.ok(exit.ts >= sig.ts);
      const exec = all.find((e) => e.name === "sched_process_exec" && e.pid === exp.sleep.pid);
      assert.match(String(exec?.fields.filename), /\/sleep$/);
    });

    it("finds the fork of each child by the tracer", () => {
      for (const pid of [exp.sleep.pid, exp.shExit3.pid, exp.longExec.pid]) {
        const fork = all.find((e) => e.name === "sched_process_fork" && e.fields.child_pid === BigInt(pid));
        assert.ok(fork, `fork of ${pid}`);
        assert.equal(fork.fields.parent_pid, BigInt(exp.tracerPid));
      }
    });

    it("finds sh's exit and the long-path exec (a type_len 0 record)", () => {
      const exit = all.find((e) => e.name === "sched_process_exit" && e.fields.pid === BigInt(exp.shExit3.pid));
      assert.equal(exit?.fields.comm, exp.shExit3.comm);
      const exec = all.find((e) => e.name === "sched_process_exec" && e.pid === exp.longExec.pid);
      assert.equal(exec?.fields.filename, exp.longExec.filename);
      assert.ok(exp.longExec.filename.length > 112);
    });
  });
}

it("has at least one host fixture", () => {
  assert.ok(hostDirs.length > 0, "run capture-host-fixture.ts as root");
});
