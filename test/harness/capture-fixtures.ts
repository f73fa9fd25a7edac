// Captures real ftrace fixtures from the guest kernel (Debian 6.1 cloud) for the page-decoder
// unit tests. Run through deploy/guest-image/capture-fixtures.sh (which builds an image first):
//
//   npx tsx test/harness/capture-fixtures.ts [--image-dir DIR] [--out DIR]
//
// Boots the guest without the frontend (vesper.frontend=0) and drives tracefs over the console.
import { mkdirSync, writeFileSync, rmSync, readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { QemuGuest } from "./qemu-guest.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const args = process.argv.slice(2);
const argOf = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const OUT = path.resolve(argOf("--out") ?? path.join(REPO_ROOT, "services/probe-listener/test/fixtures/guest-6.1"));
const IMAGE_DIR = argOf("--image-dir");

const T = "/sys/kernel/tracing";
const I = `${T}/instances/fixture`;
const S = `${T}/instances/fixture_small`;
const KPROBE = "p:vesper_fixture/exit do_exit code=%di:s64 comm=$comm";
const EVENTS = [
  "sched/sched_process_exit",
  "sched/sched_process_exec",
  "sched/sched_process_fork",
  "signal/signal_deliver",
  "vesper_fixture/exit",
];

// First page header: u64 timestamp, local_t (s64) commit whose bit 31 (RB_MISSED_EVENTS, an int
// shifted into a long, so sign-extended) and bit 30 (RB_MISSED_STORED: the count is stored as an
// unsigned long right after the data) are flags.
function pageInfo(page: Buffer): { commitRaw: string; missed: number | null } {
  const commitRaw = page.readBigUInt64LE(8);
  const size = Number(commitRaw & 0xfffffn);
  const stored = (commitRaw & (1n << 30n)) !== 0n;
  return {
    commitRaw: "0x" + commitRaw.toString(16),
    missed: stored ? Number(page.readBigUInt64LE(16 + size)) : null,
  };
}

async function main(): Promise<void> {
  const runDir = `/tmp/vesper-fix-${process.pid}`;
  const g = await QemuGuest.start({ name: "fixture", runDir, frontend: false, ...(IMAGE_DIR ? { imageDir: IMAGE_DIR } : {}) });
  console.log(`guest up in ${g.bootMs} ms`);
  try {
    const sh = async (cmd: string, timeoutMs = 60_000): Promise<string> => {
      const r = await g.exec(cmd, { timeoutMs });
      if (r.status !== 0) throw new Error(`guest command failed (${r.status}): ${cmd}\n${r.output}`);
      return r.output;
    };
    const kv = (out: string): Record<string, string> => {
      const o: Record<string, string> = {};
      for (const line of out.split("\n")) {
        const m = /^([a-z_0-9]+)=(.*)$/.exec(line.trim());
        if (m) o[m[1]!] = m[2]!;
      }
      return o;
    };
    // Byte-exact transfer: base64 over the console, md5 checked on both sides.
    const fetch = async (guestPath: string, hostName: string): Promise<Buffer> => {
      const out = await sh(`md5sum ${guestPath} | cut -d' ' -f1; base64 ${guestPath}`, 300_000);
      const [md5Line, ...b64] = out.split("\n");
      const data = Buffer.from(b64.join(""), "base64");
      const md5 = createHash("md5").update(data).digest("hex");
      if (md5 !== md5Line!.trim()) throw new Error(`md5 mismatch for ${guestPath}: guest ${md5Line} host ${md5}`);
      const dest = path.join(OUT, hostName);
      mkdirSync(path.dirname(dest), { recursive: true });
      writeFileSync(dest, data);
      console.log(`  ${hostName}: ${data.length} bytes, md5 ${md5}`);
      return data;
    };

    rmSync(OUT, { recursive: true, force: true });
    mkdirSync(OUT, { recursive: true });
    const kernel = (await sh("uname -r")).trim();
    const nproc = (await sh("grep -c ^processor /proc/cpuinfo")).trim();

    // ---- set up --------------------------------------------------------------------------
    await sh(`mkdir ${I} && echo mono > ${I}/trace_clock && echo '${KPROBE}' >> ${T}/kprobe_events`);
    for (const e of EVENTS) await sh(`echo 1 > ${I}/events/${e}/enable`);
    const bufferKb = (await sh(`cat ${I}/buffer_size_kb`)).trim();

    await fetch(`${T}/events/header_page`, "header_page");
    await fetch(`${T}/events/header_event`, "header_event");
    const formats: Record<string, string> = {};
    for (const e of EVENTS) {
      const name = `formats/${e}/format`;
      await fetch(`${I}/events/${e}/format`, name);
      formats[e] = name;
    }
    const readRaw = async (inst: string, file: string, textFile: string): Promise<number> => {
      // tracing off first so the buffer is stable; `trace` (non-consuming text) before the
      // consuming raw read; timeout because trace_pipe_raw may block once empty.
      await sh(`echo 0 > ${inst}/tracing_on; cat ${inst}/trace > /tmp/trace.txt`);
      await sh(`timeout 5 dd if=${inst}/per_cpu/cpu0/trace_pipe_raw of=/tmp/raw.bin bs=4096 2>/dev/null; true`);
      const data = await fetch("/tmp/raw.bin", file);
      await fetch("/tmp/trace.txt", textFile);
      return data.length / 4096;
    };

    // ---- capture 1: the known workload ----------------------------------------------------
    await sh(`echo > ${I}/trace; echo 1 > ${I}/tracing_on`);
    const basicOut = await sh(
      [
        "set +m",
        "sleep 1000 & SPID=$!",
        // kill only once the child has exec'd sleep (else its comm is still "sh")
        'while read c </proc/$SPID/comm; [ "$c" != sleep ]; do :; done',
        "echo sleep_comm=$c",
        "kill -9 $SPID; wait $SPID; echo sleep_status=$?",
        "echo sleep_pid=$SPID",
        "sh -c 'exit 3' & XPID=$!; wait $XPID; echo exit3_status=$?; echo exit3_pid=$XPID",
        "/bin/true & TPID=$!; wait $TPID; echo true_status=$?; echo true_pid=$TPID",
        "echo shell_pid=$$",
      ].join("\n"),
    );
    const basic = kv(basicOut);
    const basicPages = await readRaw(I, "basic/cpu0.raw", "basic/trace.txt");

    // ---- capture 2: several pages -------------------------------------------------------
    const loops = 150;
    await sh(`echo > ${I}/trace; echo 1 > ${I}/tracing_on`);
    const multiOut = await sh(
      `set +m; i=0; while [ $i -lt ${loops} ]; do /bin/true & p=$!; wait $p; [ $i = 0 ] && echo first_pid=$p; i=$((i+1)); done; echo last_pid=$p`,
      300_000,
    );
    const multi = kv(multiOut);
    const multiPages = await readRaw(I, "multi/cpu0.raw", "multi/trace.txt");

    // ---- capture 3: tiny buffer, overflowed (missed-events flag) --------------------------
    await sh(
      `mkdir ${S} && echo mono > ${S}/trace_clock && echo 4 > ${S}/buffer_size_kb && ` +
        EVENTS.map((e) => `echo 1 > ${S}/events/${e}/enable`).join(" && "),
    );
    const smallKb = (await sh(`cat ${S}/buffer_size_kb`)).trim();
    const ovLoops = 200;
    await sh(`echo > ${S}/trace; echo 1 > ${S}/tracing_on`);
    const ovOut = await sh(
      `set +m; i=0; while [ $i -lt ${ovLoops} ]; do /bin/true & p=$!; wait $p; [ $i = 0 ] && echo first_pid=$p; i=$((i+1)); done; echo last_pid=$p`,
      300_000,
    );
    const ov = kv(ovOut);
    const statsOv = await sh(`cat ${S}/per_cpu/cpu0/stats`);
    writeFileSync(path.join(OUT, "overflow-stats.txt"), statsOv);
    mkdirSync(path.join(OUT, "overflow"), { recursive: true });
    const ovPages = await readRaw(S, "overflow/cpu0.raw", "overflow/trace.txt");
    const ovFirst = pageInfo(readFileSync(path.join(OUT, "overflow/cpu0.raw")));
    writeFileSync(path.join(OUT, "overflow/stats.txt"), statsOv);
    rmSync(path.join(OUT, "overflow-stats.txt"));

    // ---- tear down --------------------------------------------------------------------
    for (const e of EVENTS) await sh(`echo 0 > ${I}/events/${e}/enable; echo 0 > ${S}/events/${e}/enable`);
    await sh(`rmdir ${I} ${S}`);
    await sh(`echo '-:vesper_fixture/exit' >> ${T}/kprobe_events`);
    const left = (await sh(`ls ${T}/instances; cat ${T}/kprobe_events`)).trim();
    if (left) throw new Error(`tracefs not clean after capture: ${left}`);

    const num = (s: string | undefined): number => {
      if (s === undefined) throw new Error("missing value from guest");
      return Number(s);
    };
    const expected = {
      kernel,
      cpus: Number(nproc),
      cpu: 0,
      page_size: 4096,
      trace_clock: "mono",
      kprobe: KPROBE,
      events: EVENTS,
      formats,
      captures: {
        basic: {
          raw: "basic/cpu0.raw",
          text: "basic/trace.txt",
          pages: basicPages,
          buffer_size_kb: Number(bufferKb),
          workload: [
            "sleep 1000 & kill -9 $!",
            "sh -c 'exit 3'",
            "/bin/true",
          ],
          shell_pid: num(basic.shell_pid),
          sleep: {
            pid: num(basic.sleep_pid),
            comm: basic.sleep_comm,
            exec_filename: "/proc/self/exe", // busybox ash runs applets through /proc/self/exe
            signal: 9,
            wait_status: num(basic.sleep_status),
            do_exit_code: 9,
          },
          exit3: {
            pid: num(basic.exit3_pid),
            comm: "sh",
            exec_filename: "/proc/self/exe",
            exit_code: 3,
            wait_status: num(basic.exit3_status),
            do_exit_code: 3 << 8,
          },
          true: {
            pid: num(basic.true_pid),
            comm: "true",
            exec_filename: "/bin/true",
            exit_code: 0,
            do_exit_code: 0,
          },
        },
        multi: {
          raw: "multi/cpu0.raw",
          text: "multi/trace.txt",
          pages: multiPages,
          buffer_size_kb: Number(bufferKb),
          workload: `${loops} x (/bin/true & wait)`,
          loops,
          first_pid: num(multi.first_pid),
          last_pid: num(multi.last_pid),
        },
        overflow: {
          raw: "overflow/cpu0.raw",
          text: "overflow/trace.txt",
          stats: "overflow/stats.txt",
          pages: ovPages,
          buffer_size_kb: Number(smallKb),
          workload: `${ovLoops} x (/bin/true & wait) into a ${smallKb} KB buffer (overwrite mode)`,
          loops: ovLoops,
          first_pid: num(ov.first_pid),
          last_pid: num(ov.last_pid),
          expect_missed_events: true,
          first_page_commit_raw: ovFirst.commitRaw,
          first_page_missed_events: ovFirst.missed,
        },
      },
    };
    writeFileSync(path.join(OUT, "expected.json"), JSON.stringify(expected, null, 2) + "\n");
    console.log(`fixtures written to ${OUT}`);
  } finally {
    await g.stop();
    rmSync(runDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
