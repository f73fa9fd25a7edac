/** `make demo`: the main job, narrated. */
import { mkdtempSync } from "node:fs";
import { runDemo } from "../test/harness/demo-flow.js";

const runDir = mkdtempSync("/tmp/vesper-demo-");
const say = (s: string): void => void process.stdout.write(`${s}\n`);
try {
  const r = await runDemo({ guest: "web1", runDir, say });
  const f = r.exitEvent.fields;
  const sig = f.signal?.kind?.$case === "int" ? f.signal.kind.value : undefined;
  say(
    `\nDEMO OK: httpd (pid ${r.httpdPid}) died of signal ${String(sig)} inside web1; ` +
      `Vesper reported it ${r.killToWatcherMs === undefined ? `within ${r.commandToWatcherMs} ms of the console command` : `${r.killToWatcherMs.toFixed(1)} ms after the kill`}; ` +
      `probe unloaded, guest tracefs clean: ${r.instancesAfter === "" && r.kprobesAfter === "" ? "yes" : "NO"}`,
  );
} catch (err) {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n(logs in ${runDir})\n`);
  process.exit(1);
}
