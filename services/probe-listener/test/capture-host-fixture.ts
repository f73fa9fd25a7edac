/**
 * Captures raw ftrace pages from THIS machine's kernel as a decoder fixture.
 *
 *   sudo node --import tsx services/probe-listener/test/capture-host-fixture.ts
 *
 * Needs root and tracefs (mounted here if missing). Creates a private tracefs instance,
 * traces only this process and its children (set_event_pid + event-fork), enables
 * sched_process_{exit,exec,fork} and signal_deliver, then runs:
 *   - `sleep 30`, killed with SIGKILL,
 *   - `sh -c 'exit 3'`,
 *   - `true` exec'd through a path longer than 112 bytes, so its sched_process_exec record
 *     exceeds the 28-word small-record limit and is stored with type_len 0,
 *   - a shell loop running /bin/true 300 times (full pages for bench/decode).
 * Pages are read from per_cpu/cpuN/trace_pipe_raw (O_NONBLOCK, one sub-buffer per read, until
 * EAGAIN) and written, with the format files, header_page and expected.json, to
 * services/probe-listener/test/fixtures/host-<uname -r>/. The instance is always removed.
 */
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const TRACEFS = "/sys/kernel/tracing";
const EVENTS = [
  ["sched", "sched_process_exit"],
  ["sched", "sched_process_exec"],
  ["sched", "sched_process_fork"],
  ["signal", "signal_deliver"],
] as const;

const here = path.dirname(fileURLToPath(import.meta.url));
const outDir = path.join(here, "fixtures", `host-${os.release()}`);

function run(cmd: string, args: string[], onSpawn?: (pid: number) => void): Promise<{ pid: number; code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: "ignore" });
    child.once("error", reject);
    child.once("spawn", () => onSpawn?.(child.pid!));
    child.once("exit", (code, signal) => resolve({ pid: child.pid!, code, signal }));
  });
}

function write(file: string, value: string): void {
  fs.writeFileSync(file, value);
}

function readPages(instance: string, pageSize: number): { cpu: number; data: Buffer }[] {
  const pages: { cpu: number; data: Buffer }[] = [];
  const perCpu = path.join(instance, "per_cpu");
  const cpus = fs
    .readdirSync(perCpu)
    .filter((d) => /^cpu\d+$/.test(d))
    .map((d) => Number(d.slice(3)))
    .sort((a, b) => a - b);
  for (const cpu of cpus) {
    const fd = fs.openSync(path.join(perCpu, `cpu${cpu}`, "trace_pipe_raw"), fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    try {
      for (let i = 0; i < 4096; i++) {
        const buf = Buffer.alloc(pageSize);
        let n: number;
        try {
          n = fs.readSync(fd, buf, 0, pageSize, null);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "EAGAIN") break;
          throw err;
        }
        if (n === 0) break;
        pages.push({ cpu, data: buf.subarray(0, n) });
      }
    } finally {
      fs.closeSync(fd);
    }
  }
  return pages;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("run as root");
  if (!fs.existsSync(path.join(TRACEFS, "events"))) {
    if (spawnSync("mount", ["-t", "tracefs", "nodev", TRACEFS], { stdio: "inherit" }).status !== 0) {
      throw new Error(`cannot mount tracefs at ${TRACEFS}`);
    }
  }
  const subbufKb = fs.existsSync(path.join(TRACEFS, "buffer_subbuf_size_kb"))
    ? Number(fs.readFileSync(path.join(TRACEFS, "buffer_subbuf_size_kb"), "utf8").trim())
    : 4;
  const pageSize = subbufKb * 1024;

  const name = `vesper-fixture-${process.pid}`;
  const instance = path.join(TRACEFS, "instances", name);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vesper-fixture-"));
  fs.mkdirSync(instance);
  let pages: { cpu: number; data: Buffer }[] = [];
  const expected: Record<string, unknown> = {};
  try {
    write(path.join(instance, "buffer_size_kb"), "256");
    write(path.join(instance, "set_event_pid"), String(process.pid));
    write(path.join(instance, "options", "event-fork"), "1");
    for (const [sys, ev] of EVENTS) write(path.join(instance, "events", sys, ev, "enable"), "1");
    write(path.join(instance, "tracing_on"), "1");

    // 1. sleep 30, SIGKILLed once it runs.
    const sleep = await run("sleep", ["30"], (pid) => setTimeout(() => process.kill(pid, "SIGKILL"), 300));
    if (sleep.signal !== "SIGKILL") throw new Error(`sleep ended with ${sleep.code}/${sleep.signal}`);
    // 2. sh -c 'exit 3'.
    const sh = await run("sh", ["-c", "exit 3"]);
    if (sh.code !== 3) throw new Error(`sh exited ${sh.code}`);
    // 3. exec through a long path: sched_process_exec > 112 bytes => type_len 0 record.
    const longDir = path.join(tmp, "d".repeat(120));
    fs.mkdirSync(longDir);
    const longPath = path.join(longDir, "true");
    fs.copyFileSync(fs.realpathSync("/bin/true"), longPath);
    fs.chmodSync(longPath, 0o755);
    const tru = await run(longPath, []);
    if (tru.code !== 0) throw new Error(`true exited ${tru.code}`);

    // 4. Some load, so the fixture has full pages for the benchmark: 300 fork+exec+exit.
    const load = await run("sh", ["-c", "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done"]);
    if (load.code !== 0) throw new Error(`load loop exited ${load.code}`);

    write(path.join(instance, "tracing_on"), "0");
    for (const [sys, ev] of EVENTS) write(path.join(instance, "events", sys, ev, "enable"), "0");
    pages = readPages(instance, pageSize);

    Object.assign(expected, {
      tracerPid: process.pid,
      sleep: { pid: sleep.pid, comm: "sleep", killSignal: 9 },
      shExit3: { pid: sh.pid, comm: "sh", exitCode: 3 },
      longExec: { pid: tru.pid, filename: longPath },
    });
  } finally {
    try {
      write(path.join(instance, "set_event_pid"), "");
    } catch {
      /* best effort */
    }
    fs.rmdirSync(instance);
    fs.rmSync(tmp, { recursive: true, force: true });
  }

  fs.rmSync(outDir, { recursive: true, force: true });
  fs.mkdirSync(path.join(outDir, "pages"), { recursive: true });
  // tracefs files report size 0, so copyFileSync would copy nothing: read them instead.
  fs.writeFileSync(path.join(outDir, "header_page"), fs.readFileSync(path.join(TRACEFS, "events", "header_page")));
  const formats: string[] = [];
  for (const [sys, ev] of EVENTS) {
    const dir = path.join(outDir, "events", sys, ev);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, "format"), fs.readFileSync(path.join(TRACEFS, "events", sys, ev, "format")));
    formats.push(`events/${sys}/${ev}/format`);
  }
  const pageFiles: { file: string; cpu: number; bytes: number }[] = [];
  const perCpuCount = new Map<number, number>();
  for (const p of pages) {
    const k = perCpuCount.get(p.cpu) ?? 0;
    perCpuCount.set(p.cpu, k + 1);
    const file = `pages/cpu${p.cpu}-${String(k).padStart(3, "0")}.bin`;
    fs.writeFileSync(path.join(outDir, file), p.data);
    pageFiles.push({ file, cpu: p.cpu, bytes: p.data.length });
  }
  const manifest = {
    kernel: os.release(),
    arch: os.arch(),
    capturedAt: new Date().toISOString(),
    pageSize,
    headerPage: "header_page",
    formats,
    pages: pageFiles,
    ...expected,
  };
  fs.writeFileSync(path.join(outDir, "expected.json"), JSON.stringify(manifest, null, 2) + "\n");
  console.log(`wrote ${pageFiles.length} pages to ${outDir}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
